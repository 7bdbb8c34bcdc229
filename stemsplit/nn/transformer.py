"""The cross-domain transformer at the bottleneck of Hybrid Transformer Demucs (v4).

Owns: multi-head attention on `scaled_dot_product_attention` (dense, or restricted by a fixed
sparsity pattern; head by head with plain matrix products for bfloat16 on the CPU), self- and
cross-attention layers, and `CrossTransformerEncoder`, which alternates them over the spectrogram
tokens and the waveform tokens (positions.py holds their positional embeddings). Tensors are batch-first: (B, tokens, channels).
Constructor keywords and state_dict keys match demucs 4.1.0's `CrossTransformerEncoder`.
Must not: know about convolutions, STFTs or the U-Nets around it.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from stemsplit.errors import ModelError
from stemsplit.nn.layers import LayerScale
from stemsplit.nn.positions import LearntPositions, cape_embedding, sin_embedding, sin_embedding_2d

Activation = Callable[[torch.Tensor], torch.Tensor]


# -- sparsity patterns -----------------------------------------------------------------------

def _pattern(kind: str, queries: int, keys: int, window: int, global_window: int, seed: int,
             sparsity: float) -> torch.Tensor:
    """One elementary attention pattern, (queries, keys) bool, True where attention is allowed."""
    if kind == "global":
        mask = torch.zeros(queries, keys, dtype=torch.bool)
        mask[:, :global_window] = True
        mask[:int(global_window * queries / keys), :] = True
        return mask
    if kind == "diag":
        # A band of +-window keys around the query's proportional position.
        rows = torch.arange(queries)[:, None]
        cols = (keys / queries * rows + torch.arange(-window, window + 1)).long()
        cols = cols.clamp(0, keys - 1)
        mask = torch.zeros(queries, keys, dtype=torch.bool)
        return mask.scatter(1, cols, True)
    if kind == "jmask":
        # Offsets at triangular numbers: dense near the diagonal, sparser further away.
        rows = torch.arange(queries + 2)[:, None]
        steps = torch.arange(0, int((2 * keys) ** 0.5 + 1))
        steps = (steps * (steps + 1) / 2).int()
        steps = torch.cat([-steps.flip(0)[:-1], steps])
        cols = (keys / queries * rows + steps).long().clamp(0, keys + 1)
        mask = torch.zeros(queries + 2, keys + 2, dtype=torch.bool).scatter(1, cols, True)
        return mask[1:-1, 1:-1]
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(keys * queries, generator=generator).reshape(queries, keys) > sparsity
    raise ModelError(f"unknown attention mask type {kind!r} (use diag, jmask, random, global)")


@functools.lru_cache(maxsize=16)
def sparse_pattern(queries: int, keys: int, mask_type: str, window: int, global_window: int,
                   seed: int, sparsity: float) -> torch.Tensor:
    """Union of the '_'-separated elementary patterns in `mask_type`: (queries, keys) bool."""
    patterns = [_pattern(kind, queries, keys, window, global_window, seed, sparsity)
                for kind in mask_type.split("_")]
    return torch.stack(patterns).any(dim=0)


# -- attention -------------------------------------------------------------------------------

def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
            mask: torch.Tensor | None, dropout: float) -> torch.Tensor:
    """Multi-head attention core on projected (B, N, C) tensors."""
    batch, n_q, dim = q.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, t.shape[1], heads, dim // heads).transpose(1, 2)

    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and mask is None and not dropout:
        out = _attend_by_head(split(q), split(k), split(v))
    else:
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask,
                                             dropout_p=dropout)
    return out.transpose(1, 2).reshape(batch, n_q, dim)


def _attend_by_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention, one head at a time, for bfloat16 on the CPU.

    There the fused flash kernel is about 2.5x slower than two bf16 matrix products per head;
    going head by head keeps the score matrix small (tokens^2, not heads x tokens^2).
    """
    scale = q.shape[-1] ** -0.5
    heads = [torch.matmul(torch.matmul(q[:, h] * scale, k[:, h].transpose(-1, -2)).softmax(-1),
                          v[:, h]) for h in range(q.shape[1])]
    return torch.stack(heads, dim=1)


