"""The resumable training state: everything besides the model checkpoint that a run needs to
continue exactly where it stopped (live weights, optimiser, schedule, EMA, RNG, step, best score).

Owns: writing it atomically and reading it back without executing code: torch.save for writing,
torch.load(weights_only=True) for reading (only tensors and plain containers are accepted).
Must not: decide what goes in it (the trainer does).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stemsplit.atomic import atomic_path
from stemsplit.errors import CheckpointError


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` through a temporary file in the same folder and an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any]:
    """Read a state written by `save_state`; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from exc
