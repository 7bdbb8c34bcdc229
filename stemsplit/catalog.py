"""Named models: what each released model is, where its files live, and fetching them safely.

The catalog maps a name (htdemucs, htdemucs_ft, ...) to the official release files (URL, hash
prefix embedded in the file name, approximate size), the bag layout (per-source weights, segment),
the sources and the published SDR. Files are downloaded on first use into the cache folder
(`$STEMSPLIT_CACHE`, else the platform user cache / stemsplit) with resume of partial downloads,
a sha256 check and an atomic rename; `load_model` then hands them to `checkpoint`.
`$STEMSPLIT_REMOTE_ROOT` replaces the official download root (mirrors, tests).

This module never prints (progress goes through a callback) and never parses checkpoint bytes
itself (that is `checkpoint`'s job).
"""
from __future__ import annotations

import contextlib
import difflib
import glob
import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from stemsplit.atomic import commit, discard, temp_path_for
from stemsplit.constants import DEFAULT_MODEL
from stemsplit.errors import CheckpointError, DownloadError, ModelError

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks (see _download_place)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

OFFICIAL_ROOT = "https://dl.fbaipublicfiles.com/demucs/"
REMOTE_ROOT_ENV = "STEMSPLIT_REMOTE_ROOT"
CACHE_ENV = "STEMSPLIT_CACHE"
DEFAULT_FILE = "default.safetensors"

FOUR_SOURCES = ("drums", "bass", "other", "vocals")
SIX_SOURCES = FOUR_SOURCES + ("guitar", "piano")

# (file name, bytes done, total bytes or None when the server does not say)
DownloadProgress = Callable[[str, int, Optional[int]], None]

_CHUNK = 1 << 20


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
    default: bool
    description: str
    sdr: Optional[float]


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
        candidate = importlib.resources.files("stemsplit.weights") / DEFAULT_FILE
    except ModuleNotFoundError:
        return None
    path = Path(str(candidate))
    return path if path.is_file() else None


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
        from stemsplit.checkpoint import read_metadata

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
        default=True,
        description=description,
        sdr=None,
    )


def list_models() -> List[ModelInfo]:
    """Every loadable named model: the embedded default first, then the official releases."""
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
    return infos


# ---- downloads ---------------------------------------------------------------------------------

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str) -> None:
    """Raise DownloadError unless the file's sha256 starts with `expected` (full or prefix)."""
    problem = _checksum_problem(path, expected)
    if problem is not None:
        raise DownloadError(f"{path.name}: {problem}")


def _checksum_problem(path: Path, expected: str) -> Optional[str]:
    """What is wrong with `path`'s sha256 (which must start with `expected`), or None."""
    actual = file_sha256(path)
    if actual.startswith(expected.lower()):
        return None
    return f"checksum mismatch (sha256 {actual[:len(expected)]}, expected {expected})"


def _place_hint(file: RemoteFile, target: Path) -> str:
    return f"to work offline, download {file.url()} by hand and place it at {target} (or use --repo DIR)"


def _cache_write_error(file: RemoteFile, folder: Path, exc: OSError) -> DownloadError:
    """A cache folder that cannot take the file is the user's to fix (space, permissions): running
    again would not help, so say where and how."""
    return DownloadError(
        f"cannot write {file.name} into the model cache folder {folder} ({exc.strerror or exc}); "
        f"free some space there or set ${CACHE_ENV} to a writable folder"
    )


def _open(file: RemoteFile, offset: int, timeout: float, target: Path):  # type: ignore[no-untyped-def]
    from stemsplit import __version__

    headers = {"User-Agent": f"stemsplit/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(file.url(), headers=headers)
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None  # the partial file already holds every byte: just verify it
        raise DownloadError(
            f"cannot download {file.name} from {file.url()}: HTTP {exc.code} {exc.reason}; {_place_hint(file, target)}"
        ) from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot download {file.name} from {file.url()}: {reason}; {_place_hint(file, target)}"
        ) from None
    except ValueError as exc:  # not a URL at all: a malformed $STEMSPLIT_REMOTE_ROOT
        raise DownloadError(f"cannot download {file.name}: {exc} (check ${REMOTE_ROOT_ENV})") from None


def _total_size(response, offset: int) -> Optional[int]:  # type: ignore[no-untyped-def]
    content_range = response.headers.get("Content-Range", "")
    match = re.search(r"/(\d+)\s*$", content_range)
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.isdigit() else None


