"""What a model file may ask of the machine: the ranges of every stored value that sizes work.

Owns the bounds on constructor kwargs and model settings read from checkpoints, official
packages, bag files and training configs: the sample rate (a 1-s input at a stored 4410000 Hz
took 6 GB), channels, sources and segment, the widths, depths, strides, kernel and FFT sizes of
the architectures, and the parameter count of a built model. Each range comfortably includes
every released Demucs model (htdemucs, htdemucs_6s, hdemucs_mmi, the mdx bags, demucs v2) and
the tiny models of the tests. A value is checked before it reaches a constructor, so a hostile
file is refused in one line naming the field instead of allocating gigabytes or dividing by zero.

It must not read files or build models; it never prints.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional

from torch import nn

from stemsplit.errors import CheckpointError, quote


class Bound(NamedTuple):
    low: float
    high: float
    integer: bool = True


SAMPLERATE = Bound(8000, 192000)
AUDIO_CHANNELS = Bound(1, 8)
MAX_SOURCES = 32
MAX_SOURCE_NAME = 64  # source names become file names
MAX_SEGMENT = 600.0  # seconds; the released models use 7.8 to 44
MAX_WIDTH = 16384  # channels of the widest layer; the released ones reach 2048 (demucs v2)
MAX_PARAMETERS = 1_000_000_000  # the released models hold 42M (htdemucs) to ~265M (demucs v2)
COMMON_RATES = (44100, 48000)  # input rates every model must be able to resample from

# Constructor kwargs that set a width, a depth, a stride, a kernel or FFT size, a length or a
# count of layers or iterations. Names are shared across Demucs, HDemucs and HTDemucs.
ARCHITECTURE_BOUNDS: Dict[str, Bound] = {
    "channels": Bound(1, 1024),
    "channels_time": Bound(1, 1024),
    "bottom_channels": Bound(0, 4096),
    "growth": Bound(0.5, 4.0, integer=False),
    "depth": Bound(1, 12),
    "lstm_layers": Bound(0, 8),
    "kernel_size": Bound(1, 64),
    "stride": Bound(1, 64),
    "time_stride": Bound(1, 64),
    "context": Bound(0, 64),
    "context_enc": Bound(0, 64),
    "nfft": Bound(16, 65536),
    "wiener_iters": Bound(-1, 16),  # -1: plain masking
    "end_iters": Bound(-1, 16),
    "multi_freqs_depth": Bound(0, 12),
    "norm_starts": Bound(0, 64),
    "norm_groups": Bound(1, 64),
    "dconv_mode": Bound(0, 3),
    "dconv_depth": Bound(0, 16),
    "dconv_comp": Bound(0.25, 64.0, integer=False),
    "dconv_attn": Bound(0, 64),
    "dconv_lstm": Bound(0, 64),
    "t_layers": Bound(0, 32),
    "t_heads": Bound(1, 64),
    "t_hidden_scale": Bound(0.25, 16.0, integer=False),
    "t_max_positions": Bound(1, 100_000),
    "t_sparse_attn_window": Bound(1, 10_000),
    "t_global_window": Bound(0, 10_000),
    "t_sin_random_shift": Bound(0, 100_000),
}
MAX_MULTI_FREQS = 16


def is_finite_number(value: Any) -> bool:
    """A real number (a Fraction too: official segments are) that is not a bool and not NaN or
    infinite (YAML's `.nan`, JSON's `Infinity`)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def value_problem(name: str, value: Any, bound: Bound) -> Optional[str]:
    """What is wrong with `value` for the field `name` (`"samplerate must be ..."`), or None."""
    if bound.integer:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            kind = "a positive integer" if bound.low > 0 else "a whole number"
            return f"{name} must be {kind}, got {quote(value)}"
        if value == 0 and bound.low > 0:
            return f"{name} must be a positive integer, got 0"
    elif not is_finite_number(value):
        return f"{name} must be a finite number, got {quote(value)}"
    if value < 0 <= bound.low:
        return f"{name} {quote(value)} is negative (expected {bound.low}..{bound.high})"
    if not bound.low <= value <= bound.high:
        return f"{name} {quote(value)} is out of range ({bound.low}..{bound.high})"
    return None


