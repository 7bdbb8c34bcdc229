"""Augmentations: each keeps mixture == sum of stems and does what it says (pitch measured on a sine)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stemsplit.train.augment import Augmenter, pitch_shift, time_stretch
from stemsplit.errors import ConfigError
from stemsplit.train.config import AugmentConfig

RATE = 8000
SOURCES = ["drums", "bass", "other", "vocals"]
OFF = AugmentConfig(remix=False, gain=False, flip=False, swap=False, shift=0.0, pitch=0, tempo=0.0, noise=False)


def _batch(frames: int, batch: int = 4, seed: int = 0) -> list[tuple[int, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(i, torch.randn(len(SOURCES), 2, frames, generator=gen) * 0.1) for i in range(batch)]


def _peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.shape[-1], dtype=wave.dtype)).abs()
    return float(spectrum.argmax()) * rate / wave.shape[-1]


AUGS = {
    "remix": dict(remix=True),
    "gain": dict(gain=True),
    "flip": dict(flip=True),
    "swap": dict(swap=True),
    "shift": dict(shift=0.05),
    "pitch": dict(pitch=2, pitch_prob=1.0),
    "tempo": dict(tempo=0.2, tempo_prob=1.0),
    "noise": dict(noise=True, noise_prob=1.0),
}


@pytest.mark.parametrize("name", sorted(AUGS))
def test_each_augmentation_keeps_mixture_equal_to_sum_and_changes_stems(name):
    cfg = dataclasses.replace(OFF, **AUGS[name])
    aug = Augmenter(cfg, SOURCES, RATE, frames=2048, seed=1)
    batch = _batch(aug.input_frames)
    mix, stems = aug(batch)
    assert stems.shape == (4, 4, 2, 2048) and mix.shape == (4, 2, 2048)
    assert torch.equal(mix, stems.sum(dim=1))
    plain_mix, plain = Augmenter(OFF, SOURCES, RATE, frames=2048, seed=1)(batch)
    assert not torch.allclose(stems, plain)
    mix2, stems2 = aug(batch)
    assert torch.equal(stems, stems2), "augmentation must be a function of (seed, batch indices)"


def test_remix_takes_each_source_from_some_example_of_the_batch():
    aug = Augmenter(dataclasses.replace(OFF, remix=True), SOURCES, RATE, frames=256, seed=5)
    batch = _batch(256, batch=6)
    _, stems = aug(batch)
    originals = torch.stack([w for _, w in batch])
    for s in range(len(SOURCES)):
        got = sorted(int(torch.where((originals[:, s] == stems[b, s]).all(-1).all(-1))[0][0]) for b in range(6))
        assert got == list(range(6))  # a permutation of the batch, per source


def test_gain_flip_swap_are_per_source_scalings_and_swaps():
    batch = _batch(256)
    originals = torch.stack([w for _, w in batch])
    _, gained = Augmenter(dataclasses.replace(OFF, gain=True, gain_db=(-6.0, 3.0)), SOURCES, RATE, 256, 2)(batch)
    ratio = gained[..., 0, 0] / originals[..., 0, 0]
    assert torch.allclose(gained, originals * ratio[..., None, None], atol=1e-6)
    assert (ratio >= 10 ** (-6 / 20) - 1e-5).all() and (ratio <= 10 ** (3 / 20) + 1e-5).all()
    _, flipped = Augmenter(dataclasses.replace(OFF, flip=True), SOURCES, RATE, 256, 2)(batch)
    signs = flipped[..., 0, 0] / originals[..., 0, 0]
    assert torch.allclose(signs.abs(), torch.ones_like(signs)) and (signs < 0).any() and (signs > 0).any()
    _, swapped = Augmenter(dataclasses.replace(OFF, swap=True), SOURCES, RATE, 256, 2)(batch)
    for b in range(4):
        for s in range(4):
            assert torch.equal(swapped[b, s], originals[b, s]) or torch.equal(swapped[b, s], originals[b, s].flip(0))


def test_shift_moves_sources_independently():
    frames, shift = 512, 0.02
    aug = Augmenter(dataclasses.replace(OFF, shift=shift), SOURCES, RATE, frames, 3)
    assert aug.input_frames == frames + int(shift * RATE)
    batch = _batch(aug.input_frames, batch=2)
    _, stems = aug(batch)
    offsets = set()
    for s in range(4):
        full = batch[0][1][s, 0]
        matches = [o for o in range(int(shift * RATE) + 1) if torch.equal(full[o:o + frames], stems[0, s, 0])]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_noise_goes_into_the_named_stem_only():
    cfg = dataclasses.replace(OFF, noise=True, noise_prob=1.0, noise_db=(-20.0, -20.0))
    batch = _batch(1024)
    originals = torch.stack([w for _, w in batch])
    mix, stems = Augmenter(cfg, SOURCES, RATE, 1024, 4)(batch)
    other = SOURCES.index("other")
    changed = (stems != originals).flatten(2).any(-1)
    assert changed[:, other].all() and not changed[:, [0, 1, 3]].any()
    noise_rms = (stems[:, other] - originals[:, other]).pow(2).mean().sqrt()
    mix_rms = originals.sum(1).pow(2).mean().sqrt()
    assert abs(20 * torch.log10(noise_rms / mix_rms)) - 20 < 1.0
    with pytest.raises(ConfigError, match="other"):
        Augmenter(cfg, ["a", "b"], RATE, 1024, 4)


@pytest.mark.parametrize("semitones", [-3, 2, 5])
def test_pitch_shift_changes_the_pitch_of_a_sine_and_keeps_length(semitones):
    t = torch.arange(RATE) / RATE
    sine = torch.sin(2 * torch.pi * 440 * t)[None]
    shifted = pitch_shift(sine, semitones)
    assert shifted.shape == sine.shape
    middle = shifted[0, RATE // 4: 3 * RATE // 4]
    expected = 440 * 2 ** (semitones / 12)
    assert abs(_peak_hz(middle, RATE) - expected) < 0.03 * expected


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_time_stretch_changes_length_not_pitch(rate):
    t = torch.arange(RATE) / RATE
    sine = torch.sin(2 * torch.pi * 440 * t)[None]
    stretched = time_stretch(sine, rate)
    assert stretched.shape[-1] == round(RATE / rate)
    middle = stretched[0, RATE // 8: stretched.shape[-1] - RATE // 8]
    assert abs(_peak_hz(middle, RATE) - 440) < 0.03 * 440


@pytest.mark.parametrize("stretch", [lambda x: time_stretch(x, 0.9), lambda x: pitch_shift(x, 2)],
                         ids=["slower", "pitch-up"])
def test_stretching_keeps_the_amplitude_of_a_sine(stretch):
    # without phase locking, the reflect-padded first frames read twice left a 440 Hz sine at 0.28
    t = torch.arange(2 * RATE) / RATE
    out = stretch(torch.sin(2 * torch.pi * 440 * t)[None])[0]
    peaks = out[RATE // 4: -RATE // 4].unfold(0, RATE // 8, RATE // 8).abs().amax(-1)
    assert peaks.min() > 0.9 and peaks.max() < 1.1


def test_validation_collation_only_crops():
    batch = _batch(300, batch=1)
    mix, stems = Augmenter(AugmentConfig(), SOURCES, RATE, 256, 0, train=False)(batch)
    assert torch.equal(stems[0], batch[0][1][..., :256])
    assert np.allclose(mix.numpy(), stems.sum(1).numpy())
