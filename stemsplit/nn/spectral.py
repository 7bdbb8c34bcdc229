"""Spectrogram plumbing for the hybrid networks.

Owns: STFT / inverse STFT in the Demucs convention (normalised, centred, Hann window), the
padding that keeps `frames == ceil(length / hop)` so time and frequency branches stay aligned,
complex-as-channels packing, and multichannel Wiener filtering (the expectation-maximisation
refinement of Nugraha et al. / Open-Unmix, written here from the equations).
Must not: hold learnable parameters or know about network layers.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# Devices whose FFT/complex support is missing: spectral work runs on the CPU for them.
_CPU_FALLBACK_DEVICES = ("mps", "xpu")


def pad1d(x: torch.Tensor, left: int, right: int, mode: str = "constant") -> torch.Tensor:
    """F.pad on the last axis that also accepts reflect padding wider than the signal.

    Reflection needs more samples than the pad width; short signals first get the missing
    samples as zeros (on the right when possible), then are reflected.
    """
    length = x.shape[-1]
    if mode == "reflect" and length <= max(left, right):
        missing = max(left, right) - length + 1
        extra_right = min(right, missing)
        extra_left = missing - extra_right
        x = F.pad(x, (extra_left, extra_right))
        left -= extra_left
        right -= extra_right
    return F.pad(x, (left, right), mode=mode)


def stft(x: torch.Tensor, nfft: int, hop: int) -> torch.Tensor:
    """(..., T) real -> (..., nfft // 2 + 1, frames) complex; normalised, centred, reflect pad."""
    *batch_shape, length = x.shape
    device = x.device
    flat = x.reshape(-1, length)
    if device.type in _CPU_FALLBACK_DEVICES:
        flat = flat.cpu()
    z = torch.stft(flat, nfft, hop, window=torch.hann_window(nfft).to(flat), win_length=nfft,
                   normalized=True, center=True, return_complex=True, pad_mode="reflect")
    return z.view(*batch_shape, z.shape[-2], z.shape[-1])


def istft(z: torch.Tensor, hop: int, length: int) -> torch.Tensor:
    """Inverse of `stft`: (..., F, frames) complex -> (..., length) real."""
    *batch_shape, bins, frames = z.shape
    nfft = 2 * bins - 2
    flat = z.reshape(-1, bins, frames)
    window = torch.hann_window(nfft).to(flat.real)
    x = torch.istft(flat, nfft, hop, window=window, win_length=nfft, normalized=True,
                    length=length, center=True)
    return x.view(*batch_shape, x.shape[-1])


def aligned_stft(x: torch.Tensor, nfft: int, legacy_padding: bool = False) -> torch.Tensor:
    """STFT with exactly ceil(T / hop) frames and the Nyquist bin dropped: (..., nfft // 2, frames).

    The signal is padded by 3/2 hop on each side (reflect; zeros for `legacy_padding`, the
    padding bug some MDX models were trained with) and the 2 outermost frames per side are
    dropped, so frame k is centred on sample k * hop + hop / 2, like a stride-hop convolution.
    """
    hop = nfft // 4
    frames = math.ceil(x.shape[-1] / hop)
    pad = hop // 2 * 3
    mode = "constant" if legacy_padding else "reflect"
    x = pad1d(x, pad, pad + frames * hop - x.shape[-1], mode=mode)
    z = stft(x, nfft, hop)[..., :-1, :]
    return z[..., 2:2 + frames]


def aligned_istft(z: torch.Tensor, length: int, legacy_padding: bool = False) -> torch.Tensor:
    """Inverse of `aligned_stft` back to `length` samples."""
    bins = z.shape[-2]
    hop = bins // 2
    z = F.pad(z, (2, 2, 0, 1))
    pad = hop // 2 * 3
    padded_length = hop * math.ceil(length / hop)
    if legacy_padding:
        return istft(z, hop, padded_length)[..., :length]
    x = istft(z, hop, padded_length + 2 * pad)
    return x[..., pad:pad + length]


def plain_stft(x: torch.Tensor, nfft: int) -> torch.Tensor:
    """STFT with hop nfft // 4 and the Nyquist bin dropped (the non-hybrid spectrogram models)."""
    return stft(x, nfft, nfft // 4)[..., :-1, :]


def plain_istft(z: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of `plain_stft`."""
    hop = z.shape[-2] // 2
    return istft(F.pad(z, (0, 0, 0, 1)), hop, length)


def complex_as_channels(z: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) complex -> (B, 2C, F, T) real, channels ordered re0, im0, re1, im1, ..."""
    batch, channels, bins, frames = z.shape
    return torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(batch, 2 * channels, bins, frames)


def channels_as_complex(m: torch.Tensor) -> torch.Tensor:
    """(B, S, 2C, F, T) real -> (B, S, C, F, T) complex; inverse of `complex_as_channels`."""
    batch, sources, channels2, bins, frames = m.shape
    pairs = m.view(batch, sources, channels2 // 2, 2, bins, frames).permute(0, 1, 2, 4, 5, 3)
    return torch.view_as_complex(pairs.contiguous())


def _invert_small(matrix: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of (..., n, n) complex matrices for n = 1 or 2."""
    size = matrix.shape[-1]
    if size == 1:
        return 1 / matrix
    if size != 2:
        raise ValueError("Wiener filtering supports mono or stereo audio only")
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    inv_det = 1 / (a * d - b * c)
    rows = [torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)]
    return torch.stack(rows, dim=-2) * inv_det[..., None, None]


def _em_refine(estimates: torch.Tensor, mix: torch.Tensor, iterations: int,
               eps: float) -> torch.Tensor:
    """EM refinement of source STFTs under a local Gaussian model.

    estimates: (T, F, C, S) complex, mix: (T, F, C) complex. Each iteration re-estimates, per
    source, a power spectral density v (mean power over channels) and a spatial covariance R per
    frequency (power-weighted average of y y^H over frames), then re-separates the mixture with
    the multichannel Wiener gains v_j R_j (sum_k v_k R_k + eps I)^-1.
    """
    channels = mix.shape[-1]
    identity = torch.eye(channels, dtype=mix.dtype, device=mix.device)
    y = estimates
    for _ in range(iterations):
        power = y.abs().square().mean(dim=2)  # (T, F, S)
        # Empirical covariances y y^H summed over frames: (F, S, C, C).
        covariance = torch.einsum("tfcs,tfds->fscd", y, y.conj())
        covariance = covariance / (eps + power.sum(dim=0))[..., None, None]
        # Mixture model per bin: (T, F, C, C).
        mixture_model = eps ** 0.5 * identity + torch.einsum(
            "tfs,fscd->tfcd", power.to(mix.dtype), covariance)
        inverse = _invert_small(mixture_model)
        gains = torch.einsum("fsce,tfed->tfscd", covariance, inverse)
        gains = gains * power.to(mix.dtype)[..., None, None]
        y = torch.einsum("tfscd,tfd->tfcs", gains, mix)
    return y


def wiener_sources(magnitudes: torch.Tensor, mix: torch.Tensor, iterations: int,
                   residual: bool = False, scale_factor: float = 10.0,
                   eps: float = 1e-10) -> torch.Tensor:
    """Complex source estimates from magnitude estimates and the mixture STFT.

    magnitudes: (T, F, C, S) >= 0; mix: (T, F, C) complex. Starts from the magnitudes with the
    mixture phase, optionally adds the residual (mix minus all sources) as an extra source, then
    runs `iterations` EM steps on data scaled so the largest bin is at most `scale_factor`.
    Returns (T, F, C, S or S + 1) complex.
    """
    phase = torch.polar(torch.ones_like(mix.real), mix.angle())
    y = magnitudes.to(mix.dtype) * phase[..., None]
    if residual:
        y = torch.cat([y, mix[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if iterations == 0:
        return y
    max_abs = torch.clamp(mix.abs().max() / scale_factor, min=1.0)
    y = _em_refine(y / max_abs, mix / max_abs, iterations, eps)
    return y * max_abs


def wiener_filter(magnitudes: torch.Tensor, mix: torch.Tensor, iterations: int,
                  residual: bool = False, window: int = 300) -> torch.Tensor:
    """Batched Wiener filtering as used by the hybrid models, on windows of `window` frames.

    magnitudes: (B, S, C, F, T) real, mix: (B, C, F, T) complex -> (B, S, C, F, T) complex.
    Each window of frames gets its own spatial model, which bounds memory on long inputs.
    """
    batch, sources, channels, bins, frames = magnitudes.shape
    per_item = []
    for index in range(batch):
        mags = magnitudes[index].permute(3, 2, 1, 0)  # (T, F, C, S)
        stft_mix = mix[index].permute(2, 1, 0)  # (T, F, C)
        pieces = [wiener_sources(mags[start:start + window], stft_mix[start:start + window],
                                 iterations, residual=residual)
                  for start in range(0, frames, window)]
        per_item.append(torch.cat(pieces, dim=0))
    out = torch.stack(per_item).permute(0, 4, 3, 2, 1)  # (B, S', C, F, T)
    if residual:
        out = out[:, :-1]
    return out.contiguous()
