"""Fetching model files into the cache: HTTP with resume, sha256 checks, locks, atomic rename.

Owns `download_file` (one `RemoteFile` into the cache: `<name>.part` under an exclusive lock,
HTTP Range resume, sha256 check, atomic rename into place), `download_model` (every file of a
named model), checksums (`file_sha256`, `verify_checksum`), the wording of network and
cache-folder failures, offline mode (`$STEMSPLIT_OFFLINE`, `offline=`: no socket is opened), the
connect timeout (`$STEMSPLIT_CONNECT_TIMEOUT`) and the line between a download that could not
start (`DownloadNotStarted`: nothing of the file arrived) and one that failed part-way.

It must not import torch, decide what a name means (that is `models.registry`) or read
checkpoints; it never prints (progress goes through a callback).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from stemsplit.atomic import commit, discard, temp_path_for
from stemsplit.constants import DEFAULT_MODEL
from stemsplit.errors import DownloadError, DownloadNotStarted
from stemsplit.models.registry import CACHE_ENV, REMOTE_ROOT_ENV, RemoteFile, cached_path, get_entry, require_default_path

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks (see _download_place)
    fcntl = None  # type: ignore[assignment]

# (file name, bytes done, total bytes or None when the server does not say)
DownloadProgress = Callable[[str, int, Optional[int]], None]

_CHUNK = 1 << 20

OFFLINE_ENV = "STEMSPLIT_OFFLINE"
CONNECT_TIMEOUT_ENV = "STEMSPLIT_CONNECT_TIMEOUT"
CONNECT_TIMEOUT = 3.0
"""Seconds to wait for a connection and the response's headers where a fallback exists (the
default model): an offline machine whose packets vanish must not hang the run."""
READ_TIMEOUT = 30.0
"""Seconds a started download may stall between two reads of its body."""


def offline_mode(offline: Optional[bool] = None) -> bool:
    """`offline` when given, else whether `$STEMSPLIT_OFFLINE` is set to a true value (1, true, yes, on)."""
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def connect_timeout() -> float:
    """`$STEMSPLIT_CONNECT_TIMEOUT` seconds (a positive number), else `CONNECT_TIMEOUT`."""
    text = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else CONNECT_TIMEOUT
    except ValueError:
        raise DownloadError(f"${CONNECT_TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise DownloadError(f"${CONNECT_TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


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


_NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def _cache_write_error(file: RemoteFile, folder: Path, exc: OSError) -> DownloadError:
    """A cache folder that cannot take the file is the user's to fix: running again would not
    help, so say where, why, and the fix that matches the cause."""
    if exc.errno in _NO_PERMISSION:
        cause = "read-only" if exc.errno == errno.EROFS else "permission denied"
        return DownloadError(
            f"cannot write to the model cache folder {folder} ({cause}): set ${CACHE_ENV} to a writable folder"
        )
    if exc.errno in _NO_SPACE:
        return DownloadError(
            f"cannot write {file.name} into the model cache folder {folder} ({exc.strerror or exc}); "
            f"free some space there or set ${CACHE_ENV} to a folder with room"
        )
    return DownloadError(
        f"cannot write {file.name} into the model cache folder {folder} ({exc.strerror or exc}); "
        f"set ${CACHE_ENV} to a writable folder"
    )


def _bounded_lookup(host: str, port: int, timeout: object) -> Optional[list]:
    """getaddrinfo's answer for `host`, looked up in a helper thread; OSError when that takes over
    `timeout` seconds, None when there is no timeout to keep.

    Socket timeouts do not cover the name lookup: a resolver that never answers would otherwise
    hang the run for as long as the system's resolver retries (often tens of seconds).
    """
    if not isinstance(timeout, (int, float)):  # http.client's "no timeout" sentinel
        return None
    result: list = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=lookup, name="stemsplit-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise OSError(f"looking up {host} took more than {timeout:g} s")
    if isinstance(result[0], OSError):
        raise result[0]
    return result[0]


def _connect_any(addresses: list, timeout: object, source_address: object = None) -> socket.socket:
    """A socket connected to the first of `addresses` (getaddrinfo's answer) that accepts.

    socket.create_connection would look the name up again, and that second lookup has no bound.
    """
    failure: Optional[OSError] = None
    for family, kind, proto, _, sockaddr in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)  # type: ignore[arg-type]
            if source_address:
                sock.bind(source_address)  # type: ignore[arg-type]
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
    raise failure or OSError("the name lookup returned no address")


class _BodyTimeout:
    """A handler mixin: the request's own timeout bounds the name lookup, the connection and the
    wait for the response's headers; then the socket waits up to `body` seconds for each read of
    the body."""

    body = READ_TIMEOUT

    def do_open(self, http_class, req, **kwargs):  # type: ignore[no-untyped-def]
        body = self.body

        class Connection(http_class):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                addresses = _bounded_lookup(self.host, self.port, self.timeout)
                if addresses is not None:
                    # http.client connects through this per-connection hook; handing it the
                    # answer in hand keeps the name from being looked up a second time
                    self._create_connection = lambda _address, timeout, source=None: _connect_any(
                        addresses, timeout, source)
                super().connect()

            def getresponse(self, *args, **kw):  # type: ignore[no-untyped-def]
                response = super().getresponse(*args, **kw)
                if self.sock is not None:
                    self.sock.settimeout(body)
                return response

        return super().do_open(Connection, req, **kwargs)  # type: ignore[misc]


class _Http(_BodyTimeout, urllib.request.HTTPHandler):
    pass


class _Https(_BodyTimeout, urllib.request.HTTPSHandler):
    pass


def _open(file: RemoteFile, offset: int, timeouts: Tuple[float, float], target: Path):  # type: ignore[no-untyped-def]
    """The response for `file` from `offset`, None when the partial file already holds it all.

    `timeouts` are (connect, read): the first bounds the connection and the wait for the headers,
    the second each read of the body. Failing before the headers (no network, a
    name that does not resolve, a refused connection, a timeout, an HTTP error) is
    `DownloadNotStarted`: not a byte of the file arrived.
    """
    from stemsplit import __version__

    headers = {"User-Agent": f"stemsplit/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(file.url(), headers=headers)
        handlers = [_Http(), _Https()]
        for handler in handlers:
            handler.body = timeouts[1]
        return urllib.request.build_opener(*handlers).open(request, timeout=timeouts[0])
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None  # the partial file already holds every byte: just verify it
        raise DownloadNotStarted(
            f"cannot download {file.name} from {file.url()}: HTTP {exc.code} {exc.reason}; {_place_hint(file, target)}",
            cause=f"HTTP {exc.code} {exc.reason}",
        ) from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or str(reason) == "timed out":
            reason = f"no answer within {timeouts[0]:g} s"
        raise DownloadNotStarted(
            f"cannot download {file.name} from {file.url()}: {reason}; {_place_hint(file, target)}", cause=str(reason)
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


def _fetch(file: RemoteFile, place: Path, target: Path, progress: Optional[DownloadProgress],
           timeouts: Tuple[float, float], *, fresh: bool) -> bool:
    """Write `file`'s bytes into `place`, after the bytes already there unless `fresh`.

    Returns True when earlier bytes were kept: they are unverified, so a checksum mismatch may
    be theirs rather than the server's.
    """
    offset = 0 if fresh else place.stat().st_size
    response = _open(file, offset, timeouts, target)
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


def download_file(file: RemoteFile, *, progress: Optional[DownloadProgress] = None, timeout: float = READ_TIMEOUT,
                  connect_timeout: Optional[float] = None, offline: Optional[bool] = None) -> Path:
    """Make sure `file` is in the cache and return its path.

    `timeout` bounds each network wait, `connect_timeout` (default: `timeout`) the connection and
    the response's headers. Offline (`offline`, default `$STEMSPLIT_OFFLINE`) a file that is not
    cached is a `DownloadNotStarted` and no socket is opened. So is any failure before the first
    byte of the file arrived; a failure after it is a `DownloadError`, the bytes kept for a resume.

    Bytes go to `<name>.part` first; an interrupted download resumes from there (HTTP Range).
    The complete file must match its sha256 and is then renamed into place. Resumed bytes that
    do not check out (a partial download of another version of the file, or one longer than the
    file) are fetched again whole before anything is reported; a fresh download that does not
    check out is deleted.
    """
    target = cached_path(file)
    if target.is_file():
        return target
    if offline_mode(offline):
        raise DownloadNotStarted(
            f"{file.name} is not in the model cache {target.parent} and offline mode allows no download "
            f"(offline=True or ${OFFLINE_ENV}); place the file there, or load a local file", cause="offline mode")
    timeouts = (timeout if connect_timeout is None else connect_timeout, timeout)
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
        resumed = _fetch(file, place, target, progress, timeouts, fresh=False)
        problem = _checksum_problem(place, file.sha256)
        if problem is not None and resumed:
            _fetch(file, place, target, progress, timeouts, fresh=True)
            problem = _checksum_problem(place, file.sha256)
        if problem is not None:
            place.unlink()
            raise DownloadError(f"{file.name}: {problem}; the corrupted download was deleted, run again to retry")
        try:
            commit(place, target)
        except OSError as exc:
            raise DownloadError(f"cannot place {file.name} at {target} ({exc.strerror or exc})") from None
    return target


def download_model(name: str, *, progress: Optional[DownloadProgress] = None,
                   offline: Optional[bool] = None) -> List[Path]:
    """Fetch every file of a named model into the cache (no-op for files already there)."""
    if name == DEFAULT_MODEL:
        return [require_default_path()]
    return [download_file(file, progress=progress, offline=offline) for file in get_entry(name).files]
