"""PSOLA: re-pitch and time-stretch a short recording while keeping its formants.

Owns pitch analysis of a recording (frame-wise normalised autocorrelation), pitch marks (one per
period in voiced parts, a fixed hop in unvoiced ones) and pitch-synchronous overlap-add onto a
new length and pitch: two-period grains keep the spectral envelope (the vowel and the speaker),
only their spacing sets the new pitch. It must not choose notes or recordings (samples/voices.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

F32 = np.float32
FMIN, FMAX = 70.0, 600.0
VOICED = 0.45          # normalised autocorrelation peak above which a frame is voiced


@dataclass(frozen=True)
class Analysis:
    marks: np.ndarray      # sample positions of grain centres
    periods: np.ndarray    # period in samples at each mark; 0 where unvoiced
    hop: int               # grain spacing in unvoiced parts
    f0: float              # median pitch of the voiced part in Hz (0: nothing voiced)

    @property
    def first_voiced(self) -> int:
        voiced = self.marks[self.periods > 0]
        return int(voiced[0]) if voiced.size else 0


def pitch_track(x: np.ndarray, sr: int, hop: int) -> np.ndarray:
    """f0 in Hz per `hop` frame (0 where unvoiced or silent)."""
    win = int(0.04 * sr)
    if x.shape[0] < win:
        x = np.pad(x, (0, win - x.shape[0]))
    count = 1 + (x.shape[0] - win) // hop
    frames = x[np.arange(win)[None, :] + hop * np.arange(count)[:, None]].astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    energy = np.mean(frames ** 2, axis=1)
    spec = sp_fft.rfft(frames * np.hanning(win), 2 * win, axis=1)
    ac = sp_fft.irfft(np.abs(spec) ** 2, axis=1)[:, :win]
    ac /= ac[:, :1] + 1e-12
    lo, hi = int(sr / FMAX), min(int(sr / FMIN), win - 1)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    strength = ac[np.arange(count), lag]
    voiced = (strength > VOICED) & (energy > energy.max() * 10 ** (-35 / 10))
    f0 = np.where(voiced, sr / lag, 0.0)
    smooth = signal.medfilt(f0, 5)
    return np.where(voiced & (smooth > 0), smooth, f0)


def analyse(x: np.ndarray, sr: int) -> Analysis:
    """Pitch marks of a mono recording: on the waveform peak of each period where voiced."""
    hop = max(int(0.005 * sr), 1)
    f0 = pitch_track(x, sr, hop)
    n = x.shape[0]
    marks: list[int] = []
    periods: list[int] = []
    t = 0
    while t < n:
        hz = f0[min(t // hop, f0.shape[0] - 1)]
        if hz > 0:
            period = int(round(sr / hz))
            if periods and periods[-1] > 0:  # continue the run: refine near the expected place
                lo, hi = max(t - period // 5, marks[-1] + period // 2), t + period // 5 + 1
            else:                            # the first period of a run: its peak
                lo, hi = t, t + period
            seg = x[lo:min(hi, n)]
            if seg.size:
                t = lo + int(np.argmax(seg))
            marks.append(t)
            periods.append(period)
            t += period
        else:
            marks.append(t)
            periods.append(0)
            t += hop
    voiced = f0[f0 > 0]
    return Analysis(np.asarray(marks, dtype=np.int64), np.asarray(periods, dtype=np.int64), hop,
                    float(np.median(voiced)) if voiced.size else 0.0)


_WINDOWS: dict[int, np.ndarray] = {}


def _window(half: int) -> np.ndarray:
    if half not in _WINDOWS:
        _WINDOWS[half] = np.hanning(2 * half + 3)[1:-1].astype(F32)
    return _WINDOWS[half]


def render(x: np.ndarray, an: Analysis, sr: int, length: int, target_hz: np.ndarray | None = None,
           ratio: float = 1.0, keep_onset: float = 0.4) -> np.ndarray:
    """`x` resynthesised to `length` samples.

    Voiced grains follow `target_hz` (Hz per output sample) when given, else the recording's own
    pitch times `ratio` (speech keeps its intonation). The part before the first voiced period (a
    consonant) keeps its natural speed up to `keep_onset` of the output; the rest is stretched
    evenly. Output level follows the recording's.
    """
    n_in = x.shape[0]
    pad = int(sr / FMIN) + an.hop + 2
    src = np.pad(x.astype(F32), pad)
    out = np.zeros(length + 2 * pad, dtype=F32)
    keep = min(an.first_voiced, int(keep_onset * length))
    scale = (n_in - keep) / max(length - keep, 1)
    s = 0.0
    while s < length:
        si = int(s)
        t_in = si if si < keep else keep + (si - keep) * scale
        k = min(int(np.searchsorted(an.marks, t_in)), an.marks.shape[0] - 1)
        if k and abs(an.marks[k - 1] - t_in) < abs(an.marks[k] - t_in):
            k -= 1
        mark, period = int(an.marks[k]), int(an.periods[k])
        if period > 0:
            step = sr / float(target_hz[si]) if target_hz is not None else period / ratio
            step = float(np.clip(step, sr / (2 * FMAX), sr / (0.5 * FMIN)))
            half, gain = period, step / period  # window sum of 2-period grains is period / step
        else:
            step, half, gain = float(an.hop), an.hop, 1.0
        grain = src[pad + mark - half:pad + mark + half + 1] * _window(half)
        out[pad + si - half:pad + si + half + 1] += grain * F32(gain)
        s += step
    return out[pad:pad + length]
