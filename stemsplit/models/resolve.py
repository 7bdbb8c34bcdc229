"""From what a caller names (a catalog name, a file path, a name in a local folder) to a model.

Owns `load_model`, the offline look-up in a model folder (`repo`), `find_signature_file`, the one
rule for which file in a folder holds the model called NAME (NAME.safetensors, NAME.th,
NAME-<hash>.th): bag members are found with it too; and `resolve_default`, the one policy for
what no model name means (htdemucs if cached, else downloaded now, else, when that download
cannot start, the embedded model, with the reason).

It must not import torch at module level (the command line imports it at startup); parsing
checkpoint bytes is `models.checkpoint`'s job, fetching files `models.download`'s. It never prints:
the reason for the default's choice is returned, for the caller to show.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple, Union

from stemsplit.constants import DEFAULT_MODEL, PREFERRED_MODEL
from stemsplit.errors import DownloadNotStarted, ModelError
from stemsplit.models import registry
from stemsplit.models.download import (DownloadProgress, connect_timeout, download_file, offline_mode,
                                       verify_checksum)

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

CHECKPOINT_SUFFIXES = frozenset({".th", ".safetensors", ".yaml", ".yml", ".json"})


def find_signature_file(folder: Path, name: str) -> Optional[Path]:
    """The file in `folder` that holds the model called `name`: `name.safetensors`, `name.th`, or
    the first `name-<hash>.th` (the official release naming); None if there is none.

    `name` is taken literally, never as a pattern (`*` matches only a file named `*`). Files are
    tested with `os.path`, here and in every look-up of a name that may come from a file: Path's
    tests raise where a name is too long for the system, `os.path`'s answer no.
    """
    candidates = [folder / f"{name}.safetensors", folder / f"{name}.th",
                  *sorted(folder.glob(f"{glob.escape(name)}-*.th"))]
    return next((path for path in candidates if os.path.isfile(path)), None)


def file_problem(path: Path) -> str:
    """Why `path`, which is not a regular file, cannot be loaded as a checkpoint: the one wording,
    for a path given to `load_model` and to `load_checkpoint`. Devices and fifos are refused
    before anything opens them (reading /dev/zero never ends)."""
    if os.path.isdir(path):
        return f"{path} is a folder, not a checkpoint file"
    if os.path.exists(path):
        return f"{path} is not a regular file (a device, fifo or socket), so it cannot be a checkpoint"
    return f"checkpoint file {path} does not exist"


def _assemble(entry: registry.CatalogEntry, paths: Sequence[Path]) -> "nn.Module":
    from stemsplit.models.checkpoint import assemble, load_checkpoint

    members = [load_checkpoint(path) for path in paths]
    weights = [list(row) for row in entry.weights] if entry.weights is not None else None
    return assemble(members, weights, entry.segment)


def _load_from_repo(name: str, repo: Path) -> "nn.Module":
    """Load `name` from a local folder, with no network: a bag file, the catalog's files, or a
    single checkpoint named after it."""
    from stemsplit.models.checkpoint import load_checkpoint

    if not os.path.isdir(repo):
        raise ModelError(f"model repository {repo} is not a folder")
    if name in ("", ".", "..") or any(sep in name for sep in {"/", "\\", os.sep}):
        # joined to the folder, such a name would load a file outside it (or an absolute path)
        raise ModelError(f"model name {name!r} for --repo {repo} must be a plain name, without folders "
                         "(load a checkpoint file by giving its path, without --repo)")
    for suffix in (".yaml", ".yml", ".json"):
        bag = repo / f"{name}{suffix}"
        if os.path.isfile(bag):
            return load_checkpoint(bag)
    entry = registry.MODELS.get(name)
    if entry is not None and all(os.path.isfile(repo / file.name) for file in entry.files):
        paths = [repo / file.name for file in entry.files]
        for path, file in zip(paths, entry.files):
            verify_checksum(path, file.sha256)
        return _assemble(entry, paths)
    single = find_signature_file(repo, name)
    if single is not None:
        return load_checkpoint(single)
    raise ModelError(
        f"no model {name!r} in {repo}: looked for {name}.yaml/.yml/.json, {name}.safetensors, {name}.th, "
        f"{name}-<hash>.th" + (f" and the files of {name}" if entry is not None else "")
    )


@dataclass(frozen=True)
class DefaultChoice:
    """What the default model (no name given) resolves to, and why.

    `name` is `PREFERRED_MODEL` or, when `fallback`, the embedded `DEFAULT_MODEL`; `paths` are
    its files (empty for a `PREFERRED_MODEL` not fetched yet, see `resolve_default(fetch=False)`);
    `reason` says why, in one clause (`htdemucs is in the model cache`).
    """

    name: str
    paths: Tuple[Path, ...]
    reason: str
    fallback: bool


def resolve_default(offline: Optional[bool] = None, progress: Optional[DownloadProgress] = None, *,
                    fetch: bool = True) -> DefaultChoice:
    """The default model, resolved once: `PREFERRED_MODEL` if it is in the cache; else, unless
    offline (`offline`, default `$STEMSPLIT_OFFLINE`), downloaded now (`progress` as for
    `load_model`, connections bounded by `download.connect_timeout()`); else, when that download
    cannot start, the embedded model. A download that fails part-way raises its DownloadError.

    With `fetch=False` nothing touches the network: an uncached `PREFERRED_MODEL` is reported as
    what the next resolution will try to download (`paths` empty).
    """
    entry = registry.get_entry(PREFERRED_MODEL)
    if registry.is_cached(entry):
        return DefaultChoice(entry.name, tuple(map(registry.cached_path, entry.files)),
                             f"{entry.name} is in the model cache", False)
    if offline_mode(offline):
        why = f"offline mode is on and {entry.name} is not in the model cache"
    elif not fetch:
        size = f", about {entry.size_bytes / 1e6:.0f} MB" if entry.size_bytes else ""
        return DefaultChoice(entry.name, (), f"{entry.name} is not in the model cache yet: downloaded on first "
                             f"use (once{size})", False)
    else:
        try:
            paths = tuple(download_file(file, progress=progress, connect_timeout=connect_timeout(), offline=False)
                          for file in entry.files)
            return DefaultChoice(entry.name, paths, f"{entry.name} was downloaded into the model cache", False)
        except DownloadNotStarted as exc:
            if registry.default_model_path() is None:
                raise
            why = f"{entry.name} could not be downloaded ({exc.cause})"
    return DefaultChoice(DEFAULT_MODEL, (registry.require_default_path(),), why, True)


def load_model(
    name_or_path: Union[str, "os.PathLike[str]", None] = None,
    *,
    repo: Union[str, "os.PathLike[str]", None] = None,
    progress: Optional[DownloadProgress] = None,
    offline: Optional[bool] = None,
    on_default: Optional[Callable[[DefaultChoice], None]] = None,
) -> "nn.Module":
    """Load a model by name (downloading it on first use), from a file path, or from `repo`.

    None means the default model, as `resolve_default` decides (`on_default` receives its
    choice: the name and why); `"stemsplit_default"` the embedded model, with no network. A path
    to an existing file loads that file; with `repo`, names are looked up in that folder and
    nothing is downloaded (a file path and a `repo` together are refused). `offline` (default
    `$STEMSPLIT_OFFLINE`) forbids any download: a named model must then be cached.
    """
    from stemsplit.models.checkpoint import load_checkpoint

    if name_or_path is None:
        choice = resolve_default(offline, progress)
        if on_default is not None:
            on_default(choice)
        if choice.name == DEFAULT_MODEL:
            return load_checkpoint(choice.paths[0])
        return _assemble(registry.get_entry(choice.name), choice.paths)
    if str(name_or_path) == DEFAULT_MODEL:
        return load_checkpoint(registry.require_default_path())
    text = str(name_or_path)
    path = Path(text)
    if os.path.isfile(path):
        if repo is not None:  # loading the file would silently ignore the repository
            raise ModelError(f"{path} is a checkpoint file, and --repo {repo} looks up model names: "
                             "give one or the other")
        return load_checkpoint(path)
    if repo is not None:
        return _load_from_repo(text, Path(repo))
    if os.path.isdir(path) and text not in registry.MODELS:  # a folder named like a model (separated/htdemucs) must not hide it
        raise ModelError(f"{path} is a folder; to load a model from it, give a model name with --repo {path}")
    if text not in registry.MODELS and (os.path.exists(path) or os.sep in text or "/" in text
                                        or path.suffix in CHECKPOINT_SUFFIXES):
        raise ModelError(file_problem(path))
    entry = registry.get_entry(text)
    paths = [download_file(file, progress=progress, offline=offline) for file in entry.files]
    return _assemble(entry, paths)
