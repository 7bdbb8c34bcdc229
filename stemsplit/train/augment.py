"""Data augmentation on stems, and the batch collation that applies it.

Owns: every augmentation (remix, gain, sign flip, channel swap, time shift, pitch shift, time
stretch, noise), each switchable through `AugmentConfig`, all applied to the stems *before* the
mixture is formed, so the mixture is always exactly the sum of the returned stems. Randomness comes
from a generator seeded by (seed, first sample index of the batch): batches are reproducible
whatever the number of DataLoader workers, and on resume.
Noise convention: injected noise is added to one stem (`noise_source`, "other" by default), so the
model is taught to put hiss and noise floor into that stem, and mixture == sum of stems still holds.
Must not: read files (data.py) or know about models and losses.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from stemsplit.errors import ConfigError
from stemsplit.train.config import AugmentConfig

_RESAMPLE_BASE = 100
"""Pitch ratios are rounded to n/100 so julius resamples with a small rational ratio."""


def time_stretch(wav: torch.Tensor, rate: float, n_fft: int = 2048, hop: int = 512) -> torch.Tensor:
    """Change the duration of `wav` (..., T) by 1/rate without changing pitch (phase vocoder).

    rate > 1 makes it shorter/faster. Magnitudes are interpolated between analysis frames and the
    phase of each spectral peak advances by its measured instantaneous frequency. The bins around a
    peak keep their phase relative to it from the analysis frame (identity phase locking): advanced
    on their own, every analysis pair read twice (rate < 1) added its per-bin differences again, and
    those of the reflect-padded first frames are not a sine's, so a stretched or pitched-up sine
    came out at a quarter of its amplitude.
    """
    if rate == 1:
        return wav
    length = wav.shape[-1]
    flat = wav.reshape(-1, length)
    window = torch.hann_window(n_fft, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(flat, n_fft, hop, window=window, return_complex=True)
    frames = spec.shape[-1]
    times = torch.arange(0, frames - 1, rate, device=wav.device, dtype=torch.float64)
    left_idx = times.floor().long()
    frac = (times - left_idx).to(wav.dtype)
    left, right = spec[..., left_idx], spec[..., left_idx + 1]
    magnitude = (1 - frac) * left.abs() + frac * right.abs()
    expected = 2 * math.pi * hop * torch.arange(spec.shape[-2], device=wav.device, dtype=wav.dtype) / n_fft
    analysis = left.angle()
    deviation = right.angle() - analysis - expected[:, None]
    deviation = deviation - 2 * math.pi * torch.round(deviation / (2 * math.pi))
    advance = expected[:, None] + deviation
    phase = torch.cat([spec[..., :1].angle(), spec[..., :1].angle() + advance[..., :-1].cumsum(-1)], dim=-1)
    owner = _nearest_peaks(magnitude)
    phase = phase.gather(-2, owner) + analysis - analysis.gather(-2, owner)
    out_len = round(length / rate)
    out = torch.istft(torch.polar(magnitude, phase), n_fft, hop, window=window, length=out_len)
    return out.reshape(*wav.shape[:-1], out_len)


def _nearest_peaks(magnitude: torch.Tensor) -> torch.Tensor:
    """For each bin of `magnitude` (..., bins, frames), the index of the nearest local maximum in
    its frame (ties to the lower one). The scans run with bins last, along memory: twice as fast."""
    bins = magnitude.shape[-2]
    mag = magnitude.transpose(-1, -2).contiguous()
    index = torch.arange(bins, device=mag.device, dtype=torch.int32)
    padded = torch.nn.functional.pad(mag, (1, 1), value=-1.0)
    peak = (mag >= padded[..., :-2]) & (mag >= padded[..., 2:])
    below = torch.where(peak, index, -bins).cummax(-1).values
    above = bins - 1 - torch.where(peak.flip(-1), index, -bins).cummax(-1).values.flip(-1)
    owner = torch.where(index - below <= above - index, below, above)
    return owner.transpose(-1, -2).long()


def pitch_shift(wav: torch.Tensor, semitones: float) -> torch.Tensor:
    """Raise the pitch of `wav` (..., T) by `semitones`, keeping its length.

    Resampling by the frequency ratio (julius) changes pitch and speed together; a phase-vocoder
    stretch by the same ratio beforehand gives the duration back.
    """
    if semitones == 0:
        return wav
    import julius

    old = round(_RESAMPLE_BASE * 2 ** (semitones / 12))
    stretched = time_stretch(wav, _RESAMPLE_BASE / old)
    shifted = julius.resample_frac(stretched, old, _RESAMPLE_BASE)
    length = wav.shape[-1]
    if shifted.shape[-1] >= length:
        return shifted[..., :length]
    return torch.nn.functional.pad(shifted, (0, length - shifted.shape[-1]))


class Augmenter:
    """A DataLoader `collate_fn`: [(index, stems (S, C, T_in))] -> (mix (B, C, T), stems (B, S, C, T)).

    With `train=False` it only crops: used for validation excerpts.
    """

    def __init__(self, cfg: AugmentConfig, stems: Sequence[str], samplerate: int, frames: int, seed: int,
                 train: bool = True):
        self.cfg = cfg
        self.frames = frames
        self.samplerate = samplerate
        self.seed = seed
        self.train = train
        self.shift_frames = int(cfg.shift * samplerate) if train else 0
        self.noise_index = -1
        if train and cfg.noise:
            if cfg.noise_source not in stems:
                raise ConfigError(f"noise augmentation: stem {cfg.noise_source!r} is not one of {list(stems)}")
            self.noise_index = list(stems).index(cfg.noise_source)

    @property
    def input_frames(self) -> int:
        """How many frames the data set must read so every augmentation has room."""
        if not self.train:
            return self.frames
        tempo = self.cfg.tempo if self.cfg.tempo > 0 else 0.0
        return math.ceil(self.frames * (1 + tempo)) + self.shift_frames

    def __call__(self, batch: Sequence[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, 0xA06, int(batch[0][0])))
        stems = torch.stack([self._one(wav, rng) for _, wav in batch])
        if self.train:
            stems = self._batch(stems, rng)
        return stems.sum(dim=1), stems

    def _one(self, wav: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Per-example, length-changing steps: pitch, tempo, then a (per-source) crop to `frames`."""
        cfg = self.cfg
        if self.train and cfg.pitch > 0 and rng.random() < cfg.pitch_prob:
            wav = pitch_shift(wav, int(rng.integers(-cfg.pitch, cfg.pitch + 1)))
        if self.train and cfg.tempo > 0 and rng.random() < cfg.tempo_prob:
            wav = time_stretch(wav, float(rng.uniform(1 - cfg.tempo, 1 + cfg.tempo)))
        spare = wav.shape[-1] - self.frames
        if spare < 0:
            return torch.nn.functional.pad(wav, (0, -spare))
        if not self.train:
            return wav[..., : self.frames]
        sources = wav.shape[0]
        if self.shift_frames > 0:
            offsets = rng.integers(0, spare + 1, size=sources)
        else:
            offsets = np.full(sources, int(rng.integers(0, spare + 1)))
        return torch.stack([wav[s, :, o: o + self.frames] for s, o in enumerate(offsets)])

    def _batch(self, stems: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Batch-level steps that keep length: remix, gain, sign flip, channel swap, noise."""
        cfg = self.cfg
        batch, sources, channels, _ = stems.shape
        if cfg.remix and batch > 1:
            perms = torch.from_numpy(np.stack([rng.permutation(batch) for _ in range(sources)], axis=1))
            stems = stems[perms, torch.arange(sources)[None, :]]
        if cfg.gain:
            low, high = cfg.gain_db
            db = rng.uniform(low, high, size=(batch, sources, 1, 1))
            stems = stems * torch.from_numpy(10 ** (db / 20)).to(stems.dtype)
        if cfg.flip:
            signs = rng.choice([-1.0, 1.0], size=(batch, sources, 1, 1))
            stems = stems * torch.from_numpy(signs).to(stems.dtype)
        if cfg.swap and channels == 2:
            swap = torch.from_numpy(rng.random((batch, sources)) < 0.5)
            stems = torch.where(swap[:, :, None, None], stems.flip(2), stems)
        if self.noise_index >= 0:
            stems = stems.clone()
            rms = stems.sum(dim=1).square().mean(dim=(1, 2)).sqrt()
            for b in range(batch):
                if rng.random() < cfg.noise_prob:
                    level = float(rms[b]) * 10 ** (rng.uniform(*cfg.noise_db) / 20)
                    noise = rng.standard_normal(stems.shape[2:]).astype(np.float32) * level
                    stems[b, self.noise_index] += torch.from_numpy(noise)
        return stems
