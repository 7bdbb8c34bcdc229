"""Bags of models: several separation models whose estimates are averaged per source.

A bag looks like a single model (`samplerate`, `audio_channels`, `sources`, `segment`) and adds
`models` and per-model per-source `weights`. The estimate for source s is
`sum_i w[i][s] * model_i(mix)[s] / sum_i w[i][s]`, as in the official Demucs bags.

The Separator applies bags member by member (each member through its own segmenting), skips
the members whose weights are zero for every requested stem and merges their outputs with these
weights itself. `members_for` and `combine` state the same rules on whole tensors, and `forward`
uses them to run a bag on a whole tensor at once, for tests and short inputs.
This module owns no file formats (see `checkpoint`) and does no segmenting (see `separate`).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from stemsplit.errors import ModelError

Seconds = Union[float, Fraction]


def has_fixed_segment(model: nn.Module) -> bool:
    """True for models that must see exactly their training length (HTDemucs with
    `use_train_segment`, as every released one is): they pad shorter input and refuse longer.

    The one test of this, for bag overrides and for the separation engine alike.
    """
    return bool(getattr(model, "use_train_segment", False))


def override_segment(model: nn.Module, segment: Seconds) -> None:
    """Apply a bag-level segment to a member, as official bags do.

    A member with a fixed segment (HTDemucs) cannot take longer inputs, so it only ever gets a
    shorter segment; others take any segment.
    """
    if not has_fixed_segment(model) or segment <= model.segment:
        model.segment = segment


class BagOfModels(nn.Module):
    """Models with the same sources, samplerate and channels, averaged with per-source weights.

    `segment` (seconds), when given, overrides the members' segments in place (see
    `override_segment`); it is kept as `segment_override` so the bag can be saved again.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        weights: Optional[Sequence[Sequence[float]]] = None,
        segment: Optional[Seconds] = None,
    ) -> None:
        super().__init__()
        if not models:
            raise ModelError("a bag of models needs at least one model")
        first = models[0]
        for index, other in enumerate(models):
            if isinstance(other, BagOfModels):
                raise ModelError(f"bag member {index} is itself a bag; bags cannot be nested")
            for attribute in ("sources", "samplerate", "audio_channels"):
                if _as_list(getattr(other, attribute)) != _as_list(getattr(first, attribute)):
                    raise ModelError(
                        f"bag member {index} has {attribute} {getattr(other, attribute)!r}, "
                        f"member 0 has {getattr(first, attribute)!r}"
                    )
        sources = list(first.sources)
        if weights is None:
            weights = [[1.0] * len(sources) for _ in models]
        if len(weights) != len(models) or any(len(row) != len(sources) for row in weights):
            raise ModelError(
                f"bag weights must be {len(models)} rows (one per model) of {len(sources)} numbers (one per source)"
            )
        rows = [[float(w) for w in row] for row in weights]
        if not all(0 <= w < math.inf for row in rows for w in row):  # NaN fails too: it would poison the average
            raise ModelError("bag weights must be finite and not negative")
        for index, source in enumerate(sources):
            if all(row[index] == 0 for row in rows):
                raise ModelError(f"bag weights are zero for source {source!r} in every model")
        if segment is not None:
            for member in models:
                override_segment(member, segment)
        self.models = nn.ModuleList(models)
        self.weights: List[List[float]] = rows
        self.segment_override: Optional[Seconds] = segment
        self.sources: List[str] = sources
        self.samplerate: int = first.samplerate
        self.audio_channels: int = first.audio_channels

    @property
    def segment(self) -> Seconds:
        """The longest segment every member can take: the shortest member segment."""
        return min(member.segment for member in self.models)

    def members_for(self, sources: Optional[Iterable[str]] = None) -> List[int]:
        """Indices of the members that contribute to any of `sources` (all sources if None).

        A member whose weight is zero for every requested source would not change the result,
        so it need not run: htdemucs_ft asked for vocals only runs one model of four.
        """
        wanted = self.source_indices(sources)
        return [i for i, row in enumerate(self.weights) if any(row[s] != 0 for s in wanted)]

    def source_indices(self, sources: Optional[Iterable[str]] = None) -> List[int]:
        """Positions of `sources` in `self.sources` (all of them if None)."""
        if sources is None:
            return list(range(len(self.sources)))
        indices = []
        for name in sources:
            if name not in self.sources:
                raise ModelError(f"unknown source {name!r}; this model has {', '.join(self.sources)}")
            indices.append(self.sources.index(name))
        return indices

    def combine(self, estimates: Sequence[Tuple[int, torch.Tensor]]) -> torch.Tensor:
        """Weighted per-source average of member outputs.

        `estimates` holds (member index, output (B, S, C, T)) pairs, usually for the members in
        `members_for(...)`. Sources that none of the given members contributes to come out as
        zeros (they were not requested).
        """
        if not estimates:
            raise ModelError("no member estimates to combine")
        total = None
        norm = torch.zeros(len(self.sources), dtype=torch.float64)
        for index, estimate in estimates:
            weight = torch.tensor(self.weights[index], dtype=torch.float64)
            scaled = estimate * weight.to(estimate.dtype).to(estimate.device)[:, None, None]
            total = scaled if total is None else total + scaled
            norm += weight
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        return total / safe.to(total.dtype).to(total.device)[:, None, None]

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Run every contributing member on the whole of `mix` (B, C, T) -> (B, S, C, T)."""
        return self.combine([(index, self.models[index](mix)) for index in self.members_for()])


def _as_list(value: object) -> object:
    """Compare sequences by content whatever their container type."""
    return list(value) if isinstance(value, (list, tuple)) else value
