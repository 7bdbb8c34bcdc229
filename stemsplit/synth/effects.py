"""Production effects applied to a stereo stem: EQ, compression, saturation, reverb, delay, width.

Owns the processors and a per-stem random chain (`produce`) with plausible settings for each
stem. Every processor maps a (2, T) float32 array to a (2, T) float32 array of the same length
(tails past the end are cut, as in a bounced song). It must not write notes nor mix stems.
"""
from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

from stemsplit.synth import dsp

F32 = np.float32


def eq(x: np.ndarray, sr: int, rng: np.random.Generator, stem: str) -> np.ndarray:
    """A random corrective/creative EQ: high-pass, shelves and one or two bells."""
    hp = {"drums": 30, "bass": 25, "other": 80, "vocals": 90}[stem] * rng.uniform(0.7, 1.8)
    sos = [dsp.butter_sos(hp, sr, 2, high=True),
           dsp.shelf_sos(rng.uniform(80, 250), rng.uniform(-4, 4), sr, high=False),
           dsp.shelf_sos(rng.uniform(4000, 10000), rng.uniform(-6, 5), sr, high=True)]
    for _ in range(int(rng.integers(1, 3))):
        sos.append(dsp.peaking_sos(float(np.exp(rng.uniform(np.log(150), np.log(6000)))),
                                   rng.uniform(-6, 6), rng.uniform(0.5, 3.0), sr))
    if stem == "bass" and rng.random() < 0.7:
        sos.append(dsp.butter_sos(rng.uniform(2500, 8000), sr, 2, high=False))
    return signal.sosfilt(np.concatenate(sos), x, axis=-1).astype(F32)


def compress(x: np.ndarray, sr: int, threshold_db: float, ratio: float, attack: float,
             release: float, makeup: bool = True) -> np.ndarray:
    """Feed-forward RMS compressor on the stereo-linked level, computed on 2 ms blocks."""
    g = compress_gain(x, sr, threshold_db, ratio, attack, release, makeup)
    return (x * g.astype(F32)).astype(F32)


