"""What a checkpoint may ask of the machine: the checks on the values a model file sets.

Owns `check_settings` (sources, samplerate, channels and segment, which separation sizes its work
by) and `is_finite_number`. A checkpoint, an official package or a bag file comes from anywhere:
every value that sizes an allocation or a loop is checked here before it is used.

It must not read files or build models; it never prints.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

from torch import nn

from stemsplit.errors import CheckpointError


def is_finite_number(value: Any) -> bool:
    """A real number (a Fraction too: official segments are) that is not a bool and not NaN or
    infinite (YAML's `.nan`, JSON's `Infinity`)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_settings(model: nn.Module, path: Path) -> None:
    """Refuse a model whose sources, rate, channels or segment separation cannot use.

    The constructors store these as given, so a damaged or hand-edited file (samplerate "x",
    segment -3, a source named twice) would load, then fail in the middle of a batch with the
    blame on an audio file, or write two stems to one file.
    """
    sources = model.sources
    if not (isinstance(sources, (list, tuple)) and sources and all(isinstance(s, str) and s for s in sources)
            and len(set(sources)) == len(sources)):
        raise CheckpointError(f"{path}: sources must be distinct non-empty names, got {sources!r}")
    for name in ("samplerate", "audio_channels"):
        value = getattr(model, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"{path}: {name} must be a positive integer, got {value!r}")
    segment = model.segment
    if not (is_finite_number(segment) and segment > 0):
        raise CheckpointError(f"{path}: segment must be a positive number of seconds, got {segment!r}")
