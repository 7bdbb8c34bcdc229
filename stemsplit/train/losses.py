"""Training losses on estimated vs reference stems (B, S, C, T).

Owns: the waveform loss (L1 or MSE), the multi-resolution STFT loss (spectral convergence + log
magnitude over several FFT sizes), and their weighting, per loss and per source. Everything is
computed in float32 even under autocast. Must not: know about data, optimisers or logging.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from stemsplit.errors import ConfigError

_EPS = 1e-7
_SILENT_FLOOR = 1e-2
"""Spectral convergence divides by the reference's norm, floored at this fraction (-40 dB) of all
the sources' norm together: a source silent in the whole batch (no vocals in an instrumental
excerpt) would otherwise divide its estimate's leak by _EPS into a loss in the millions."""


def _per_source(values: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Reduce per-source values (S,) to one number, weighting sources (weights sum to 1)."""
    if weights is None:
        return values.mean()
    return (values * weights).sum()


def waveform_loss(est: torch.Tensor, ref: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Per-source L1 or MSE over batch, channels and time: (S,)."""
    diff = est.float() - ref.float()
    err = diff.abs() if kind == "l1" else diff.square()
    return err.mean(dim=(0, 2, 3))


def stft_loss(est: torch.Tensor, ref: torch.Tensor, n_ffts: Sequence[int] = (512, 1024, 2048)) -> torch.Tensor:
    """Per-source multi-resolution STFT loss (S,): mean over FFT sizes of spectral convergence
    (||R| - |E||_F / ||R||_F, the denominator floored for a silent source, see _SILENT_FLOOR) plus the
    mean absolute difference of log magnitudes. Hop is n_fft/4."""
    batch, sources, channels, length = est.shape
    est = est.float().reshape(-1, length)
    ref = ref.float().reshape(-1, length)
    total = torch.zeros(sources, device=est.device)
    for n_fft in n_ffts:
        window = torch.hann_window(n_fft, device=est.device)
        mags = [
            torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True).abs()
            .reshape(batch, sources, channels, n_fft // 2 + 1, -1)
            for x in (est, ref)
        ]
        e_mag, r_mag = mags
        energy = r_mag.square().sum(dim=(0, 2, 3, 4))
        floor = _SILENT_FLOOR * energy.sum().sqrt()
        convergence = (r_mag - e_mag).square().sum(dim=(0, 2, 3, 4)).sqrt() / (
            energy.sqrt().maximum(floor) + _EPS)
        log_mag = (torch.log(r_mag + _EPS) - torch.log(e_mag + _EPS)).abs().mean(dim=(0, 2, 3, 4))
        total = total + convergence + log_mag
    return total / len(n_ffts)


class StemLoss:
    """The configured training objective: waveform loss + stft_weight * STFT loss, source-weighted."""

    def __init__(self, sources: Sequence[str], kind: str = "l1", stft_weight: float = 0.0,
                 n_ffts: Sequence[int] = (512, 1024, 2048), source_weights: Optional[dict[str, float]] = None):
        unknown = sorted(set(source_weights or {}) - set(sources))
        if unknown:
            raise ConfigError(f"source weights name unknown source(s) {unknown}; the model has {list(sources)}")
        self.kind = kind
        self.stft_weight = stft_weight
        self.n_ffts = tuple(n_ffts)
        self.weights: Optional[torch.Tensor] = None
        if source_weights:
            raw = torch.tensor([float(source_weights.get(s, 1.0)) for s in sources])
            if not raw.sum() > 0:  # 0/0 weights: every loss NaN, and training would go on regardless
                raise ConfigError(f"source weights {dict(source_weights)} leave no source with a positive weight")
            self.weights = raw / raw.sum()

    def per_source(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The loss of each source (S,), before source weighting."""
        values = waveform_loss(est, ref, self.kind)
        if self.stft_weight > 0:
            values = values + self.stft_weight * stft_loss(est, ref, self.n_ffts)
        return values

    def __call__(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        weights = None if self.weights is None else self.weights.to(est.device)
        return _per_source(self.per_source(est, ref), weights)