def samplerate_problem(value: Any) -> Optional[str]:
    """A rate out of range, or one that audio at the common rates cannot be resampled to (44101 Hz
    would otherwise fail on every input, with the blame on the audio file)."""
    problem = value_problem("samplerate", value, SAMPLERATE)
    if problem is not None:
        return problem
    from stemsplit.audio.resample import irregular_ratio

    for rate in COMMON_RATES:
        if irregular_ratio(rate, int(value)):
            return (f"samplerate {value} is not a usable model rate: audio at {rate} Hz cannot be resampled "
                    "to it (the ratio of the two rates is too irregular)")
    return None


def segment_problem(value: Any) -> Optional[str]:
    """What is wrong with a segment in seconds (`"must be ..."`, to follow the field's name), or None."""
    if not (is_finite_number(value) and value > 0):
        return f"must be a positive number of seconds, got {quote(value)}"
    if value > MAX_SEGMENT:
        return f"{quote(value)} is longer than the {MAX_SEGMENT:g} seconds a model segment may be"
    return None


def sources_problem(value: Any) -> Optional[str]:
    if (isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_SOURCES
            and all(isinstance(s, str) and 0 < len(s) <= MAX_SOURCE_NAME for s in value)
            and len(set(value)) == len(value)):
        return None
    return (f"sources must be distinct non-empty names ({MAX_SOURCES} at most, each at most "
            f"{MAX_SOURCE_NAME} characters), got {quote(value)}")


def _settings_problem(values: Mapping[str, Any]) -> Optional[str]:
    """The first problem among the settings present in `values` (sources, samplerate,
    audio_channels, segment): the values separation sizes its buffers by."""
    if "sources" in values:
        problem = sources_problem(values["sources"])
        if problem is not None:
            return problem
    if "samplerate" in values:
        problem = samplerate_problem(values["samplerate"])
        if problem is not None:
            return problem
    if "audio_channels" in values:
        problem = value_problem("audio_channels", values["audio_channels"], AUDIO_CHANNELS)
        if problem is not None:
            return problem
    if "segment" in values:
        problem = segment_problem(values["segment"])
        if problem is not None:
            return f"segment {problem}"
    return None


def check_kwargs(architecture: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse constructor kwargs out of range, before the constructor sees them."""
    problem = _settings_problem(kwargs)
    if problem is not None:
        raise CheckpointError(problem)
    for name, bound in ARCHITECTURE_BOUNDS.items():
        value = kwargs.get(name)
        if value is not None:  # absent, or None where the constructor takes it (channels_time)
            problem = value_problem(name, value, bound)
            if problem is not None:
                raise CheckpointError(f"cannot build {architecture} from the stored kwargs: {problem}")
    freqs = kwargs.get("multi_freqs")
    if freqs is not None and not (isinstance(freqs, (list, tuple)) and len(freqs) <= MAX_MULTI_FREQS
                                  and all(is_finite_number(f) and 0 < f < 1 for f in freqs)):
        raise CheckpointError(f"cannot build {architecture} from the stored kwargs: multi_freqs must be at most "
                              f"{MAX_MULTI_FREQS} band edges between 0 and 1, got {quote(freqs)}")
    channels, growth, depth = (kwargs.get(name) for name in ("channels", "growth", "depth"))
    if channels is not None and growth is not None and depth is not None:
        widest = channels * max(growth, 1) ** (depth - 1)
        if widest > MAX_WIDTH:
            raise CheckpointError(
                f"cannot build {architecture} from the stored kwargs: {channels} channels growing {growth}x over "
                f"{depth} layers reach {widest:.0f}, more than the {MAX_WIDTH} a layer may have"
            )


def check_settings(model: nn.Module, path: Path) -> None:
    """Refuse a built model whose sources, rate, channels or segment separation cannot use.

    The constructors store these as given, and a native file's own segment replaces the
    constructor's, so a damaged or hand-edited file (samplerate "x", segment -3, a source named
    twice) would load, then fail in the middle of a batch with the blame on an audio file, or
    write two stems to one file.
    """
    values = {name: getattr(model, name) for name in ("sources", "samplerate", "audio_channels", "segment")}
    problem = _settings_problem(values)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")


def check_size(model: nn.Module, path: Path) -> None:
    """Refuse a model (built on the meta device, so nothing is allocated yet) with more
    parameters than any checkpoint stemsplit loads: the ranges above bound each kwarg, this
    bounds their combination."""
    count = sum(parameter.numel() for parameter in model.parameters())
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: the model has {count} parameters, more than the {MAX_PARAMETERS} "
                              "a checkpoint may hold")
