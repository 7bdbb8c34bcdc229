"""Building blocks shared by the Demucs-family networks.

Owns: LayerScale, PointwiseConv1d (kernel-1 convolutions as batched matrix products), BLSTM
(bidirectional LSTM run on overlapping windows), LocalState (the decaying local attention of
DConv), DConv (the dilated residual branch), ScaledEmbedding (the frequency embedding), the
initial weight rescaling, `center_trim`, and `records_init_kwargs`.
Attribute names of modules holding parameters follow the official Demucs checkpoints, because
state_dict keys are derived from them.
Must not: know about whole models, STFTs or checkpoint files.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from typing import Any, Callable, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

InitFn = TypeVar("InitFn", bound=Callable[..., None])


def records_init_kwargs(init: InitFn) -> InitFn:
    """Store the constructor arguments (defaults filled in) as `self.init_kwargs`.

    Checkpoints save these so a model can be rebuilt from its file alone.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        recorded = {name: copy.deepcopy(value) for name, value in bound.arguments.items()}
        recorded.pop("self")
        self.init_kwargs = recorded

    return wrapper  # type: ignore[return-value]


def center_trim(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Crop the last axis to `length` samples around its centre (odd surplus goes on the right)."""
    surplus = tensor.shape[-1] - length
    if surplus < 0:
        raise ValueError(f"cannot trim {tensor.shape[-1]} samples to {length}")
    left = surplus // 2
    return tensor[..., left:left + length]


def rescale_module(module: nn.Module, reference: float) -> None:
    """Scale every convolution so its weight std moves towards `reference` (sqrt of the ratio).

    Part of the Demucs recipe: it makes freshly initialised networks train much better.
    """
    conv_types = (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, conv_types):
                factor = (sub.weight.std() / reference) ** 0.5
                sub.weight.div_(factor)
                if sub.bias is not None:
                    sub.bias.div_(factor)


class LayerScale(nn.Module):
    """Learnt per-channel gain on a residual branch, started near zero (Touvron et al. 2021)."""

    def __init__(self, channels: int, init: float = 0.0, channel_last: bool = False) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_last:
            return self.scale * x
        return self.scale[:, None] * x


class PointwiseConv1d(nn.Conv1d):
    """`nn.Conv1d(chin, chout, 1)` (same parameters, same state_dict keys, same initialisation)
    computed as one batched matrix product.

    The DConv branches of the frequency layers run on every frequency row as a separate item:
    hundreds of short rows with a handful of channels, where the CPU convolution kernel is
    several times slower than `baddbmm`; for large inputs the two are equally fast.
    """

    def __init__(self, chin: int, chout: int) -> None:
        super().__init__(chin, chout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            return super().forward(x)
        batch, _, steps = x.shape
        weight = self.weight[:, :, 0].expand(batch, -1, -1)
        if self.bias is None:
            return torch.bmm(weight, x)
        return torch.baddbmm(self.bias[:, None].expand(batch, -1, steps), weight, x)


class BLSTM(nn.Module):
    """Bidirectional LSTM with a linear projection back to `dim` channels, on (B, C, T).

    With `max_steps`, long inputs are cut into half-overlapping windows so the recurrence stays
    short; each window keeps only its central part (plus the outer edges of the first and last).
    """

    def __init__(self, dim: int, layers: int = 1, max_steps: int | None = None,
                 skip: bool = False) -> None:
        super().__init__()
        if max_steps is not None and max_steps % 4:
            raise ValueError("max_steps must be a multiple of 4")
        self.max_steps = max_steps
        self.skip = skip
        self.lstm = nn.LSTM(input_size=dim, hidden_size=dim, num_layers=layers,
                            bidirectional=True)
        self.linear = nn.Linear(2 * dim, dim)

    def _recur(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(x.permute(2, 0, 1))
        return self.linear(hidden).permute(1, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, steps = x.shape
        if self.max_steps is None or steps <= self.max_steps:
            out = self._recur(x)
        else:
            width = self.max_steps
            hop = width // 2
            margin = hop // 2
            count = math.ceil(steps / hop)
            padded = F.pad(x, (0, (count - 1) * hop + width - steps))
            windows = padded.unfold(-1, width, hop).permute(0, 2, 1, 3)
            windows = windows.reshape(batch * count, channels, width)
            done = self._recur(windows).reshape(batch, count, channels, width)
            pieces = [done[:, 0, :, :width - margin]]
            pieces += [done[:, k, :, margin:width - margin] for k in range(1, count - 1)]
            pieces.append(done[:, count - 1, :, margin:])
            out = torch.cat(pieces, dim=-1)[..., :steps]
        return out + x if self.skip else out


class LocalState(nn.Module):
    """Content-based attention over time with a learnt, per-query decay of distant steps.

    There is no positional embedding: locality comes from the `ndecay` decay penalties, mixed per
    head and per query. A step never attends to itself (its logit is pinned very low).
    """

    def __init__(self, channels: int, heads: int = 4, ndecay: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} heads")
        self.heads = heads
        self.ndecay = ndecay
        self.content = PointwiseConv1d(channels, channels)
        self.query = PointwiseConv1d(channels, channels)
        self.key = PointwiseConv1d(channels, channels)
        if ndecay:
            self.query_decay = PointwiseConv1d(channels, heads * ndecay)
            with torch.no_grad():
                # Sigmoid of about -2: small decays, so the window starts wide.
                self.query_decay.weight.mul_(0.01)
                self.query_decay.bias.fill_(-2.0)
        self.proj = PointwiseConv1d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, steps = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            # (B, C, T) -> (B, heads, C // heads, T)
            return t.view(batch, self.heads, -1, steps)

        queries, keys = split_heads(self.query(x)), split_heads(self.key(x))
        # logits[b, h, query, key]
        logits = torch.einsum("bhcq,bhck->bhqk", queries, keys) / queries.shape[2] ** 0.5
        if self.ndecay:
            positions = torch.arange(steps, device=x.device, dtype=x.dtype)
            distance = (positions[:, None] - positions[None, :]).abs()
            rates = torch.arange(1, self.ndecay + 1, device=x.device, dtype=x.dtype)
            penalties = -rates[:, None, None] * distance / self.ndecay ** 0.5  # (D, Tq, Tk)
            mix = torch.sigmoid(self.query_decay(x).view(batch, self.heads, self.ndecay, steps)) / 2
            logits = logits + torch.einsum("bhdq,dqk->bhqk", mix, penalties)
        # The own-step logit is replaced, not offset: added to a large query-key product, -100
        # would not keep a step from attending to itself.
        logits = logits.masked_fill(torch.eye(steps, device=x.device, dtype=torch.bool), -100.0)
        attended = torch.einsum("bhqk,bhck->bhcq", logits.softmax(dim=-1),
                                split_heads(self.content(x)))
        return x + self.proj(attended.reshape(batch, channels, steps))


class DConv(nn.Module):
    """Residual branch of dilated convolutions, added inside every encoder/decoder layer.

    Each of the `depth` sub-blocks: conv (dilation 2**d) to `channels / compress`, norm, GELU,
    optional BLSTM and LocalState, 1x1 conv to 2*channels, norm, GLU, LayerScale. A negative
    `depth` means |depth| sub-blocks without dilation.
    """

    def __init__(self, channels: int, compress: float = 4, depth: int = 2, init: float = 1e-4,
                 norm: bool = True, attn: bool = False, heads: int = 4, ndecay: int = 4,
                 lstm: bool = False, gelu: bool = True, kernel: int = 3,
                 dilate: bool = True) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError("DConv kernel must be odd")
        dilated = dilate and depth > 0
        hidden = int(channels / compress)

        def make_norm(dim: int) -> nn.Module:
            return nn.GroupNorm(1, dim) if norm else nn.Identity()

        self.layers = nn.ModuleList()
        for index in range(abs(depth)):
            dilation = 2 ** index if dilated else 1
            block: list[nn.Module] = [
                nn.Conv1d(channels, hidden, kernel, dilation=dilation,
                          padding=dilation * (kernel // 2)),
                make_norm(hidden),
                nn.GELU() if gelu else nn.ReLU(),
            ]
            # Sequential positions are checkpoint keys: the LSTM comes before the attention.
            if lstm:
                block.append(BLSTM(hidden, layers=2, max_steps=200, skip=True))
            if attn:
                block.append(LocalState(hidden, heads=heads, ndecay=ndecay))
            block += [
                PointwiseConv1d(hidden, 2 * channels),
                make_norm(2 * channels),
                nn.GLU(1),
                LayerScale(channels, init),
            ]
            self.layers.append(nn.Sequential(*block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class ScaledEmbedding(nn.Module):
    """Embedding whose stored weights are divided by `scale` and multiplied back on use.

    This boosts its effective learning rate. With `smooth`, the initial table is a normalised
    running sum of random rows, so neighbouring frequencies start with similar embeddings.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, scale: float = 10.0,
                 smooth: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            table = self.embedding.weight
            if smooth:
                counts = torch.arange(1, num_embeddings + 1, dtype=table.dtype)
                table.copy_(table.cumsum(dim=0) / counts.sqrt()[:, None])
            table.div_(scale)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices) * self.scale