def _lock_partial(partial: Path) -> Optional[int]:
    """Open `partial` (creating it) and lock it exclusively; None if another process holds it.

    The lock lives on the open file, not the name: a holder renames or deletes the file when it
    is done, so the name is checked to still be the locked file, else the new one is taken.
    """
    while True:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(partial)):
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except FileNotFoundError:
            pass  # its holder renamed it into place or deleted it between our open and lock
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def _download_place(file: RemoteFile, target: Path) -> Iterator[Path]:
    """The file this process may download `target` into.

    Normally `<name>.part`, held under an exclusive lock so that an interrupted download (even a
    killed process) stays there for the next run to resume. If another process is downloading the
    same file right now, a private temporary file instead, fetched whole and deleted afterwards:
    two writers of one file interleave their bytes, and one would rename it under the other.
    Without advisory locks (Windows) downloads of one file are not coordinated.
    """
    partial = target.with_name(target.name + ".part")
    if fcntl is None:
        yield partial
        return
    try:
        fd = _lock_partial(partial)
        private = temp_path_for(target) if fd is None else None
    except OSError as exc:
        raise _cache_write_error(file, target.parent, exc) from None
    if private is not None:
        try:
            yield private
        finally:
            discard(private)
        return
    try:
        yield partial
    finally:
        with contextlib.suppress(OSError):  # a download that failed before its first byte: nothing to resume
            held = os.fstat(fd)  # type: ignore[arg-type]
            if held.st_size == 0 and os.path.samestat(held, os.stat(partial)):
                partial.unlink()
        os.close(fd)  # type: ignore[arg-type]


