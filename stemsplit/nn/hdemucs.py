"""Hybrid Demucs (v3): a spectrogram U-Net and a waveform U-Net merged at the bottleneck.

Owns: `HybridUNet` (layout, STFT front/back end and the encode/decode loops shared with HTDemucs)
and the `HDemucs` model; hybrid_layers.py holds the layers it stacks.
Constructor keywords, defaults and state_dict keys match demucs 4.1.0's `HDemucs`.
Must not: load files or know about segmenting long audio.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from stemsplit.nn.hybrid_layers import BandDecoderLayer, HybridDecoderLayer, HybridEncoderLayer, MultiBand
from stemsplit.nn.layers import ScaledEmbedding, records_init_kwargs, rescale_module
from stemsplit.nn.spectral import (aligned_istft, aligned_stft, channels_as_complex,
                                   complex_as_channels, plain_istft, plain_stft, wiener_filter)


class HybridUNet(nn.Module):
    """Layout and plumbing shared by HDemucs and HTDemucs.

    The frequency branch (`encoder`/`decoder`) runs on the STFT (complex as channels, or
    magnitudes); frequency layers shrink the frequency axis by `stride` until it is at most
    `kernel_size`, where one last layer collapses it to 1 and the waveform branch (`tencoder` /
    `tdecoder`, same strides over time) is injected. Further layers are time convolutions.
    """

    sources: list[str]
    # Only HDemucs can turn these off; HTDemucs is always hybrid with the fixed padding.
    hybrid = True
    hybrid_old = False

    def _build_layers(self, *, sources: list[str], audio_channels: int, channels: int,
                      channels_time: int | None, growth: float, nfft: int, cac: bool,
                      depth: int, rewrite: bool, hybrid: bool, multi_freqs: Sequence[float] | None,
                      multi_freqs_depth: int, freq_emb: float, emb_scale: float,
                      emb_smooth: bool, kernel_size: int, time_stride: int, stride: int,
                      context: int, context_enc: int, norm_starts: int, norm_groups: int,
                      dconv_mode: int, dconv_kw: dict[str, Any],
                      dconv_lstm: int | None = None, dconv_attn: int | None = None) -> None:
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()
        self.freq_emb: ScaledEmbedding | None = None

        chin = audio_channels
        chin_z = 2 * chin if cac else chin
        chout = channels_time or channels
        chout_z = channels
        freqs = nfft // 2
        for index in range(depth):
            freq = freqs > 1
            layer_kernel, layer_stride = kernel_size, stride
            if not freq:
                layer_kernel, layer_stride = 2 * time_stride, time_stride
            pad = True
            last_freq = freq and freqs <= kernel_size
            if last_freq:
                # The final frequency layer consumes all remaining bins; branches merge here.
                layer_kernel, pad = freqs, False
                chout_z = max(chout, chout_z)
                chout = chout_z
            kw_dconv = dict(dconv_kw)
            if dconv_lstm is not None:
                kw_dconv["lstm"] = index >= dconv_lstm
            if dconv_attn is not None:
                kw_dconv["attn"] = index >= dconv_attn
            common = dict(norm=index >= norm_starts, rewrite=rewrite, norm_groups=norm_groups,
                          dconv_kw=kw_dconv)
            freq_kw = dict(common, kernel_size=layer_kernel, stride=layer_stride, freq=freq,
                           pad=pad)
            time_kw = dict(common, kernel_size=kernel_size, stride=stride, freq=False, pad=True)
            multi = bool(multi_freqs) and index < multi_freqs_depth

            bands = len(multi_freqs) + 1 if multi else 1
            if multi and (index >= norm_starts or not freq or not pad):
                raise ValueError(f"layer {index} cannot be split into frequency bands: "
                                 "multi_freqs_depth must stay below norm_starts and above the "
                                 "last frequency layer")
            if multi:
                enc_layers = [HybridEncoderLayer(chin_z, chout_z, dconv=bool(dconv_mode & 1),
                                                 context=context_enc, **freq_kw)
                              for _ in range(bands)]
                self.encoder.append(MultiBand(enc_layers, multi_freqs))
            else:
                self.encoder.append(HybridEncoderLayer(
                    chin_z, chout_z, dconv=bool(dconv_mode & 1), context=context_enc, **freq_kw))
            if hybrid and freq:
                self.tencoder.append(HybridEncoderLayer(
                    chin, chout, dconv=bool(dconv_mode & 1), context=context_enc,
                    empty=last_freq, **time_kw))

            if index == 0:
                chin = audio_channels * len(sources)
                chin_z = 2 * chin if cac else chin
            if multi:
                dec_layers = [BandDecoderLayer(chout_z, chin_z, dconv=bool(dconv_mode & 2),
                                               last=index == 0, context=context,
                                               context_freq=False, **freq_kw)
                              for _ in range(bands)]
                self.decoder.insert(0, MultiBand(dec_layers, multi_freqs))
            else:
                self.decoder.insert(0, HybridDecoderLayer(
                    chout_z, chin_z, dconv=bool(dconv_mode & 2), last=index == 0,
                    context=context, **freq_kw))
            if hybrid and freq:
                self.tdecoder.insert(0, HybridDecoderLayer(
                    chout, chin, dconv=bool(dconv_mode & 2), empty=last_freq,
                    last=index == 0, context=context, **time_kw))

            chin, chin_z = chout, chout_z
            chout, chout_z = int(growth * chout), int(growth * chout_z)
            if freq:
                freqs = 1 if freqs <= kernel_size else freqs // stride
            if index == 0 and freq_emb:
                self.freq_emb = ScaledEmbedding(freqs, chin_z, smooth=emb_smooth, scale=emb_scale)
                self.freq_emb_scale = freq_emb

    # -- spectral front and back end ---------------------------------------------------------

    def _spectrogram(self, mix: torch.Tensor) -> torch.Tensor:
        if self.hybrid:
            return aligned_stft(mix, self.nfft, legacy_padding=self.hybrid_old)
        return plain_stft(mix, self.nfft)

    def _waveform(self, z: torch.Tensor, length: int) -> torch.Tensor:
        if self.hybrid:
            return aligned_istft(z, length, legacy_padding=self.hybrid_old)
        return plain_istft(z, length)

    def _network_input(self, z: torch.Tensor) -> torch.Tensor:
        return complex_as_channels(z) if self.cac else z.abs()

    def _output_spectrogram(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Turn the frequency branch output (B, S, C', F, T) into source STFTs (B, S, C, F, T)."""
        if self.cac:
            return channels_as_complex(out)
        iterations = self.end_iters if self.training else self.wiener_iters
        if iterations < 0:
            # Plain masking: estimated magnitudes with the mixture phase.
            return z[:, None] / (1e-8 + z.abs()[:, None]) * out
        return wiener_filter(out, z, iterations, residual=self.wiener_residual).to(z.dtype)

    # -- the two U-Net passes ----------------------------------------------------------------

    def _encode(self, x: torch.Tensor, xt: torch.Tensor | None) -> tuple[Any, ...]:
        skips: list[torch.Tensor] = []
        skips_t: list[torch.Tensor] = []
        lengths: list[int] = []
        lengths_t: list[int] = []
        for index, encode in enumerate(self.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if index < len(self.tencoder):
                lengths_t.append(xt.shape[-1])
                tencode = self.tencoder[index]
                xt = tencode(xt)
                if tencode.empty:
                    inject = xt  # same shape as the frequency branch now: merge
                else:
                    skips_t.append(xt)
            x = encode(x, inject)
            if index == 0 and self.freq_emb is not None:
                rows = torch.arange(x.shape[-2], device=x.device)
                embedding = self.freq_emb(rows).t()[None, :, :, None]
                x = x + self.freq_emb_scale * embedding
            skips.append(x)
        return x, xt, (skips, skips_t, lengths, lengths_t)

    def _decode(self, x: torch.Tensor, xt: torch.Tensor | None,
                state: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        skips, skips_t, lengths, lengths_t = state
        offset = len(self.decoder) - len(self.tdecoder)
        for index, decode in enumerate(self.decoder):
            x, before_conv = decode(x, skips.pop(), lengths.pop())
            if index < offset:
                continue
            tdecode = self.tdecoder[index - offset]
            if tdecode.empty:
                # Branches split: the waveform branch starts from the merged features.
                xt, _ = tdecode(before_conv[:, :, 0], None, lengths_t.pop())
            else:
                xt, _ = tdecode(xt, skips_t.pop(), lengths_t.pop())
        return x, xt


def _standardize(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (1e-5 + std), mean, std


class HDemucs(HybridUNet):
    """Hybrid Demucs (Défossez 2021). forward: (B, C, T) -> (B, S, C, T).

    With `hybrid=False` only the spectrogram branch exists. Without `cac`, the frequency branch
    predicts magnitudes, turned into complex STFTs by masking (`wiener_iters < 0`) or Wiener
    filtering with that many EM iterations (`end_iters` during training).
    """

    @records_init_kwargs
    def __init__(self, sources: list[str], audio_channels: int = 2, channels: int = 48,
                 channels_time: int | None = None, growth: float = 2, nfft: int = 4096,
                 wiener_iters: int = 0, end_iters: int = 0, wiener_residual: bool = False,
                 cac: bool = True, depth: int = 6, rewrite: bool = True, hybrid: bool = True,
                 hybrid_old: bool = False, multi_freqs: Sequence[float] | None = None,
                 multi_freqs_depth: int = 2, freq_emb: float = 0.2, emb_scale: float = 10,
                 emb_smooth: bool = True, kernel_size: int = 8, time_stride: int = 2,
                 stride: int = 4, context: int = 1, context_enc: int = 0, norm_starts: int = 4,
                 norm_groups: int = 4, dconv_mode: int = 1, dconv_depth: int = 2,
                 dconv_comp: float = 4, dconv_attn: int = 4, dconv_lstm: int = 4,
                 dconv_init: float = 1e-4, rescale: float = 0.1, samplerate: int = 44100,
                 segment: float = 4 * 10) -> None:
        super().__init__()
        if hybrid_old and not hybrid:
            raise ValueError("hybrid_old requires hybrid=True")
        if hybrid and wiener_iters != end_iters:
            raise ValueError("hybrid models need wiener_iters == end_iters")
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment = segment
        self.cac = cac
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.wiener_residual = wiener_residual
        self.hybrid = hybrid
        self.hybrid_old = hybrid_old
        self.nfft = nfft
        self.hop_length = nfft // 4
        self.depth = depth
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.context = context
        self._build_layers(
            sources=self.sources, audio_channels=audio_channels, channels=channels,
            channels_time=channels_time, growth=growth, nfft=nfft, cac=cac, depth=depth,
            rewrite=rewrite, hybrid=hybrid, multi_freqs=multi_freqs,
            multi_freqs_depth=multi_freqs_depth, freq_emb=freq_emb, emb_scale=emb_scale,
            emb_smooth=emb_smooth, kernel_size=kernel_size, time_stride=time_stride,
            stride=stride, context=context, context_enc=context_enc, norm_starts=norm_starts,
            norm_groups=norm_groups, dconv_mode=dconv_mode,
            dconv_kw=dict(depth=dconv_depth, compress=dconv_comp, init=dconv_init, gelu=True),
            dconv_lstm=dconv_lstm, dconv_attn=dconv_attn)
        if rescale:
            rescale_module(self, reference=rescale)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        z = self._spectrogram(mix)
        x, mean, std = _standardize(self._network_input(z).to(mix.device), (1, 2, 3))
        batch, _, bins, frames = x.shape
        xt = None
        if self.hybrid:
            xt, mean_t, std_t = _standardize(mix, (1, 2))

        x, xt, state = self._encode(x, xt)
        # The decoders start from zeros: everything flows through the skip connections.
        x = torch.zeros_like(x)
        x, xt = self._decode(x, xt, state)

        sources = len(self.sources)
        x = x.view(batch, sources, -1, bins, frames) * std[:, None] + mean[:, None]
        device = x.device
        if device.type in ("mps", "xpu"):
            x = x.cpu()
        out = self._waveform(self._output_spectrogram(z, x), length).to(device)
        if self.hybrid:
            out = out + xt.view(batch, sources, -1, length) * std_t[:, None] + mean_t[:, None]
        return out
