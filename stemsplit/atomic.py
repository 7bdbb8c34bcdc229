"""Atomic file output: the one place where a file is written under a temporary name and renamed.

Every file stemsplit writes (stems, checkpoints, training states, score tables, synthetic songs,
downloads) goes through here, so they all share one rule: bytes go to a hidden file in the
target's folder (a rename is only atomic within one file system), the finished file gets the
user's usual umask permissions, and it takes the final name in one rename. A failure at any point
leaves the final name untouched (an older file stays as it was) and no temporary file behind.
Files that belong together (the stems of one track) are committed as a group: all take their
final names, or none does. A temporary file is locked (flock) by the process writing it for as
long as it is open, so that one left behind by a killed process can be told apart from one a
live process is writing, and removed (`remove_stale`).

It must not know file formats, and it raises plain OSError: each caller turns that into its own
StemsplitError with its own wording. It never prints.
"""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence, Union

try:
    import fcntl
except ImportError:  # (Windows: no flock; stale temporaries are then never removed)
    fcntl = None  # type: ignore[assignment]

PathLike = Union[str, "os.PathLike[str]"]

_held: dict[str, int] = {}  # temporary path -> the descriptor that holds its lock


def temp_path_for(path: PathLike) -> Path:
    """Create (and return) an empty, hidden, uniquely named file next to `path`, locked by this
    process until it is committed or discarded.

    The target folder is created if needed. The file is private (0600) while it is being
    written; `commit` gives it its final permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _held[name] = fd
    else:
        os.close(fd)
    return Path(name)


def _release(temp: PathLike) -> None:
    fd = _held.pop(str(temp), None)
    if fd is not None:
        os.close(fd)


def remove_stale(path: PathLike, older_than: float) -> list[Path]:
    """Delete the temporaries of `path` that a dead process left: hidden `.NAME.*.part` files in
    its folder, last modified before `older_than` (a time stamp) and locked by no process.

    Returns what was removed. Errors (a folder that cannot be listed, a file another user owns)
    are not this call's business: such a file is left as it is.
    """
    if fcntl is None:
        return []
    path = Path(path)
    removed = []
    for name in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.part")):
        try:
            if os.lstat(name).st_mtime >= older_than or name in _held:
                continue
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live process is writing it
            os.unlink(name)
            removed.append(Path(name))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _umask_mode() -> int:
    """The permissions a new file of the user gets: 0666 without the process umask.

    The umask can only be read by setting it; the placeholder is 077 rather than 0 so that a
    file another thread creates in that instant comes out too private, never world-writable.
    """
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def commit(temp: PathLike, path: PathLike) -> None:
    """Give the finished `temp` the user's umask permissions and rename it to `path`.

    Permissions are set here rather than at creation because some writers (safetensors)
    replace the file they are given with a fresh private one. On failure `temp` is left for
    the caller to `discard` (a caller may keep it: a verified download can still be renamed).
    """
    os.chmod(temp, _umask_mode())
    os.replace(temp, path)
    _release(temp)


def commit_all(pairs: Sequence[tuple[PathLike, PathLike]]) -> None:
    """Rename every finished `(temp, path)` pair into place: all of them, or none.

    A rename is atomic for one file only, so files already at the final paths (an earlier run's)
    are first moved aside to hidden names in their folders. If any step fails (KeyboardInterrupt
    included), the files placed so far are removed, the old ones moved back and every temp
    deleted before the exception propagates; an OSError then has `filename` set to the final
    path it was handling, so that the caller can name it. On success the old files are deleted.
    """
    aside: list[tuple[Path, Path]] = []  # (final path, hidden name its old file was moved to)
    placed: list[Path] = []
    current = Path()
    try:
        for _, path in pairs:
            current = Path(path)
            if os.path.lexists(current):
                backup = temp_path_for(current)
                try:
                    os.replace(current, backup)
                except BaseException:
                    discard(backup)
                    raise
                aside.append((current, backup))
        for temp, path in pairs:
            current = Path(path)
            commit(temp, current)
            placed.append(current)
    except BaseException as exc:
        # best effort, each step on its own: an old file that cannot go back stays, hidden
        for final in placed:
            with contextlib.suppress(OSError):
                final.unlink()
        for final, backup in aside:
            with contextlib.suppress(OSError):
                os.replace(backup, final)
                _release(backup)
        for temp, _ in pairs:
            with contextlib.suppress(OSError):
                discard(temp)
        if isinstance(exc, OSError):
            exc.filename, exc.filename2 = str(current), None
        raise
    for _, backup in aside:
        discard(backup)


def discard(temp: PathLike) -> None:
    """Delete a temporary file if it is still there."""
    try:
        Path(temp).unlink(missing_ok=True)
    finally:
        _release(temp)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; rename it into place on success.

    On any exception in the block (KeyboardInterrupt included) or during the rename, the
    temporary file is deleted and the exception propagates; `path` is never touched.
    """
    temp = temp_path_for(path)
    try:
        yield temp
        commit(temp, path)
    except BaseException:
        discard(temp)
        raise


def write_text(path: PathLike, text: str) -> None:
    """Write `text` to `path` as UTF-8 through `atomic_path`, without newline translation (a CSV
    brings its own line ends); small files whose readers must never see them cut (logs, configs,
    score tables)."""
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