def _body(response, name: str, done: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    """The response body in chunks; a network failure ends it with a DownloadError (the bytes
    received so far stay for a resume)."""
    while True:
        try:
            block = response.read(_CHUNK)
        except (OSError, HTTPException) as exc:
            raise DownloadError(
                f"download of {name} was interrupted after {done} bytes ({exc}); run again to resume"
            ) from None
        if not block:
            return
        done += len(block)
        yield block


def _fetch(file: RemoteFile, place: Path, target: Path, progress: Optional[DownloadProgress], timeout: float,
           *, fresh: bool) -> bool:
    """Write `file`'s bytes into `place`, after the bytes already there unless `fresh`.

    Returns True when earlier bytes were kept: they are unverified, so a checksum mismatch may
    be theirs rather than the server's.
    """
    offset = 0 if fresh else place.stat().st_size
    response = _open(file, offset, timeout, target)
    if response is None:
        return True
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range request: start over
        total = _total_size(response, offset)
        done = offset
        try:
            with open(place, "ab" if offset else "wb") as out:
                if progress is not None:
                    progress(file.name, done, total)
                for block in _body(response, file.name, done):
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(file.name, done, total)
        except OSError as exc:  # reading errors are DownloadErrors already: this is the cache's side
            raise _cache_write_error(file, target.parent, exc) from None
    if total is not None and done < total:
        raise DownloadError(f"download of {file.name} stopped at {done} of {total} bytes; run again to resume")
    return offset > 0


def download_file(file: RemoteFile, *, progress: Optional[DownloadProgress] = None, timeout: float = 30.0) -> Path:
    """Make sure `file` is in the cache and return its path.

    Bytes go to `<name>.part` first; an interrupted download resumes from there (HTTP Range).
    The complete file must match its sha256 and is then renamed into place. Resumed bytes that
    do not check out (a partial download of another version of the file, or one longer than the
    file) are fetched again whole before anything is reported; a fresh download that does not
    check out is deleted.
    """
    target = cached_path(file)
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a cache folder that cannot be created is the user's to fix: say which and how
        raise DownloadError(
            f"cannot create the model cache folder {target.parent} ({exc.strerror or exc}); "
            f"set ${CACHE_ENV} to a writable folder"
        ) from None
    with _download_place(file, target) as place:
        if target.is_file():  # another process placed it since the check above
            place.unlink(missing_ok=True)
            return target
        resumed = _fetch(file, place, target, progress, timeout, fresh=False)
        problem = _checksum_problem(place, file.sha256)
        if problem is not None and resumed:
            _fetch(file, place, target, progress, timeout, fresh=True)
            problem = _checksum_problem(place, file.sha256)
        if problem is not None:
            place.unlink()
            raise DownloadError(f"{file.name}: {problem}; the corrupted download was deleted, run again to retry")
        try:
            commit(place, target)
        except OSError as exc:
            raise DownloadError(f"cannot place {file.name} at {target} ({exc.strerror or exc})") from None
    return target


def download_model(name: str, *, progress: Optional[DownloadProgress] = None) -> List[Path]:
    """Fetch every file of a named model into the cache (no-op for files already there)."""
    if name == DEFAULT_MODEL:
        return [require_default_path()]
    return [download_file(file, progress=progress) for file in get_entry(name).files]


# ---- loading -----------------------------------------------------------------------------------

def require_default_path() -> Path:
    """The embedded default checkpoint, or a ModelError saying it is not installed."""
    path = default_model_path()
    if path is None:
        raise ModelError(
            f"the embedded default model ({DEFAULT_FILE} in package stemsplit.weights) is not installed; "
            f"pick a released model with --model (e.g. htdemucs) or give a checkpoint path"
        )
    return path


def _assemble(entry: CatalogEntry, paths: Sequence[Path]) -> "nn.Module":
    from stemsplit.checkpoint import assemble, load_checkpoint

    members = [load_checkpoint(path) for path in paths]
    weights = [list(row) for row in entry.weights] if entry.weights is not None else None
    return assemble(members, weights, entry.segment)


def _load_from_repo(name: str, repo: Path) -> "nn.Module":
    """Load `name` from a local folder, with no network: a bag file, the catalog's files, or a
    single checkpoint named after it."""
    from stemsplit.checkpoint import load_checkpoint

    if not repo.is_dir():
        raise ModelError(f"model repository {repo} is not a folder")
    if name in ("", ".", "..") or any(sep in name for sep in {"/", "\\", os.sep}):
        # joined to the folder, such a name would load a file outside it (or an absolute path)
        raise ModelError(f"model name {name!r} for --repo {repo} must be a plain name, without folders "
                         "(load a checkpoint file by giving its path, without --repo)")
    for suffix in (".yaml", ".yml", ".json"):
        bag = repo / f"{name}{suffix}"
        if bag.is_file():
            return load_checkpoint(bag)
    entry = MODELS.get(name)
    if entry is not None and all((repo / file.name).is_file() for file in entry.files):
        paths = [repo / file.name for file in entry.files]
        for path, file in zip(paths, entry.files):
            verify_checksum(path, file.sha256)
        return _assemble(entry, paths)
    singles = [repo / f"{name}.safetensors", repo / f"{name}.th", *sorted(repo.glob(f"{glob.escape(name)}-*.th"))]
    for single in singles:
        if single.is_file():
            return load_checkpoint(single)
    raise ModelError(
        f"no model {name!r} in {repo}: looked for {name}.yaml/.yml/.json, {name}.safetensors, {name}.th, "
        f"{name}-<hash>.th" + (f" and the files of {name}" if entry is not None else "")
    )


def load_model(
    name_or_path: Union[str, "os.PathLike[str]", None] = None,
    *,
    repo: Union[str, "os.PathLike[str]", None] = None,
    progress: Optional[DownloadProgress] = None,
) -> "nn.Module":
    """Load a model by name (downloading it on first use), from a file path, or from `repo`.

    None means the embedded default model. A path to an existing file loads that file; with
    `repo`, names are looked up in that folder and nothing is downloaded (a file path and a
    `repo` together are refused).
    """
    from stemsplit.checkpoint import load_checkpoint

    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return load_checkpoint(require_default_path())
    text = str(name_or_path)
    path = Path(text)
    if path.is_file():
        if repo is not None:  # loading the file would silently ignore the repository
            raise ModelError(f"{path} is a checkpoint file, and --repo {repo} looks up model names: "
                             "give one or the other")
        return load_checkpoint(path)
    if repo is not None:
        return _load_from_repo(text, Path(repo))
    if path.is_dir() and text not in MODELS:  # a folder named like a model (separated/htdemucs) must not hide it
        raise ModelError(f"{path} is a folder; to load a model from it, give a model name with --repo {path}")
    if text not in MODELS and (os.sep in text or "/" in text or path.suffix in {".th", ".safetensors", ".yaml", ".yml", ".json"}):
        raise ModelError(f"checkpoint file {path} does not exist")
    entry = get_entry(text)
    paths = [download_file(file, progress=progress) for file in entry.files]
    return _assemble(entry, paths)
