"""Demucs v2 / v3-time: the waveform-only U-Net.

Owns: the `Demucs` model (strided GLU conv encoder, transposed-conv decoder with skip
connections, optional BiLSTM bottleneck and DConv residual branches, on-the-fly input
normalisation, optional 2x internal upsampling) and its `valid_length` rule.
Constructor keywords, defaults and state_dict keys match demucs 4.1.0's `demucs.demucs.Demucs`.
Must not: load files or know about segmenting long audio.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import julius
import torch
from torch import nn
from torch.nn import functional as F

from stemsplit.nn.layers import BLSTM, DConv, center_trim, records_init_kwargs, rescale_module


class Demucs(nn.Module):
    """Waveform U-Net (Défossez et al. 2019, with the v3 DConv branches). forward:
    (B, C, T) -> (B, S, C, T). Any input length works: it is padded to `valid_length` and the
    output trimmed back.
    """

    @records_init_kwargs
    def __init__(self, sources: list[str], audio_channels: int = 2, channels: int = 64,
                 growth: float = 2.0, depth: int = 6, rewrite: bool = True,
                 lstm_layers: int = 0, kernel_size: int = 8, stride: int = 4, context: int = 1,
                 gelu: bool = True, glu: bool = True, norm_starts: int = 4, norm_groups: int = 4,
                 dconv_mode: int = 1, dconv_depth: int = 2, dconv_comp: float = 4,
                 dconv_attn: int = 4, dconv_lstm: int = 4, dconv_init: float = 1e-4,
                 normalize: bool = True, resample: bool = True, rescale: float = 0.1,
                 samplerate: int = 44100, segment: float = 4 * 10) -> None:
        super().__init__()
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment = segment
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.resample = resample
        self.channels = channels
        self.normalize = normalize
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()

        # The rewrite convs double the channels for GLU to halve them again.
        widen = 2 if glu else 1

        def gate() -> nn.Module:
            return nn.GLU(dim=1) if glu else nn.ReLU()

        def activation() -> nn.Module:
            return nn.GELU() if gelu else nn.ReLU()

        chin = audio_channels
        for index in range(depth):
            def norm(dim: int) -> nn.Module:
                return nn.GroupNorm(norm_groups, dim) if index >= norm_starts else nn.Identity()

            dconv_kw: dict[str, Any] = dict(depth=dconv_depth, init=dconv_init,
                                            compress=dconv_comp, attn=index >= dconv_attn,
                                            lstm=index >= dconv_lstm)
            # Sequential positions are checkpoint keys, so identity norms keep their slot.
            encode: list[nn.Module] = [nn.Conv1d(chin, channels, kernel_size, stride),
                                       norm(channels), activation()]
            if dconv_mode & 1:
                encode.append(DConv(channels, **dconv_kw))
            if rewrite:
                encode += [nn.Conv1d(channels, widen * channels, 1), norm(widen * channels),
                           gate()]
            self.encoder.append(nn.Sequential(*encode))

            chout = chin if index > 0 else len(self.sources) * audio_channels
            decode: list[nn.Module] = []
            if rewrite:
                decode += [nn.Conv1d(channels, widen * channels, 2 * context + 1,
                                     padding=context),
                           norm(widen * channels), gate()]
            if dconv_mode & 2:
                decode.append(DConv(channels, **dconv_kw))
            decode.append(nn.ConvTranspose1d(channels, chout, kernel_size, stride))
            if index > 0:
                decode += [norm(chout), activation()]
            self.decoder.insert(0, nn.Sequential(*decode))
            chin = channels
            channels = int(growth * channels)

        self.lstm: BLSTM | None = BLSTM(chin, lstm_layers) if lstm_layers else None
        if rescale:
            rescale_module(self, reference=rescale)

    def valid_length(self, length: int) -> int:
        """Smallest length >= `length` for which every strided conv consumes all its input.

        Inputs are padded to this length (centred) before the network and trimmed after.
        """
        if self.resample:
            length *= 2
        for _ in range(self.depth):
            length = max(1, math.ceil((length - self.kernel_size) / self.stride) + 1)
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        if self.resample:
            length = math.ceil(length / 2)
        return int(length)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        x = mix
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            mean = mono.mean(dim=-1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True)
            x = (x - mean) / (1e-5 + std)
        missing = self.valid_length(length) - length
        x = F.pad(x, (missing // 2, missing - missing // 2))
        if self.resample:
            x = julius.resample_frac(x, 1, 2)

        skips = []
        for encode in self.encoder:
            x = encode(x)
            skips.append(x)
        if self.lstm is not None:
            x = self.lstm(x)
        for decode in self.decoder:
            skip = skips.pop()
            x = decode(x + center_trim(skip, x.shape[-1]))

        if self.resample:
            x = julius.resample_frac(x, 2, 1)
        if self.normalize:
            x = x * std + mean
        x = center_trim(x, length)
        return x.view(x.shape[0], len(self.sources), self.audio_channels, x.shape[-1])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Also accept checkpoints from before the encoder/decoder norm slot was added, whose
        `{encoder,decoder}.N.2.*` parameters now live at `.N.3.*`."""
        state = dict(state_dict)
        for index in range(self.depth):
            for part in ("encoder", "decoder"):
                for name in ("weight", "bias"):
                    old, new = f"{part}.{index}.2.{name}", f"{part}.{index}.3.{name}"
                    if old in state and new not in state:
                        state[new] = state.pop(old)
        return super().load_state_dict(state, strict=strict, assign=assign)
