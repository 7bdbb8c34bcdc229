"""Audio through shell pipes: an input read from a stream, and a stem written to one.

Owns `spool_stdin` (a stream copied block by block into a temporary file, so that decoding can
sniff and seek it like any file and memory stays bounded) and `StreamWriter` (a WAV or FLAC
stream written forward only: a WAV header that states the exact length announced up front, then
samples; FLAC through libsndfile, whose closing seek to rewrite the header is refused, leaving a
valid stream of unknown length as `ffmpeg -f flac -` writes). It must not decode, separate or
know about models, and never prints.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import struct
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Optional

import numpy as np
import soundfile as sf

from stemsplit.audio.encode import frames_of, output_subtype
from stemsplit.errors import AudioError

_COPY_BLOCK = 1 << 20
_PIPE_FORMATS = ("wav", "flac")


def spool_stdin(stream: IO[bytes], folder: Optional[Path] = None) -> Path:
    """Copy `stream` to a new temporary file in `folder` (default: the system's) and return its
    path; the caller removes it. Nothing is kept in memory beyond one block."""
    handle, name = tempfile.mkstemp(prefix=".stemsplit-stdin-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            while True:
                block = stream.read(_COPY_BLOCK)
                if not block:
                    break
                out.write(block)
    except BaseException as exc:
        os.unlink(name)
        if isinstance(exc, OSError):
            raise AudioError(f"stdin: cannot spool the input ({exc.strerror or exc})") from None
        raise
    return Path(name)


class _ForwardOnly(io.RawIOBase):
    """A pipe seen through libsndfile's eyes: writes pass on, `tell` counts them, and a seek
    anywhere but the current position fails (so the encoder leaves its header as it is)."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self.stream, self.position = stream, 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.stream.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.position + offset if whence == 1 else -1
        if target != self.position:
            raise OSError("a pipe cannot seek")
        return self.position

    def read(self, size: int = -1) -> bytes:
        raise OSError("a pipe being written cannot be read")


@contextlib.contextmanager
def _refused_seeks_unreported() -> Iterator[None]:
    """libsndfile asks a stream for its length and, closing FLAC, to seek back to its header;
    soundfile reports the refusal through `sys.unraisablehook`, which would print a traceback
    for an expected answer."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook


def _wav_header(samplerate: int, channels: int, subtype: str, frames: int) -> bytes:
    """A canonical 44-byte WAV header; sizes past 4 GiB are written as 0xFFFFFFFF, which readers
    of streamed WAV take as "until the end"."""
    width = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[subtype]
    data = frames * channels * width
    tag = 3 if subtype == "FLOAT" else 1
    riff = 36 + data if 36 + data <= 0xFFFFFFFF else 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, tag, channels, samplerate, samplerate * channels * width, channels * width,
                        8 * width) +
            b"data" + struct.pack("<I", min(data, 0xFFFFFFFF)))


class StreamWriter:
    """Streams `(channels, n)` blocks to a binary stream as WAV or FLAC, forward only.

    `frames` is the length announced in a WAV header: the samples written are padded with
    silence or cut to it, so the header never lies. Integer outputs saturate at full scale.
    """

    def __init__(self, stream: IO[bytes], samplerate: int, channels: int, *, fmt: str = "wav",
                 bit_depth: int = 16, frames: int = 0) -> None:
        if fmt not in _PIPE_FORMATS:
            raise ValueError(f"{fmt} cannot be streamed to a pipe (use {' or '.join(_PIPE_FORMATS)})")
        subtype = output_subtype(fmt, bit_depth)
        self.channels, self.frames, self.written = channels, frames, 0
        self._float = subtype == "FLOAT"
        self._raw = _ForwardOnly(stream)
        with _refused_seeks_unreported():
            if fmt == "wav":
                self._raw.write(_wav_header(samplerate, channels, subtype, frames))
                self._file = sf.SoundFile(self._raw, "w", samplerate, channels, subtype=subtype, format="RAW",
                                          endian="LITTLE")
            else:
                self._file = sf.SoundFile(self._raw, "w", samplerate, channels, subtype=subtype, format="FLAC")
        self._fmt = fmt

    def write(self, block: Any) -> None:
        data = frames_of(block)
        if self._fmt == "wav":
            data = data[: max(0, self.frames - self.written)]
        if not self._float:
            data = np.clip(data, -1.0, 1.0)
        self._file.write(data)
        self.written += data.shape[0]

    def close(self) -> None:
        if self._fmt == "wav" and self.written < self.frames:
            self.write(np.zeros((self.channels, self.frames - self.written), np.float32))
        with _refused_seeks_unreported():
            self._file.close()
        self._raw.stream.flush()

    def abort(self) -> None:
        """Stop writing; what already went down the pipe stays there (the run exits non-zero)."""
        try:
            with _refused_seeks_unreported():
                self._file.close()
        except Exception:  # the stream is being abandoned: its close error adds nothing
            pass
