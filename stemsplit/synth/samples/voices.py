"""A recorded human voice singing or rapping the generator's vocal lines.

Owns cutting recorded words into syllable-like units (at valleys of their loudness), giving each
lyric syllable a unit (the same syllable always gets the same unit, as lyrics repeat words) and
rendering a line note by note with PSOLA (psola.py) onto the melody, with vibrato, scoops,
glides, the voice's own register and breaths; rapped and spoken notes keep the recording's own
intonation. It must not write lines or arrangements (vocals.py) nor apply production.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import signal

from stemsplit.synth import dsp, psola
from stemsplit.synth.samples import audio
from stemsplit.synth.samples.library import Voice

F32 = np.float32
WORDS_PER_SONG = 14      # a song's vocabulary: real lyrics repeat their words
MAX_WORD_SECONDS = 4.0
MIN_UNIT, MAX_UNIT = 0.08, 1.0   # seconds
RELEASE = 0.04           # a sung syllable rings this long past its note


@dataclass(frozen=True)
class Unit:
    audio: np.ndarray
    analysis: psola.Analysis
    rms: float


def syllables(x: np.ndarray, sr: int) -> list[tuple[int, int]]:
    """(start, end) samples of syllable-like units: loud regions split at clear loudness dips."""
    hop = max(int(0.01 * sr), 1)
    count = x.shape[0] // hop
    if count < 3:
        return []
    env = np.sqrt(np.mean(x[:count * hop].astype(np.float64).reshape(count, hop) ** 2, axis=1))
    env = np.convolve(env, np.ones(3) / 3, mode="same")
    level = 20 * np.log10(env + 1e-9)
    loud = level > level.max() - 30
    dips = set(signal.find_peaks(-level, prominence=6)[0].tolist())
    units: list[tuple[int, int]] = []
    start = None
    for i in range(count + 1):
        inside = i < count and loud[i] and i not in dips
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            a, b = start * hop, i * hop
            if MIN_UNIT * sr <= b - a:
                units.append((a, min(b, a + int(MAX_UNIT * sr))))
            start = i if (i < count and loud[i]) else None
    return units


class RecordedVoice:
    """One speaker's syllables for one song, and how they sing a line."""

    def __init__(self, name: str, units: list[Unit], sr: int, seed: int):
        self.name = name
        self.units = units
        self.sr = sr
        self.seed = seed
        f0s = [u.analysis.f0 for u in units]
        self.register = float(np.median(dsp.hz_to_midi(np.asarray(f0s)))) if f0s else 60.0

    @classmethod
    def make(cls, voice: Voice, sr: int, seed: int) -> RecordedVoice:
        """A vocabulary of words drawn from `voice`'s recordings, cut into voiced units."""
        rng = np.random.default_rng(seed)
        count = min(WORDS_PER_SONG, len(voice.files))
        units = []
        for i in sorted(rng.choice(len(voice.files), size=count, replace=False).tolist()):
            x = audio.read(voice.files[i], sr, MAX_WORD_SECONDS)
            if x is None:
                continue
            for a, b in syllables(x, sr):
                seg = np.ascontiguousarray(x[a:b])
                an = psola.analyse(seg, sr)
                if an.f0 > 0:
                    units.append(Unit(seg, an, float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) + 1e-9))
        return cls(voice.name, units, sr, seed)

    def unit_for(self, syllable) -> Unit:
        """The same lyric syllable always maps to the same recorded unit (a stable hash)."""
        return self.units[zlib.crc32(repr(syllable).encode()) % len(self.units)]

    def sing(self, notes: list, singer, length: int, speech: bool = False, breaths: float = 0.6) -> np.ndarray:
        """A whole vocal line (mono, `length` samples) in this voice; `singer` gives the style
        (vibrato, scoops, pitch correction) and, through its seed, this take's randomness."""
        sr = self.sr
        out = np.zeros(length, dtype=F32)
        notes = [n for n in notes if n.start - 0.5 < length / sr and n.start + n.dur + 0.3 > 0]
        if not notes:
            return out
        rng = np.random.default_rng([self.seed, singer.seed])
        # Sing in the speaker's own register: whole octaves keep the melody and the formants natural.
        shift = 12.0 * round((self.register - float(np.median([n.pitch for n in notes]))) / 12.0)
        prev_end, prev_pitch = -1e9, None
        for note in notes:
            unit = self.unit_for(note.syllable)
            n_out = int((note.dur + RELEASE) * sr)
            if n_out < 32:
                continue
            pitch = note.pitch + shift
            if speech:
                ratio = float(np.clip(dsp.midi_to_hz(pitch) / unit.analysis.f0, 0.7, 1.4))
                y = psola.render(unit.audio, unit.analysis, sr, n_out, ratio=ratio)
            else:
                y = psola.render(unit.audio, unit.analysis, sr, n_out,
                                 target_hz=self._contour(rng, singer, note, pitch, prev_pitch, n_out))
            y = dsp.fade(y * F32(note.vel * 0.1 / unit.rms), sr, 0.005, 0.03)
            if note.start - prev_end > 0.5 and rng.random() < breaths:
                self._breath(rng, out, note.start, note.vel)
            lead_in = min(unit.analysis.first_voiced, int(0.15 * sr))  # the consonant before the beat
            dsp.add_at(out, y, int(round(note.start * sr)) - lead_in)
            prev_end, prev_pitch = note.start + note.dur, pitch
        return out

    def _contour(self, rng: np.random.Generator, singer, note, pitch: float, prev: float | None,
                 n: int) -> np.ndarray:
        """Target pitch (Hz per sample) of a sung note: vibrato that grows in, a scoop from below
        or a glide from the previous note, pitch correction flattening both."""
        t = np.arange(n) / self.sr
        midi = np.full(n, pitch)
        depth = singer.vibrato_depth * (0.2 if singer.autotune else 1.0)
        if note.dur > 0.25 and depth > 0:
            grow = np.clip((t - 0.15) / 0.25, 0.0, 1.0)
            midi += depth * grow * np.sin(2 * np.pi * singer.vibrato_rate * t + rng.uniform(0, 2 * np.pi))
        speed = 0.01 if singer.autotune else 0.045
        if note.legato and prev is not None:
            midi += (prev - pitch) * np.exp(-t / speed)
        elif not singer.autotune and rng.random() < singer.scoop:
            midi -= rng.uniform(0.5, 2.0) * np.exp(-t / speed)
        return dsp.midi_to_hz(midi)

    def _breath(self, rng: np.random.Generator, out: np.ndarray, start: float, vel: float) -> None:
        """An inhale before a phrase: soft band-limited noise ending just before the first note."""
        sr = self.sr
        m = int(rng.uniform(0.2, 0.4) * sr)
        noise = dsp.bandpass(rng.standard_normal(m).astype(F32), 600.0, 5000.0, sr)
        env = np.sin(np.linspace(0.0, np.pi, m, dtype=F32)) ** 2
        level = 0.1 * vel * rng.uniform(0.05, 0.15) / (float(np.std(noise)) + 1e-9)
        dsp.add_at(out, noise * env * F32(level), int(round((start - 0.12) * sr)) - m)
