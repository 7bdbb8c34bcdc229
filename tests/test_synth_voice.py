"""The synthetic singer sounds like a voice: pitch, vowels, consonants, breaths, imperfection."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stemsplit.synth import phonemes, singer, voice
from stemsplit.synth.phonemes import Syllable
from stemsplit.synth.voice import VocalNote

SR = 44100


def _singer(**changes) -> singer.Singer:
    base = singer.make_singer(np.random.default_rng(0), "tenor")
    return dataclasses.replace(base, **changes)


def _sing(vowel: str, onset: tuple[str, ...] = (), pitch: float = 57.0, breaths: float = 0.0, **singer):
    note = VocalNote(0.5, 0.8, pitch, 0.9, Syllable(onset, vowel, ()))
    return voice.sing([note], _singer(**singer), SR, int(1.6 * SR), breaths=breaths)


def _band(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


@pytest.mark.parametrize("model", singer.MODELS)
def test_sings_at_the_requested_pitch(model):
    x = _sing("a", pitch=57.0, vibrato_depth=0.0, scoop=0.0, model=model)  # A3 = 220 Hz
    seg = x[int(0.8 * SR): int(1.1 * SR)].astype(np.float64)
    ac = np.correlate(seg, seg, "full")[seg.size - 1:]
    lo, hi = SR // 400, SR // 100
    period = lo + int(np.argmax(ac[lo:hi]))
    assert abs(SR / period - 220.0) < 220.0 * 0.03


@pytest.mark.parametrize("model", singer.MODELS)
def test_vowels_have_different_formants(model):
    a = _sing("a", model=model)[int(0.7 * SR): int(1.2 * SR)]
    i = _sing("i", model=model)[int(0.7 * SR): int(1.2 * SR)]
    ratio_a = _band(a, 1800, 3200) / _band(a, 500, 1300)
    ratio_i = _band(i, 1800, 3200) / _band(i, 500, 1300)
    assert ratio_i > 3 * ratio_a


def test_fricative_onset_adds_high_frequency_noise():
    plain = _sing("a")[: int(0.55 * SR)]
    hissed = _sing("a", onset=("s",))[: int(0.55 * SR)]
    assert _band(hissed, 4000, 12000) > 10 * _band(plain, 4000, 12000)


def test_breath_before_a_phrase():
    silent = _sing("a", breaths=0.0)[: int(0.4 * SR)]
    breath = _sing("a", breaths=1.0)[: int(0.4 * SR)]
    assert np.sqrt(np.mean(breath ** 2)) > 3 * np.sqrt(np.mean(silent ** 2)) + 1e-6


def test_the_two_vocal_models_differ():
    stft = _sing("a", model="stft")
    klatt = _sing("a", model="klatt")
    assert np.isfinite(klatt).all()
    assert not np.allclose(stft, klatt, atol=1e-2 * float(np.max(np.abs(stft))))


def test_jitter_makes_the_source_imperfect():
    steady = _sing("a", vibrato_depth=0.0, scoop=0.0, jitter=0.0, shimmer=0.0)
    rough = _sing("a", vibrato_depth=0.0, scoop=0.0, jitter=0.02, shimmer=1.5)
    assert not np.allclose(steady, rough, atol=1e-3)
    assert np.isfinite(rough).all()


def test_every_phoneme_renders():
    rng = np.random.default_rng(1)
    notes, t = [], 0.2
    for k, cons in enumerate(phonemes.CONSONANTS):
        vowel = list(phonemes.VOWELS) + list(phonemes.DIPHTHONGS)
        notes.append(VocalNote(t, 0.18, 50 + k % 7, 0.8, Syllable((cons,), vowel[k % len(vowel)], (cons,))))
        t += 0.3
    x = voice.sing(notes, singer.make_singer(rng, "soprano"), SR, int((t + 0.5) * SR))
    assert np.isfinite(x).all() and np.max(np.abs(x)) > 0
