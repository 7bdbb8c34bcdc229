"""Bags of models: several separation models whose estimates are averaged per source.

A bag looks like a single model (`samplerate`, `audio_channels`, `sources`, `segment`) and adds
`models` and per-model per-source `weights`. The estimate for source s is
`sum_i w[i][s] * model_i(mix)[s] / sum_i w[i][s]`, as in the official Demucs bags.

A bag is a container that checks its members agree: it has no forward pass. Which members run
and how their outputs are weighted is decided by `stemsplit.engine.plan` alone, and the
Separator runs each member through its own segmenting.
This module owns no file formats (see `models.checkpoint`) and does no segmenting (see `engine`).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import List, Optional, Sequence, Union

from torch import nn

from stemsplit.errors import ModelError

Seconds = Union[float, Fraction]


def has_fixed_segment(model: nn.Module) -> bool:
    """True for models that must see exactly their training length (HTDemucs with
    `use_train_segment`, as every released one is): they pad shorter input and refuse longer.

    The one test of this, for bag overrides and for the separation engine alike.
    """
    return bool(getattr(model, "use_train_segment", False))


def is_bag(model: nn.Module) -> bool:
    """True for a bag of models: the one test of it. By its attributes, so that any bag with
    members and per-source weights (the reference's own class too) is run as a bag."""
    return hasattr(model, "models") and hasattr(model, "weights")


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
            if is_bag(other):
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


def _as_list(value: object) -> object:
    """Compare sequences by content whatever their container type."""
    return list(value) if isinstance(value, (list, tuple)) else value
