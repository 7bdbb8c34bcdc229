"""The resumable training state: everything besides the model checkpoint that a run needs to
continue exactly where it stopped (live weights, optimiser, schedule, EMA, RNG, step, best score).

Owns: writing it atomically and reading it back without executing code: torch.save for writing,
torch.load(weights_only=True) for reading (only tensors and plain containers are accepted).
Must not: decide what goes in it (the trainer does).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from stemsplit.atomic import atomic_path
from stemsplit.errors import CheckpointError, one_line


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` through a temporary file in the same folder and an atomic rename.

    A failed write (a full disk) is a CheckpointError naming the file: torch reports it as a
    RuntimeError about zip positions, which reached the user as a traceback.
    """
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except RuntimeError as exc:
        raise CheckpointError(f"cannot write {path}: {one_line(exc)} (is the disk full?)") from exc


def load_state(path: Path) -> dict[str, Any]:
    """Read a state written by `save_state`; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, OSError... for an empty, cut or foreign file
        # torch's refusal of a non-tensor object advises weights_only=False (running the file's code): not passed on
        detail = type(exc).__name__ if isinstance(exc, pickle.UnpicklingError) else one_line(exc)
        raise CheckpointError(f"{path}: not a readable training state, damaged or not written by "
                              f"stemsplit train ({detail})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training state written by stemsplit train")
    return state
