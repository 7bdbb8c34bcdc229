"""The separation plan: what runs where, and with which weight.

Owns every rule that decides the work of a separation before any sample is computed: the one
check of requested stem names, bag member choice and per-source bag weighting (a member whose
weights are zero for every requested stem is skipped), each member's segment length, the segment
grid and the random shifts. The rules follow the reference `demucs.apply.apply_model` (same grid,
same shifts for a seed, same weights). A "lane" is one pass of one member at one shift.
Must not: run models, touch samples, read files or print (see `engine.separator`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn

from stemsplit.errors import ModelError, SettingsError
from stemsplit.nn.bag import has_fixed_segment, is_bag


@dataclass(frozen=True)
class LanePlan:
    """One pass of `member` over the track delayed by `delay` zero samples.

    Lane sample u is track sample u - delay; segments of `segment` samples start at `offsets` (lane
    positions). `scale[i]` is this lane's weight in the final average of the i-th requested stem.
    `pad_to` is the fixed input length of a model that must see exactly that many samples.
    """

    member: nn.Module
    delay: int
    length: int
    segment: int
    pad_to: Optional[int]
    offsets: list[int]
    scale: list[float]


def source_indices(sources: Sequence[str], requested: Optional[Sequence[str]], param: str = "sources") -> list[int]:
    """Positions of the `requested` stems among a model's `sources` (all of them for None).

    The one check of stem names: SettingsError naming `param` for a stem the model lacks.
    """
    if requested is None:
        return list(range(len(sources)))
    unknown = [s for s in requested if s not in sources]
    if unknown:
        raise SettingsError(param, f"names unknown stem(s) {', '.join(unknown)}; this model has {', '.join(sources)}")
    return [list(sources).index(s) for s in requested]


def members(model: nn.Module) -> list[nn.Module]:
    """The models that make up `model`: a bag's members, or the model itself."""
    return list(model.models) if is_bag(model) else [model]


def member_weights(model: nn.Module) -> list[list[float]]:
    """Per member, per source weights: a bag's own, or 1 for a single model."""
    if is_bag(model):
        return [[float(w) for w in row] for row in model.weights]
    return [[1.0] * len(model.sources)]


def contributing(model: nn.Module, wanted: Sequence[int]) -> list[int]:
    """Indices of the members whose weight is not zero for some wanted source: only they run
    (htdemucs_ft asked for vocals alone runs one model of four)."""
    return [i for i, row in enumerate(member_weights(model)) if any(row[k] != 0 for k in wanted)]


def member_seconds(member: nn.Module, segment: Optional[float], overlap: float) -> float:
    """The segment a member runs with: `segment`, or the member's own; SettingsError when it is
    longer than a fixed-length member takes, or leaves no sample between segments."""
    limit = float(member.segment)
    if segment is not None and has_fixed_segment(member) and segment > limit:
        raise SettingsError("segment", f"{segment} s is longer than the {limit:.2f} s this model was trained on; "
                                       "choose a smaller one")
    seconds = limit if segment is None else segment
    samples = int(min(member.samplerate * seconds, 2.0**62))  # (the grid's own cap is far above this)
    if int((1 - overlap) * samples) < 1:
        raise SettingsError("segment", f"{seconds} s with overlap {overlap} leaves no sample between segments; "
                                       "raise the segment or lower the overlap")
    return seconds


def shift_delays(rng: random.Random, shifts: int, samplerate: int) -> list[int]:
    """The delays (in samples) of `shifts` randomly shifted passes, up to half a second; [0] for none."""
    max_shift = int(0.5 * samplerate)
    return [max_shift - rng.randint(0, max_shift) for _ in range(shifts)] or [0]


def plan_lanes(model: nn.Module, wanted: Sequence[int], length: int, *, segment: Optional[float], overlap: float,
               shifts: int, seed: int) -> list[LanePlan]:
    """Every lane needed to separate `length` samples into the `wanted` sources of `model`."""
    weights = member_weights(model)
    sources = list(model.sources)
    totals = [sum(row[k] for row in weights) for k in range(len(sources))]
    for k in wanted:
        if totals[k] == 0:
            raise ModelError(f"no model in the bag predicts {sources[k]!r} (all its weights are zero)")
    samplerate = int(model.samplerate)
    max_shift = int(0.5 * samplerate)
    used = set(contributing(model, wanted))
    rng = random.Random(seed)
    lanes = []
    for index, (member, row) in enumerate(zip(members(model), weights)):
        samples = samplerate * member_seconds(member, segment, overlap)
        if not has_fixed_segment(member):  # (a fixed one is never longer than its training length)
            # From the length whose stride passes the end of the longest lane on, a longer segment
            # only adds zero padding to one segment over the whole lane: stop there, so that an
            # absurd segment (1e9, inf) neither overflows nor costs memory; never below the
            # member's own segment, so that default runs pad exactly as the reference does.
            whole = math.ceil((length + max_shift) / (1 - overlap)) + 1
            samples = min(samples, max(whole, samplerate * float(member.segment)))
        seg = int(samples)
        stride = int((1 - overlap) * seg)  # (at least 1: member_seconds checked it)
        # every member draws its shifts, even a skipped one, so that a seed means the same shifts
        delays = shift_delays(rng, shifts, samplerate)
        if index not in used:
            continue
        scale = [row[k] / totals[k] / len(delays) for k in wanted]
        pad_to = seg if (segment is not None and has_fixed_segment(member)) else None
        for delay in delays:
            lane_length = length + delay
            # segments that end before the track starts (inside the shift prefix) add nothing
            offsets = [o for o in range(0, lane_length, stride) if o + seg > delay]
            lanes.append(LanePlan(member, delay, lane_length, seg, pad_to, offsets, scale))
    return lanes