class PackedAttention(nn.Module):
    """Multi-head attention with the parameter layout of torch's nn.MultiheadAttention
    (one packed input projection), computed with scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        out = _attend(F.linear(query, w_q, b_q), F.linear(memory, w_k, b_k),
                      F.linear(memory, w_v, b_v), self.heads, mask,
                      self.dropout if self.training else 0.0)
        return self.out_proj(out)


class SplitAttention(nn.Module):
    """Multi-head attention with separate q/k/v/proj linears: the layout of the sparse variant."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        out = _attend(self.q(query), self.k(memory), self.v(memory), self.heads, mask,
                      self.dropout if self.training else 0.0)
        return self.proj(out)


class ChannelLastGroupNorm(nn.GroupNorm):
    """GroupNorm for (B, T, C) tensors: with one group it normalises over all T and C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _token_norm(dim: int, group_norm: int, eps: float) -> nn.Module:
    if group_norm:
        return ChannelLastGroupNorm(int(group_norm), dim, eps=eps)
    return nn.LayerNorm(dim, eps=eps)


class _AttentionLayerBase(nn.Module):
    """Feed-forward, LayerScales, dropout and the optional sparsity pattern shared by both
    layer kinds. Subclasses add the attention module and the norms."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, activation: Activation,
                 layer_scale: bool, init_values: float, norm_first: bool, norm_out: bool,
                 sparse: bool, mask_type: str, mask_random_seed: int, sparse_attn_window: int,
                 global_window: int, sparsity: float, auto_sparsity: bool) -> None:
        super().__init__()
        if sparse and auto_sparsity:
            raise ModelError("transformer auto_sparsity needs xformers' experimental LSH "
                             "attention kernels, which stemsplit does not implement")
        self.sparse = sparse
        self.mask_type = mask_type
        self.mask_random_seed = mask_random_seed
        self.sparse_attn_window = sparse_attn_window
        self.global_window = global_window
        self.sparsity = sparsity
        self.norm_first = norm_first
        self.activation = activation
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.gamma_1 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.norm_out = None
        if norm_first and norm_out:
            self.norm_out = ChannelLastGroupNorm(int(norm_out), d_model)

    def _attention(self, dim: int, heads: int, dropout: float) -> nn.Module:
        return SplitAttention(dim, heads, dropout) if self.sparse else PackedAttention(
            dim, heads, dropout)

    def _mask(self, queries: int, keys: int, device: torch.device) -> torch.Tensor | None:
        if not self.sparse:
            return None
        pattern = sparse_pattern(queries, keys, self.mask_type, self.sparse_attn_window,
                                 self.global_window, self.mask_random_seed, self.sparsity)
        return pattern.to(device)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class SelfAttentionLayer(_AttentionLayerBase):
    """Transformer encoder layer (pre- or post-norm) with LayerScale; keys as torch's
    nn.TransformerEncoderLayer (`self_attn`, `linear1/2`, `norm1/2`) plus `gamma_*`, `norm_out`."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: Activation = F.relu, group_norm: int = 0,
                 norm_first: bool = False, norm_out: bool = False, layer_norm_eps: float = 1e-5,
                 layer_scale: bool = False, init_values: float = 1e-4, sparse: bool = False,
                 mask_type: str = "diag", mask_random_seed: int = 42,
                 sparse_attn_window: int = 500, global_window: int = 50,
                 auto_sparsity: bool = False, sparsity: float = 0.95) -> None:
        super().__init__(d_model, dim_feedforward, dropout, activation, layer_scale, init_values,
                         norm_first, norm_out, sparse, mask_type, mask_random_seed,
                         sparse_attn_window, global_window, sparsity, auto_sparsity)
        self.self_attn = self._attention(d_model, nhead, dropout)
        self.norm1 = _token_norm(d_model, group_norm, layer_norm_eps)
        self.norm2 = _token_norm(d_model, group_norm, layer_norm_eps)

    def _self_attention(self, x: torch.Tensor) -> torch.Tensor:
        mask = self._mask(x.shape[1], x.shape[1], x.device)
        return self.dropout1(self.self_attn(x, x, mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.gamma_1(self._self_attention(self.norm1(x)))
            x = x + self.gamma_2(self._feed_forward(self.norm2(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
            return x
        x = self.norm1(x + self.gamma_1(self._self_attention(x)))
        return self.norm2(x + self.gamma_2(self._feed_forward(x)))


class CrossAttentionLayer(_AttentionLayerBase):
    """Like `SelfAttentionLayer`, but queries come from one branch and keys/values from the
    other (`cross_attn`; `norm2` normalises the other branch in pre-norm mode)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: Activation = F.relu,
                 layer_norm_eps: float = 1e-5, layer_scale: bool = False,
                 init_values: float = 1e-4, norm_first: bool = False, group_norm: int = 0,
                 norm_out: bool = False, sparse: bool = False, mask_type: str = "diag",
                 mask_random_seed: int = 42, sparse_attn_window: int = 500,
                 global_window: int = 50, sparsity: float = 0.95,
                 auto_sparsity: bool = False) -> None:
        super().__init__(d_model, dim_feedforward, dropout, activation, layer_scale, init_values,
                         norm_first, norm_out, sparse, mask_type, mask_random_seed,
                         sparse_attn_window, global_window, sparsity, auto_sparsity)
        self.cross_attn = self._attention(d_model, nhead, dropout)
        self.norm1 = _token_norm(d_model, group_norm, layer_norm_eps)
        self.norm2 = _token_norm(d_model, group_norm, layer_norm_eps)
        self.norm3 = _token_norm(d_model, group_norm, layer_norm_eps)

    def _cross_attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        mask = self._mask(q.shape[1], k.shape[1], q.device)
        return self.dropout1(self.cross_attn(q, k, mask))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = q + self.gamma_1(self._cross_attention(self.norm1(q), self.norm2(k)))
            x = x + self.gamma_2(self._feed_forward(self.norm3(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
            return x
        x = self.norm1(q + self.gamma_1(self._cross_attention(q, k)))
        return self.norm2(x + self.gamma_2(self._feed_forward(x)))


class CrossTransformerEncoder(nn.Module):
    """Two parallel token stacks, spectrogram (`layers`) and waveform (`layers_t`).

    Layers alternate between self-attention within each stack and cross-attention where each
    stack queries the other (cross first when `cross_first`). Spectrogram tokens get a 2D
    sinusoidal embedding over (frequency, time), waveform tokens a 1D one (`emb`: "sin",
    "cape" or "scaled").
    """

    def __init__(self, dim: int, emb: str = "sin", hidden_scale: float = 4.0,
                 num_heads: int = 8, num_layers: int = 6, cross_first: bool = False,
                 dropout: float = 0.0, max_positions: int = 1000, norm_in: bool = True,
                 norm_in_group: bool = False, group_norm: int = False,
                 norm_first: bool = False, norm_out: bool = False, max_period: float = 10000.0,
                 weight_decay: float = 0.0, lr: float | None = None, layer_scale: bool = False,
                 gelu: bool = True, sin_random_shift: int = 0, weight_pos_embed: float = 1.0,
                 cape_mean_normalize: bool = True, cape_augment: bool = True,
                 cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4),
                 sparse_self_attn: bool = False, sparse_cross_attn: bool = False,
                 mask_type: str = "diag", mask_random_seed: int = 42,
                 sparse_attn_window: int = 500, global_window: int = 50,
                 auto_sparsity: bool = False, sparsity: float = 0.95) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer width {dim} is not divisible by {num_heads} heads")
        if emb not in ("sin", "cape", "scaled"):
            raise ModelError(f"unknown positional embedding {emb!r} (use sin, cape or scaled)")
        self.num_layers = num_layers
        # Layers at this parity are self-attention, the others cross-attention.
        self.classic_parity = 1 if cross_first else 0
        self.emb = emb
        self.max_period = max_period
        self.weight_decay = weight_decay
        self.lr = lr
        self.weight_pos_embed = weight_pos_embed
        self.sin_random_shift = sin_random_shift
        self.cape_mean_normalize = cape_mean_normalize
        self.cape_augment = cape_augment
        self.cape_glob_loc_scale = list(cape_glob_loc_scale)
        if emb == "scaled":
            self.position_embeddings = LearntPositions(max_positions, dim, scale=0.2)

        if norm_in:
            self.norm_in: nn.Module = nn.LayerNorm(dim)
            self.norm_in_t: nn.Module = nn.LayerNorm(dim)
        elif norm_in_group:
            self.norm_in = ChannelLastGroupNorm(int(norm_in_group), dim)
            self.norm_in_t = ChannelLastGroupNorm(int(norm_in_group), dim)
        else:
            self.norm_in = nn.Identity()
            self.norm_in_t = nn.Identity()

        common = dict(d_model=dim, nhead=num_heads, dim_feedforward=int(dim * hidden_scale),
                      dropout=dropout, activation=F.gelu if gelu else F.relu,
                      group_norm=group_norm, norm_first=norm_first, norm_out=norm_out,
                      layer_scale=layer_scale, mask_type=mask_type,
                      mask_random_seed=mask_random_seed, sparse_attn_window=sparse_attn_window,
                      global_window=global_window, sparsity=sparsity,
                      auto_sparsity=auto_sparsity)
        self.layers = nn.ModuleList()
        self.layers_t = nn.ModuleList()
        for index in range(num_layers):
            for stack in (self.layers, self.layers_t):
                if index % 2 == self.classic_parity:
                    stack.append(SelfAttentionLayer(sparse=sparse_self_attn, **common))
                else:
                    stack.append(CrossAttentionLayer(sparse=sparse_cross_attn, **common))

    def _positions_1d(self, length: int, batch: int, dim: int,
                      device: torch.device) -> torch.Tensor:
        """(length, batch or 1, dim) embedding for the waveform tokens."""
        if self.emb == "sin":
            shift = random.randrange(self.sin_random_shift + 1)
            return sin_embedding(length, dim, shift=shift, device=device,
                                 max_period=self.max_period)
        if self.emb == "cape":
            augment = self.training and self.cape_augment
            global_shift, local_shift, scale = self.cape_glob_loc_scale
            return cape_embedding(length, dim, batch, mean_normalize=self.cape_mean_normalize,
                                  augment=augment, max_global_shift=global_shift,
                                  max_local_shift=local_shift, max_scale=scale, device=device,
                                  max_period=self.max_period)
        return self.position_embeddings(torch.arange(length, device=device))[:, None]

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, F, T1) spectrogram features, xt: (B, C, T2) waveform features."""
        batch, dim, bins, frames = x.shape
        # Tokens ordered time-major: token index = t * F + f.
        grid = sin_embedding_2d(dim, bins, frames, x.device, self.max_period)
        grid = grid.permute(0, 3, 2, 1).reshape(1, frames * bins, dim)
        x = x.permute(0, 3, 2, 1).reshape(batch, frames * bins, dim)
        x = self.norm_in(x) + self.weight_pos_embed * grid

        steps = xt.shape[-1]
        xt = xt.transpose(1, 2)
        line = self._positions_1d(steps, batch, dim, xt.device).transpose(0, 1)
        xt = self.norm_in_t(xt) + self.weight_pos_embed * line

        for index in range(self.num_layers):
            if index % 2 == self.classic_parity:
                x = self.layers[index](x)
                xt = self.layers_t[index](xt)
            else:
                x, xt = self.layers[index](x, xt), self.layers_t[index](xt, x)

        x = x.reshape(batch, frames, bins, dim).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)

    def make_optim_group(self) -> dict[str, Any]:
        """Optimizer parameter group with the transformer's own weight decay / learning rate."""
        group: dict[str, Any] = {"params": list(self.parameters()),
                                 "weight_decay": self.weight_decay}
        if self.lr is not None:
            group["lr"] = self.lr
        return group
