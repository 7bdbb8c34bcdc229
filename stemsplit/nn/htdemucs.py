"""Hybrid Transformer Demucs (v4): the hybrid U-Net with a cross-domain transformer between the
spectrogram and waveform branches at the bottleneck.

Owns: the `HTDemucs` model (fixed training-length handling, optional channel projections
around the transformer). Layers and spectral plumbing come from hybrid_layers.py, hdemucs.py
and transformer.py.
Constructor keywords, defaults and state_dict keys match demucs 4.1.0's `HTDemucs`.
Must not: load files or know about segmenting long audio.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from stemsplit.nn.hdemucs import HybridUNet, _standardize
from stemsplit.nn.layers import records_init_kwargs, rescale_module
from stemsplit.nn.transformer import CrossTransformerEncoder


class HTDemucs(HybridUNet):
    """Hybrid Transformer Demucs (Rouard et al. 2023). forward: (B, C, T) -> (B, S, C, T).

    With `use_train_segment`, evaluation always runs on exactly `segment` seconds (shorter
    inputs are zero-padded and the output cropped), because the transformer's attention was
    trained on that many tokens; in training mode `segment` follows the input length.
    """

    @records_init_kwargs
    def __init__(self, sources: list[str], audio_channels: int = 2, channels: int = 48,
                 channels_time: int | None = None, growth: float = 2, nfft: int = 4096,
                 wiener_iters: int = 0, end_iters: int = 0, wiener_residual: bool = False,
                 cac: bool = True, depth: int = 4, rewrite: bool = True,
                 multi_freqs: Sequence[float] | None = None, multi_freqs_depth: int = 3,
                 freq_emb: float = 0.2, emb_scale: float = 10, emb_smooth: bool = True,
                 kernel_size: int = 8, time_stride: int = 2, stride: int = 4, context: int = 1,
                 context_enc: int = 0, norm_starts: int = 4, norm_groups: int = 4,
                 dconv_mode: int = 1, dconv_depth: int = 2, dconv_comp: float = 8,
                 dconv_init: float = 1e-3, bottom_channels: int = 0, t_layers: int = 5,
                 t_emb: str = "sin", t_hidden_scale: float = 4.0, t_heads: int = 8,
                 t_dropout: float = 0.0, t_max_positions: int = 10000, t_norm_in: bool = True,
                 t_norm_in_group: bool = False, t_group_norm: bool = False,
                 t_norm_first: bool = True, t_norm_out: bool = True,
                 t_max_period: float = 10000.0, t_weight_decay: float = 0.0,
                 t_lr: float | None = None, t_layer_scale: bool = True, t_gelu: bool = True,
                 t_weight_pos_embed: float = 1.0, t_sin_random_shift: int = 0,
                 t_cape_mean_normalize: bool = True, t_cape_augment: bool = True,
                 t_cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4),
                 t_sparse_self_attn: bool = False, t_sparse_cross_attn: bool = False,
                 t_mask_type: str = "diag", t_mask_random_seed: int = 42,
                 t_sparse_attn_window: int = 500, t_global_window: int = 100,
                 t_sparsity: float = 0.95, t_auto_sparsity: bool = False,
                 t_cross_first: bool = False, rescale: float = 0.1, samplerate: int = 44100,
                 segment: float | Fraction = 10, use_train_segment: bool = True) -> None:
        super().__init__()
        if wiener_iters != end_iters:
            raise ValueError("HTDemucs needs wiener_iters == end_iters")
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment = segment
        self.use_train_segment = use_train_segment
        self.cac = cac
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.wiener_residual = wiener_residual
        self.nfft = nfft
        self.hop_length = nfft // 4
        self.depth = depth
        self.channels = channels
        self.bottom_channels = bottom_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.context = context
        self._build_layers(
            sources=self.sources, audio_channels=audio_channels, channels=channels,
            channels_time=channels_time, growth=growth, nfft=nfft, cac=cac, depth=depth,
            rewrite=rewrite, hybrid=True, multi_freqs=multi_freqs,
            multi_freqs_depth=multi_freqs_depth, freq_emb=freq_emb, emb_scale=emb_scale,
            emb_smooth=emb_smooth, kernel_size=kernel_size, time_stride=time_stride,
            stride=stride, context=context, context_enc=context_enc, norm_starts=norm_starts,
            norm_groups=norm_groups, dconv_mode=dconv_mode,
            dconv_kw=dict(depth=dconv_depth, compress=dconv_comp, init=dconv_init, gelu=True))
        # Only the U-Net convolutions are rescaled; the bottleneck projections are not.
        if rescale:
            rescale_module(self, reference=rescale)

        width = int(channels * growth ** (depth - 1))
        if bottom_channels:
            self.channel_upsampler = nn.Conv1d(width, bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(bottom_channels, width, 1)
            self.channel_upsampler_t = nn.Conv1d(width, bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(bottom_channels, width, 1)
            width = bottom_channels

        self.crosstransformer: CrossTransformerEncoder | None = None
        if t_layers > 0:
            self.crosstransformer = CrossTransformerEncoder(
                dim=width, emb=t_emb, hidden_scale=t_hidden_scale, num_heads=t_heads,
                num_layers=t_layers, cross_first=t_cross_first, dropout=t_dropout,
                max_positions=t_max_positions, norm_in=t_norm_in, norm_in_group=t_norm_in_group,
                group_norm=t_group_norm, norm_first=t_norm_first, norm_out=t_norm_out,
                max_period=t_max_period, weight_decay=t_weight_decay, lr=t_lr,
                layer_scale=t_layer_scale, gelu=t_gelu, sin_random_shift=t_sin_random_shift,
                weight_pos_embed=t_weight_pos_embed, cape_mean_normalize=t_cape_mean_normalize,
                cape_augment=t_cape_augment, cape_glob_loc_scale=t_cape_glob_loc_scale,
                sparse_self_attn=t_sparse_self_attn, sparse_cross_attn=t_sparse_cross_attn,
                mask_type=t_mask_type, mask_random_seed=t_mask_random_seed,
                sparse_attn_window=t_sparse_attn_window, global_window=t_global_window,
                sparsity=t_sparsity, auto_sparsity=t_auto_sparsity)

    def valid_length(self, length: int) -> int:
        """Length the model should be fed: the training length when `use_train_segment`."""
        if not self.use_train_segment:
            return length
        training_length = int(self.segment * self.samplerate)
        if length > training_length:
            raise ValueError(f"input of {length} samples is longer than the training "
                             f"length {training_length}")
        return training_length

    def _bottleneck(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.crosstransformer is None:
            return x, xt
        if self.bottom_channels:
            # 1x1 convs on the flattened (F * T) axis, to and from the transformer width.
            batch, _, bins, frames = x.shape
            x = self.channel_upsampler(x.flatten(2)).view(batch, -1, bins, frames)
            xt = self.channel_upsampler_t(xt)
        x, xt = self.crosstransformer(x, xt)
        if self.bottom_channels:
            x = self.channel_downsampler(x.flatten(2)).view(batch, -1, bins, frames)
            xt = self.channel_downsampler_t(xt)
        return x, xt

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        original_length = None
        if self.use_train_segment:
            if self.training:
                self.segment = Fraction(length, self.samplerate)
            else:
                training_length = int(self.segment * self.samplerate)
                if length > training_length:
                    raise ValueError(f"input of {length} samples is longer than the training "
                                     f"length {training_length}; split it into segments")
                if length < training_length:
                    original_length = length
                    mix = F.pad(mix, (0, training_length - length))
                length = training_length
        z = self._spectrogram(mix)
        x, mean, std = _standardize(self._network_input(z).to(mix.device), (1, 2, 3))
        batch, _, bins, frames = x.shape
        xt, mean_t, std_t = _standardize(mix, (1, 2))

        x, xt, state = self._encode(x, xt)
        x, xt = self._bottleneck(x, xt)
        x, xt = self._decode(x, xt, state)

        sources = len(self.sources)
        x = x.view(batch, sources, -1, bins, frames) * std[:, None] + mean[:, None]
        device = x.device
        if device.type in ("mps", "xpu"):
            x = x.cpu()
        out = self._waveform(self._output_spectrogram(z, x), length).to(device)
        out = out + xt.view(batch, sources, -1, length) * std_t[:, None] + mean_t[:, None]
        if original_length is not None:
            out = out[..., :original_length]
        return out