def compress_gain(x: np.ndarray, sr: int, threshold_db: float, ratio: float, attack: float,
                  release: float, makeup: bool = True) -> np.ndarray:
    """The gain per sample (float64, length of `x`) that `compress` applies: a bus compressor
    applies it to every stem of a mix alike."""
    block = max(int(0.002 * sr), 1)
    n = x.shape[-1]
    nb = -(-n // block)
    padded = np.zeros((x.shape[0], nb * block), dtype=F32)
    padded[:, :n] = x
    power = np.mean(padded.reshape(x.shape[0], nb, block) ** 2, axis=(0, 2))
    level = 10 * np.log10(power + 1e-10)
    over = np.maximum(level - threshold_db, 0.0)
    gain_db = -over * (1.0 - 1.0 / ratio)
    # Attack (gain falling) and release (gain rising) smoothing with a one-pole per direction.
    a_att = np.exp(-block / (sr * attack))
    a_rel = np.exp(-block / (sr * release))
    fast = signal.lfilter([1 - a_att], [1, -a_att], gain_db)
    slow = signal.lfilter([1 - a_rel], [1, -a_rel], gain_db)
    smooth = np.minimum(fast, slow)
    if makeup:
        smooth -= np.percentile(smooth, 90) * 0.5
    return 10 ** (np.repeat(smooth, block)[:n] / 20)


def saturate(x: np.ndarray, drive: float, mix: float) -> np.ndarray:
    """Parallel tanh saturation (adds harmonics, tames peaks)."""
    peak = float(np.max(np.abs(x))) or 1.0
    wet = dsp.soft_clip(x / F32(peak), drive) * F32(peak)
    return (x * F32(1 - mix) + wet * F32(mix)).astype(F32)


def impulse_response(rng: np.random.Generator, sr: int, rt60: float, predelay: float,
                     damping: float) -> np.ndarray:
    """A stereo room: sparse early reflections then decorrelated noise decaying to -60 dB at rt60.

    High frequencies die faster than lows (`damping` in [0, 1]), as in real rooms.
    """
    n = int((rt60 * 1.1 + predelay) * sr)
    ir = np.zeros((2, n), dtype=F32)
    start = int(predelay * sr)
    tail = n - start
    env = np.exp(-6.9 * np.arange(tail, dtype=F32) / F32(rt60 * sr))
    for ch in range(2):
        noise = rng.standard_normal(tail).astype(F32) * env
        dark = dsp.lowpass(noise, rng.uniform(1500, 4000), sr, 1)
        fade = np.linspace(0.0, 1.0, tail, dtype=F32) ** 0.5 * F32(damping)
        ir[ch, start:] = noise * (1 - fade) + dark * fade
        for _ in range(int(rng.integers(4, 10))):
            pos = start + int(rng.uniform(0.002, 0.06) * sr)
            if pos < n:
                ir[ch, pos] += F32(rng.uniform(-0.6, 0.6))
    onset = min(int(0.005 * sr), tail)
    ir[:, start:start + onset] *= np.linspace(0, 1, onset, dtype=F32)
    return ir / F32(np.sqrt(np.sum(ir ** 2) / 2) + 1e-9)


def reverb(x: np.ndarray, ir: np.ndarray, sr: int, wet: float) -> np.ndarray:
    """Convolution reverb, mono send to stereo return, mixed with the dry signal.

    `ir` is a stereo impulse response at half the sample rate: the send is decimated by two,
    convolved, and brought back up (a reverb tail has little energy above 10 kHz, and this
    halves the cost, which matters for feeding training in real time).
    """
    n = x.shape[-1]
    m = n // 2
    send = (x[0, : 2 * m] + x[1, : 2 * m]) * F32(0.5)
    half = (send[0::2] + send[1::2]) * F32(0.5)
    size = sp_fft.next_fast_len(m + ir.shape[-1] - 1, real=True)
    wet_half = sp_fft.irfft(sp_fft.rfft(half, size) * sp_fft.rfft(ir, size, axis=-1), size, axis=-1)[:, :m]
    tail = np.zeros((2, n), dtype=F32)
    tail[:, : 2 * m] = np.repeat(wet_half.astype(F32), 2, axis=-1)
    tail = dsp.lowpass(tail, 0.2 * sr, sr, 2)
    return (x + tail * F32(wet)).astype(F32)


def delay(x: np.ndarray, sr: int, seconds: float, feedback: float, mix: float, ping_pong: bool,
          rng: np.random.Generator) -> np.ndarray:
    """Tempo delay: a few darker repeats, alternating sides when ping-pong."""
    out = x.copy()
    echo = dsp.lowpass(x, rng.uniform(1500, 5000), sr, 1)
    d = int(seconds * sr)
    gain = mix
    for k in range(1, 6):
        shift = d * k
        if shift >= x.shape[-1] or gain < 1e-3:
            break
        src = echo[::-1] if (ping_pong and k % 2 == 1) else echo
        out[:, shift:] += src[:, : x.shape[-1] - shift] * F32(gain)
        gain *= feedback
    return out


def chorus(x: np.ndarray, sr: int, rate: float, depth_ms: float, mix: float, rng: np.random.Generator) -> np.ndarray:
    """A modulated short delay per channel (opposite LFO phases), mixed with the dry signal."""
    n = x.shape[-1]
    t = np.arange(n, dtype=np.float64)
    out = x.copy()
    phase = rng.random() * 2 * np.pi
    for ch in range(x.shape[0]):
        lag = (depth_ms * 1e-3 * sr) * (1.5 + np.sin(2 * np.pi * rate * t / sr + phase + np.pi * ch))
        out[ch] += np.interp(t - lag, t, x[ch], left=0.0).astype(F32) * F32(mix)
    return out


def telephone(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A narrow, driven band (300 Hz - 3.4 kHz ish): the lo-fi/megaphone vocal sound."""
    band = dsp.bandpass(x, rng.uniform(250, 600), rng.uniform(2500, 4500), sr, 4)
    peak = float(np.max(np.abs(band))) or 1.0
    return dsp.soft_clip(band / F32(peak), rng.uniform(1.5, 5.0)) * F32(peak)


def pump(x: np.ndarray, sr: int, beat: float, offset: float, depth: float, recovery: float) -> np.ndarray:
    """Side-chain "pumping": the level ducks on every beat (where the kick is) and recovers."""
    t = (np.arange(x.shape[-1], dtype=np.float64) / sr - offset) % beat
    gain = 1.0 - depth * np.exp(-t / recovery)
    return (x * gain.astype(F32)).astype(F32)


def width(x: np.ndarray, amount: float) -> np.ndarray:
    """Mid/side width: 0 = mono, 1 = unchanged, >1 = wider."""
    mid = (x[0] + x[1]) * F32(0.5)
    side = (x[0] - x[1]) * F32(0.5 * amount)
    return np.stack([mid + side, mid - side]).astype(F32)


def haas(x: np.ndarray, sr: int, ms: float) -> np.ndarray:
    """Delay one channel a few milliseconds so a centred part gains width."""
    d = int(ms * 1e-3 * sr)
    out = x.copy()
    if 0 < d < x.shape[-1]:
        out[1, d:] = x[1, :-d]
        out[1, :d] = 0.0
    return out


def produce(rng: np.random.Generator, x: np.ndarray, sr: int, stem: str, bpm: float,
            room: tuple[float, float], duck: tuple[float, float] | None = None) -> np.ndarray:
    """A random but stem-appropriate production chain; `room` is the song's (rt60, damping).

    `duck` = (depth, beat offset in seconds) side-chains bass and other to the beat (dance styles)."""
    if not np.any(x):
        return x
    x = eq(x, sr, rng, stem)
    if duck is not None and stem in ("bass", "other"):
        x = pump(x, sr, 60.0 / bpm, duck[1], duck[0], rng.uniform(0.06, 0.15))
    if rng.random() < {"drums": 0.7, "bass": 0.8, "other": 0.5, "vocals": 0.85}[stem]:
        x = compress(x, sr, threshold_db=float(10 * np.log10(np.mean(x ** 2) + 1e-12) + rng.uniform(-2, 8)),
                     ratio=rng.uniform(1.5, 8), attack=rng.uniform(0.002, 0.03), release=rng.uniform(0.05, 0.3))
    if rng.random() < {"drums": 0.35, "bass": 0.4, "other": 0.25, "vocals": 0.2}[stem]:
        x = saturate(x, rng.uniform(1.5, 6), rng.uniform(0.2, 0.8))
    if stem == "vocals" and rng.random() < 0.06:
        x = telephone(x, sr, rng)
    if stem in ("other", "vocals") and rng.random() < 0.12:
        x = chorus(x, sr, rng.uniform(0.2, 1.5), rng.uniform(2, 8), rng.uniform(0.3, 0.7), rng)
    if stem in ("other", "vocals") and rng.random() < 0.3:
        x = haas(x, sr, rng.uniform(5, 20))
    if stem in ("other", "vocals") and rng.random() < (0.35 if stem == "vocals" else 0.2):
        beat = 60.0 / bpm
        if rng.random() < 0.3:  # slapback: one quick echo
            x = delay(x, sr, rng.uniform(0.07, 0.14), 0.0, rng.uniform(0.15, 0.4), False, rng)
        else:
            x = delay(x, sr, beat * float(rng.choice([0.5, 0.75, 1.0])), rng.uniform(0.2, 0.5),
                      rng.uniform(0.1, 0.35), rng.random() < 0.5, rng)
    send = {"drums": 0.5, "bass": 0.1, "other": 0.7, "vocals": 0.85}[stem]
    if rng.random() < send:
        rt60 = room[0] * rng.uniform(0.7, 1.3) * (0.5 if stem in ("drums", "bass") else 1.0)
        ir = impulse_response(rng, sr // 2, max(rt60, 0.15), rng.uniform(0.0, 0.04), room[1])
        x = reverb(x, ir, sr, rng.uniform(0.05, 0.35) * (0.4 if stem == "bass" else 1.0))
    if stem != "bass":
        x = width(x, rng.uniform(0.6, 1.4))
    return x.astype(F32)
