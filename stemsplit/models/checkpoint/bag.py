"""Bag files: several checkpoints averaged per source, described in YAML or JSON.

Owns reading a bag file (`models`: member files relative to the bag, or official signatures found
next to it; optional per-model per-source `weights` and `segment`), finding its members, putting
members together (`assemble`) and writing a bag back (`save_bag`).

It must not parse member checkpoints itself (the caller hands it a loader) and never prints.
Bag files come from anywhere: nothing in one may make this module load a file outside what it
names, or spend memory or time out of proportion to a small text file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from torch import nn

from stemsplit.documents import DocumentError, load_json, load_yaml, read_small_text
from stemsplit.errors import CheckpointError, ModelError, one_line, quote
from stemsplit.models.checkpoint.limits import is_finite_number, segment_problem
from stemsplit.models.checkpoint.native import PathLike, atomic_write, save_checkpoint
from stemsplit.models.resolve import find_signature_file

BAG_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
MAX_MEMBERS = 64
"""The released bags have 4 members; each member is a network loaded and run on every segment."""


def read_bag_file(path: Path) -> Dict[str, Any]:
    """The checked contents of a bag file: `models` (member names), `weights` and `segment`.

    Read within the bounds of `stemsplit.documents` (size, depth, no YAML aliases), and with at
    most `MAX_MEMBERS` members: every member is a model to load and run.
    """
    try:
        text = read_small_text(path)
        document = load_json(text) if path.suffix == ".json" else load_yaml(text)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, DocumentError) as exc:
        raise CheckpointError(f"{path} is not a readable bag file: {one_line(exc)}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), list) or not document["models"]:
        raise CheckpointError(f"{path}: a bag file needs a non-empty 'models' list")
    members = document["models"]
    if len(members) > MAX_MEMBERS:
        raise CheckpointError(f"{path}: 'models' lists {len(members)} members, more than the {MAX_MEMBERS} a bag may have")
    if not all(isinstance(member, (str, int)) and not isinstance(member, bool) and str(member) for member in members):
        raise CheckpointError(f"{path}: 'models' must be a list of file names or signatures")
    weights = document.get("weights")
    segment = document.get("segment")
    if weights is not None and not (
        isinstance(weights, list) and all(isinstance(row, list) for row in weights)
        and all(is_finite_number(w) for row in weights for w in row)
    ):
        raise CheckpointError(f"{path}: 'weights' must be a list of lists of finite numbers")
    if segment is not None:
        problem = segment_problem(segment)
        if problem is not None:
            raise CheckpointError(f"{path}: 'segment' {problem}")
    return {"models": [str(member) for member in members], "weights": weights, "segment": segment}


def resolve_member(folder: Path, entry: str, bag_path: Path) -> Path:
    """Find a bag member: a file path relative to the bag (or absolute), or an official signature
    whose file (`SIG.safetensors`, `SIG.th` or `SIG-HASH.th`) lies in the folder it names."""
    direct = folder / entry
    if os.path.isfile(direct):
        return direct
    # the signature look-up takes a plain name: split off any folders the entry names
    found = find_signature_file(direct.parent, direct.name) if direct.name else None
    if found is not None:
        return found
    name, where = _shown(entry, 40), _shown(str(direct.parent), 100)
    raise CheckpointError(
        f"{bag_path} lists member {quote(entry, 60)} but no file {name}, {name}.safetensors, {name}.th "
        f"or {name}-<hash>.th exists in {where}"
    )


def _shown(text: str, limit: int) -> str:
    """`text` as it is when short and printable, else quoted and cut: it comes from the file."""
    return text if len(text) <= limit and text.isprintable() else quote(text, limit)


def assemble(members: List[nn.Module], weights: Optional[List[List[float]]], segment: Optional[float]) -> nn.Module:
    """A bag of the members, or the member itself when there is only one (same output, simpler
    to run); a bag-level segment is applied to the member as the bag would."""
    from stemsplit.nn.bag import BagOfModels

    bag = BagOfModels(members, weights, segment)  # validates, and applies the segment to members
    return members[0] if len(members) == 1 else bag


def load_bag(path: Path, load_member: Callable[[Path], nn.Module]) -> nn.Module:
    """The bag `path` describes, each member read by `load_member`."""
    spec = read_bag_file(path)
    members = []
    for entry in spec["models"]:
        member_path = resolve_member(path.parent, entry, path)
        if member_path.suffix in BAG_SUFFIXES:
            raise CheckpointError(f"{path}: member {quote(entry)} is itself a bag; bags cannot be nested")
        members.append(load_member(member_path))
    try:
        return assemble(members, spec["weights"], spec["segment"])
    except CheckpointError:
        raise
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def save_bag(bag: nn.Module, path: PathLike) -> List[Path]:
    """Write a bag as a JSON/YAML bag file plus one native checkpoint per member next to it.

    Members are named `<bag stem>.<index>.safetensors`; returns every file written.
    """
    from stemsplit.nn.bag import is_bag

    path = Path(path)
    if not is_bag(bag):
        raise CheckpointError(f"cannot save {path}: a {type(bag).__name__} is not a bag (save it with save_checkpoint)")
    if path.suffix not in BAG_SUFFIXES:
        raise CheckpointError(f"{path}: a bag file must end in one of {', '.join(sorted(BAG_SUFFIXES))}")
    written = []
    names = []
    for index, member in enumerate(bag.models):
        member_path = path.with_name(f"{path.stem}.{index}.safetensors")
        save_checkpoint(member, member_path)
        written.append(member_path)
        names.append(member_path.name)
    document: Dict[str, Any] = {"models": names, "weights": [list(map(float, w)) for w in bag.weights]}
    if bag.segment_override is not None:
        document["segment"] = float(bag.segment_override)
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))
    written.append(path)
    return written
