"""Shards of a batch: which of N machines processes which track, and K/N or auto/N from a job array.

Owns the stable track-to-shard hash and the parsing of --shard's value (Slurm and Kubernetes
indices). It must not expand inputs or run tracks (batch.py does), nor import torch.
"""
from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from stemsplit.errors import SettingsError

if TYPE_CHECKING:  # pragma: no cover
    from stemsplit.batch import Track


def select_shard(tracks: Sequence[Track], index: int, count: int) -> list[Track]:
    """The tracks of shard `index` (1-based) of `count`: disjoint shards that cover every track.

    A track's shard is a hash of its path relative to the folder it was found in, so adding
    files to a catalogue never moves the others between shards, and every machine agrees.
    """
    if not 1 <= index <= count:
        raise SettingsError("shard", f"{index}/{count} is not a shard: the index runs from 1 to the count")
    return [t for t in tracks
            if int.from_bytes(hashlib.sha256(t.key.encode("utf-8", "surrogateescape")).digest()[:8], "big")
            % count == index - 1]


def parse_shard(text: str, environ: Optional[Mapping[str, str]] = None) -> tuple[int, int]:
    """`K/N` (1-based) or `auto/N` -> (K, N). `auto` takes the index of a job array task:
    Slurm's SLURM_ARRAY_TASK_ID counted from SLURM_ARRAY_TASK_MIN (so `--array=0-3` and
    `--array=1-4` both work), or Kubernetes' JOB_COMPLETION_INDEX, which counts from 0."""
    environ = os.environ if environ is None else environ
    index_text, sep, count_text = text.partition("/")
    try:
        count = int(count_text)
        if index_text.strip().lower() == "auto":
            if environ.get("SLURM_ARRAY_TASK_ID"):
                index = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN") or 0) + 1
            elif environ.get("JOB_COMPLETION_INDEX"):
                index = int(environ["JOB_COMPLETION_INDEX"]) + 1
            else:
                raise SettingsError("shard", f"{text} needs SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX in the "
                                             "environment (a job array task); give K/N elsewhere")
        else:
            index = int(index_text)
    except ValueError:
        raise SettingsError("shard", f"{text!r} is not K/N or auto/N (whole numbers, K from 1 to N)") from None
    if not sep or count < 1 or not 1 <= index <= count:
        raise SettingsError("shard", f"{text!r} is not K/N or auto/N with K from 1 to N "
                                     f"(got index {index} of {count})")
    return index, count
