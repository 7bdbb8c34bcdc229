"""The layers of the hybrid U-Nets (HDemucs, HTDemucs): encoder and decoder layers that work over
frequency (spectrogram branch) or time (waveform branch), and the multi-band wrapper that gives the
outer frequency layers separate weights per frequency band.

Owns each layer's convolutions, norms and the DConv residual branch's placement; state_dict keys
match demucs 4.1.0. Must not: know the U-Net's layout, STFTs or the bottleneck (hdemucs.py does).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from stemsplit.nn.layers import DConv


def _group_norm_or_identity(enabled: bool, groups: int, channels: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if enabled else nn.Identity()


def _dconv_over_time(dconv: DConv, y: torch.Tensor, freq: bool) -> torch.Tensor:
    """Apply a DConv along time; in frequency layers every frequency row is a separate item."""
    if not freq:
        return dconv(y)
    batch, channels, bins, frames = y.shape
    rows = y.permute(0, 2, 1, 3).reshape(batch * bins, channels, frames)
    rows = dconv(rows)
    return rows.view(batch, bins, channels, frames).permute(0, 2, 1, 3)


class HybridEncoderLayer(nn.Module):
    """Strided conv (over frequency for spectrogram layers, over time otherwise), norm, GELU,
    optional DConv, then an optional 1x1 (or `context`-wide) conv with GLU.

    `empty` keeps only the strided conv: used by the waveform branch at the merge point, where
    its output is injected into the frequency branch instead of being processed further.
    """

    def __init__(self, chin: int, chout: int, kernel_size: int = 8, stride: int = 4,
                 norm_groups: int = 1, empty: bool = False, freq: bool = True,
                 dconv: bool = True, norm: bool = True, context: int = 0,
                 dconv_kw: dict[str, Any] | None = None, pad: bool = True,
                 rewrite: bool = True) -> None:
        super().__init__()
        self.freq = freq
        self.kernel_size = kernel_size
        self.stride = stride
        self.empty = empty
        self.pad = kernel_size // 4 if pad else 0
        if freq:
            self.conv: nn.Module = nn.Conv2d(chin, chout, (kernel_size, 1), (stride, 1),
                                             (self.pad, 0))
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, self.pad)
        if empty:
            return
        conv_type = nn.Conv2d if freq else nn.Conv1d
        self.norm1 = _group_norm_or_identity(norm, norm_groups, chout)
        self.rewrite: nn.Module | None = None
        if rewrite:
            self.rewrite = conv_type(chout, 2 * chout, 1 + 2 * context, 1, context)
            self.norm2 = _group_norm_or_identity(norm, norm_groups, 2 * chout)
        self.dconv: DConv | None = DConv(chout, **(dconv_kw or {})) if dconv else None

    def forward(self, x: torch.Tensor, inject: torch.Tensor | None = None) -> torch.Tensor:
        if not self.freq:
            if x.dim() == 4:
                x = x.flatten(1, 2)
            remainder = x.shape[-1] % self.stride
            if remainder:
                x = F.pad(x, (0, self.stride - remainder))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            if inject.shape[-1] != y.shape[-1]:
                raise RuntimeError(f"branches misaligned: {inject.shape} vs {y.shape}")
            if inject.dim() == 3 and y.dim() == 4:
                inject = inject[:, :, None]
            y = y + inject
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_over_time(self.dconv, y, self.freq)
        if self.rewrite is not None:
            y = F.glu(self.norm2(self.rewrite(y)), dim=1)
        return y


class HybridDecoderLayer(nn.Module):
    """Mirror of `HybridEncoderLayer`: add the skip, rewrite conv + GLU, optional DConv, then a
    transposed strided conv whose padding is cropped. GELU on the output unless `last`.

    forward returns (output, input of the transposed conv); the latter is what the waveform
    branch starts from when the two branches split again.
    """

    def __init__(self, chin: int, chout: int, last: bool = False, kernel_size: int = 8,
                 stride: int = 4, norm_groups: int = 1, empty: bool = False, freq: bool = True,
                 dconv: bool = True, norm: bool = True, context: int = 1,
                 dconv_kw: dict[str, Any] | None = None, pad: bool = True,
                 context_freq: bool = True, rewrite: bool = True) -> None:
        super().__init__()
        self.pad = kernel_size // 4 if pad else 0
        self.last = last
        self.freq = freq
        self.chin = chin
        self.empty = empty
        self.stride = stride
        self.kernel_size = kernel_size
        if freq:
            self.conv_tr: nn.Module = nn.ConvTranspose2d(chin, chout, (kernel_size, 1),
                                                         (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
        self.norm2 = _group_norm_or_identity(norm, norm_groups, chout)
        if empty:
            return
        self.rewrite: nn.Module | None = None
        if rewrite:
            width = 1 + 2 * context
            if not freq:
                self.rewrite = nn.Conv1d(chin, 2 * chin, width, 1, context)
            elif context_freq:
                self.rewrite = nn.Conv2d(chin, 2 * chin, width, 1, context)
            else:
                self.rewrite = nn.Conv2d(chin, 2 * chin, (1, width), 1, (0, context))
            self.norm1 = _group_norm_or_identity(norm, norm_groups, 2 * chin)
        self.dconv: DConv | None = DConv(chin, **(dconv_kw or {})) if dconv else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None,
                length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.freq and x.dim() == 3:
            x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
        if self.empty:
            y = x
        else:
            y = x + skip
            if self.rewrite is not None:
                y = F.glu(self.norm1(self.rewrite(y)), dim=1)
            if self.dconv is not None:
                y = _dconv_over_time(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[..., self.pad:-self.pad, :]
        else:
            z = z[..., self.pad:self.pad + length]
        if not self.last:
            z = F.gelu(z)
        return z, y


class MultiBand(nn.Module):
    """One frequency layer replicated per frequency band, each copy with its own weights.

    `split_ratios` (e.g. [0.25, 0.5]) are band edges as fractions of the frequency axis. Bands
    are cut with the right overlap so that, were all copies identical, the result would equal
    the unsplit layer: the encoder gives each band the context its kernel needs; the decoder
    overlap-adds the `stride` rows shared by neighbouring bands.
    """

    def __init__(self, layers: Sequence[nn.Module], split_ratios: Sequence[float]) -> None:
        super().__init__()
        self.split_ratios = list(split_ratios)
        self.layers = nn.ModuleList(layers)
        self.conv = isinstance(self.layers[0], HybridEncoderLayer)
        if self.conv:
            for layer in self.layers:
                layer.conv.padding = (0, 0)  # bands are padded here, in `_encode`

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                length: int | None = None) -> Any:
        if self.conv:
            return self._encode(x)
        return self._decode(x, skip), None

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        bins = x.shape[2]
        start = 0
        outs = []
        for ratio, layer in zip(self.split_ratios + [1], self.layers):
            kernel, stride = layer.kernel_size, layer.stride
            pad = kernel // 4
            if ratio == 1:
                limit = bins
            else:
                # Snap the band end so the band is a whole number of strides.
                span = int(round(bins * ratio)) - start + (pad if start == 0 else 0)
                frames = round((span - kernel) / stride + 1)
                limit = start + (frames - 1) * stride + kernel - (pad if start == 0 else 0)
            if not 0 < limit - start or limit > bins:
                raise ValueError(f"frequency band [{start}, {limit}) is invalid for {bins} bins")
            band = x[:, :, start:limit]
            band = F.pad(band, (0, 0, pad if start == 0 else 0, pad if ratio == 1 else 0))
            outs.append(layer(band))
            start = limit - kernel + stride
        return torch.cat(outs, dim=2)

    def _decode(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        bins = x.shape[2]
        start = 0
        outs: list[torch.Tensor] = []
        last = self.layers[-1].last
        for ratio, layer in zip(self.split_ratios + [1], self.layers):
            stride = layer.stride
            limit = bins if ratio == 1 else int(round(bins * ratio))
            out = layer.forward_band(x[:, :, start:limit], skip[:, :, start:limit])
            if outs:
                # Overlap-add the rows this band shares with the previous one; the transposed
                # conv bias must only be counted once.
                bias = layer.conv_tr.bias.view(1, -1, 1, 1)
                previous = outs[-1]
                shared = previous[:, :, -stride:] + out[:, :, :stride] - bias
                outs[-1] = torch.cat([previous[:, :, :-stride], shared], dim=2)
                out = out[:, :, stride:]
            if ratio == 1:
                out = out[:, :, :-((stride + 1) // 2)]
            if start == 0:
                out = out[:, :, stride // 2:]
            outs.append(out)
            start = limit
        out = torch.cat(outs, dim=2)
        return out if last else F.gelu(out)


class BandDecoderLayer(HybridDecoderLayer):
    """A `HybridDecoderLayer` used inside `MultiBand`: no cropping, no final GELU (the wrapper
    stitches bands first and applies them itself)."""

    def forward_band(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = x + skip
        if self.rewrite is not None:
            y = F.glu(self.norm1(self.rewrite(y)), dim=1)
        if self.dconv is not None:
            y = _dconv_over_time(self.dconv, y, True)
        return self.norm2(self.conv_tr(y))
