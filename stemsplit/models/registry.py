"""The catalog of named models: what each released model is and where its files live.

Owns the table that maps a name (htdemucs, htdemucs_ft, ...) to the official release files (URL,
sha256 prefix embedded in the file name, approximate size), the bag layout (per-source weights,
segment), the sources and the published SDR; the cache folder (`$STEMSPLIT_CACHE`, else the
platform user cache / stemsplit) and where each file sits in it; the download root
(`$STEMSPLIT_REMOTE_ROOT` replaces the official one: mirrors, tests); the embedded default model's
location; and `list_models` (which marks what the default resolves to right now, as
`models.resolve.resolve_default` decides without the network).

It must not import torch, touch the network (that is `models.download`) or parse checkpoint bytes
(that is `models.checkpoint`, asked lazily for the default model's sources); it never prints.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from stemsplit.constants import DEFAULT_MODEL
from stemsplit.errors import CheckpointError, ModelError

OFFICIAL_ROOT = "https://dl.fbaipublicfiles.com/demucs/"
REMOTE_ROOT_ENV = "STEMSPLIT_REMOTE_ROOT"
CACHE_ENV = "STEMSPLIT_CACHE"
DEFAULT_FILE = "default.safetensors"

FOUR_SOURCES = ("drums", "bass", "other", "vocals")
SIX_SOURCES = FOUR_SOURCES + ("guitar", "piano")


@dataclass(frozen=True)
class RemoteFile:
    """One released checkpoint file.

    `path` is relative to the download root; `sha256` is the full digest or, for the official
    files, the prefix embedded in their names (`<signature>-<sha256 prefix>.th`).
    """

    path: str
    sha256: str
    size: Optional[int]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def url(self) -> str:
        return remote_root() + self.path


@dataclass(frozen=True)
class CatalogEntry:
    """A named model: its files (one model per file) and how they combine."""

    name: str
    description: str
    files: Tuple[RemoteFile, ...]
    sources: Tuple[str, ...]
    weights: Optional[Tuple[Tuple[float, ...], ...]] = None
    segment: Optional[float] = None
    sdr: Optional[float] = None

    @property
    def size_bytes(self) -> Optional[int]:
        sizes = [file.size for file in self.files]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]


@dataclass
class ModelInfo:
    """What `list_models` reports about one model."""

    name: str
    sources: List[str]
    size_bytes: Optional[int]
    cached: bool
    default: bool  # what no model name resolves to right now
    description: str
    sdr: Optional[float]
    default_reason: Optional[str] = None  # why, on the default's entry


def _official(path: str, size: Optional[int]) -> RemoteFile:
    """An official file: its sha256 prefix is the part of its name after the dash."""
    prefix = path.rsplit("-", 1)[-1].split(".", 1)[0]
    return RemoteFile(path=path, sha256=prefix, size=size)


_HT = "hybrid_transformer/"
_MDX = "mdx_final/"
_HT_SIZE = 84_141_271  # one HTDemucs file (42.0M parameters stored in half precision)
_HD_SIZE = 167_395_435  # one HDemucs file (83.6M parameters in half precision), approximately

MODELS: Dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="htdemucs",
            description="Hybrid Transformer Demucs (v4), trained on MUSDB18-HQ + 800 songs",
            files=(_official(_HT + "955717e8-8726e21a.th", 84_141_911),),
            sources=FOUR_SOURCES,
        ),
        CatalogEntry(
            name="htdemucs_ft",
            description="htdemucs fine-tuned per source: a bag of 4, one model per stem (best quality, 4x slower)",
            files=tuple(_official(_HT + name, _HT_SIZE) for name in (
                "f7e0c4bc-ba3fe64a.th", "d12395a8-e57c48e6.th", "92cfc3b6-ef3bcb9c.th", "04573f0d-f3cf25b2.th")),
            sources=FOUR_SOURCES,
            weights=((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)),
            sdr=9.0,
        ),
        CatalogEntry(
            name="htdemucs_6s",
            description="experimental 6-source htdemucs (adds guitar and piano; piano bleeds a lot)",
            files=(_official(_HT + "5c90dfd2-34c22ccb.th", _HT_SIZE),),
            sources=SIX_SOURCES,
        ),
        CatalogEntry(
            name="hdemucs_mmi",
            description="Hybrid Demucs (v3) retrained on MUSDB18-HQ + 800 songs",
            files=(_official(_HT + "75fc33f5-1941ce65.th", _HD_SIZE),),
            sources=FOUR_SOURCES,
            segment=44.0,
        ),
        CatalogEntry(
            name="mdx",
            description="Hybrid Demucs (v3) bag of 4 trained on MUSDB18-HQ only; won MDX 2021 track A",
            files=tuple(_official(_MDX + name, None) for name in (
                "0d19c1c6-0f06f20e.th", "7ecf8ec1-70f50cc9.th", "c511e2ab-fe698775.th", "7d865c68-3d5dd56b.th")),
            sources=FOUR_SOURCES,
            weights=((1.0, 1.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (1.0, 0.0, 1.0, 1.0), (1.0, 0.0, 1.0, 1.0)),
            segment=44.0,
            sdr=7.7,
        ),
        CatalogEntry(
            name="mdx_extra",
            description="Hybrid Demucs (v3) bag of 4 trained with extra data (including the MUSDB test set); "
                        "2nd on MDX 2021 track B",
            files=(
                _official(_MDX + "e51eebcc-c1b80bdd.th", 167_399_275),
                _official(_MDX + "a1d90b5c-ae9d2452.th", 167_391_595),
                _official(_MDX + "5d2d6c55-db83574e.th", 167_391_595),
                _official(_MDX + "cfa93e08-61801ae1.th", 167_399_275),
            ),
            sources=FOUR_SOURCES,
            segment=44.0,
        ),
    )
}

# diffq-quantized releases: not loadable here; the error names the full-precision equivalent.
QUANTIZED = {"mdx_q": "mdx", "mdx_extra_q": "mdx_extra"}


# ---- locations ---------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where downloaded model files live: `$STEMSPLIT_CACHE`, else the user cache / stemsplit."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("stemsplit"))


def remote_root() -> str:
    """The download root: `$STEMSPLIT_REMOTE_ROOT` if set, else the official release root."""
    root = os.environ.get(REMOTE_ROOT_ENV) or OFFICIAL_ROOT
    return root if root.endswith("/") else root + "/"


def default_model_path() -> Optional[Path]:
    """The embedded default checkpoint shipped as package data, or None when not installed."""
    import importlib.resources

    try:
        path = Path(str(importlib.resources.files("stemsplit.weights") / DEFAULT_FILE))
    except ModuleNotFoundError:
        # Python started in a source checkout imports the package from there, where the weights
        # sit beside it in weights/ rather than in the installed stemsplit.weights package.
        path = Path(__file__).resolve().parents[2] / "weights" / DEFAULT_FILE
    return path if path.is_file() else None


def require_default_path() -> Path:
    """The embedded default checkpoint, or a ModelError saying it is not installed."""
    path = default_model_path()
    if path is None:
        raise ModelError(
            f"the embedded default model ({DEFAULT_FILE} in package stemsplit.weights) is not installed; "
            f"pick a released model with --model (e.g. htdemucs) or give a checkpoint path"
        )
    return path


def cached_path(file: RemoteFile) -> Path:
    return cache_dir() / file.name


def is_cached(entry: CatalogEntry) -> bool:
    return all(cached_path(file).is_file() for file in entry.files)


# ---- catalog queries ---------------------------------------------------------------------------

def get_entry(name: str) -> CatalogEntry:
    """The catalog entry for `name`, or a ModelError that says what exists."""
    entry = MODELS.get(name)
    if entry is not None:
        return entry
    if name in QUANTIZED:
        raise ModelError(
            f"model {name!r} is diffq-quantized, which stemsplit does not load; use {QUANTIZED[name]!r} instead"
        )
    known = [DEFAULT_MODEL, *MODELS]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} (known: {', '.join(known)}; or give a checkpoint file path)")


def _default_info() -> ModelInfo:
    path = default_model_path()
    sources: List[str] = list(FOUR_SOURCES)
    description = "embedded default model, trained by stemsplit"
    if path is not None:
        from stemsplit.models.checkpoint import read_metadata

        try:
            sources = list(read_metadata(path).get("sources", sources))
        except CheckpointError as exc:
            description += f" (unreadable: {exc})"
    else:
        description += " (not installed)"
    return ModelInfo(
        name=DEFAULT_MODEL,
        sources=sources,
        size_bytes=path.stat().st_size if path is not None else None,
        cached=path is not None,
        default=False,
        description=description,
        sdr=None,
    )


def list_models(offline: Optional[bool] = None) -> List[ModelInfo]:
    """Every loadable named model: the embedded one first, then the official releases.

    The one no model name resolves to right now is marked `default`, with `default_reason`
    (offline as in `load_model`); nothing touches the network.
    """
    from stemsplit.models.resolve import resolve_default

    infos = [_default_info()]
    for entry in MODELS.values():
        infos.append(ModelInfo(
            name=entry.name,
            sources=list(entry.sources),
            size_bytes=entry.size_bytes,
            cached=is_cached(entry),
            default=False,
            description=entry.description,
            sdr=entry.sdr,
        ))
    try:
        choice = resolve_default(offline, fetch=False)
    except ModelError:  # offline, htdemucs not cached and no embedded model: nothing to mark
        return infos
    for info in infos:
        if info.name == choice.name:
            info.default, info.default_reason = True, choice.reason
    return infos
