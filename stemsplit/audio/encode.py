"""Encoding: stem files written atomically, one block at a time.

Owns the output formats (wav with RF64 past 4 GiB, flac, mp3 at a constant bitrate), their
subtypes and rates, `AudioWriter` (blocks stream into a hidden temporary file in the target folder,
renamed into place only when complete) and `commit_together` (the stems of a track appear all
together, or none does; the mechanics are `atomic`'s), and how a failed write is worded. Blocks are
numpy arrays or torch tensors; this module imports no torch, so the synthetic song writer uses it
too. It must not decode, resample or know about models, and never prints.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import soundfile as sf

from stemsplit import atomic
from stemsplit.constants import MP3_BITRATES, MP3_SAMPLERATES, OUTPUT_FORMATS
from stemsplit.errors import AudioError

PathLike = Union[str, "os.PathLike[str]"]

def output_subtype(fmt: str, bit_depth: int) -> str:
    """The libsndfile subtype for a format and bit depth; ValueError for impossible pairs."""
    if fmt == "mp3":
        return "MPEG_LAYER_III"
    table = {"wav": {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}, "flac": {16: "PCM_16", 24: "PCM_24"}}
    if fmt not in table:
        raise ValueError(f"unknown output format {fmt!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    if bit_depth not in table[fmt]:
        allowed = "/".join(str(b) for b in table[fmt])
        raise ValueError(f"{fmt} cannot be written with bit depth {bit_depth} (use {allowed})")
    return table[fmt][bit_depth]


# A WAV file's sizes are 32-bit fields, so past 4 GiB of samples its header lies (libsndfile
# writes one that a reader takes for an eighth of the audio). RF64 is WAV with 64-bit sizes.
_WAV_DATA_LIMIT = 0xFFFFFFFF - (1 << 20)  # (a margin for the header and a length estimate's error)
_SAMPLE_BYTES = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}


def _container(fmt: str, subtype: str, channels: int, frames: Optional[int]) -> str:
    """The libsndfile major format: `fmt`, except a WAV expected to outgrow its size fields."""
    if fmt == "wav" and frames is not None and frames * channels * _SAMPLE_BYTES[subtype] > _WAV_DATA_LIMIT:
        return "RF64"
    return fmt.upper()


def encodable_samplerate(fmt: str, samplerate: int) -> int:
    """The rate to write a `fmt` file at for a signal at `samplerate`.

    wav and flac take any rate. MP3 knows only `MP3_SAMPLERATES`, so a 96 kHz track cannot keep
    its rate there: it gets the highest MP3 rate not above its own (48 kHz), or 8 kHz below that.
    """
    if fmt != "mp3":
        return samplerate
    return max((rate for rate in MP3_SAMPLERATES if rate <= samplerate), default=MP3_SAMPLERATES[0])


def mp3_compression_level(bitrate: int) -> float:
    """libsndfile's compression level that gives a constant `bitrate` kbps MP3.

    libsndfile maps the level linearly onto 320..32 kbps for MPEG-1 rates (32, 44.1, 48 kHz), so
    those rates get the exact bitrate; lower sample rates use MPEG-2 tables and end up
    proportionally lower.
    """
    if bitrate not in MP3_BITRATES:
        raise ValueError(f"unsupported MP3 bitrate {bitrate} (choose from {MP3_BITRATES})")
    return min((320 - bitrate) / 288, 0.999)


def write_error(path: Path, exc: BaseException) -> AudioError:
    """An AudioError naming `path` for a failed write (disk full gets its own wording)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return AudioError(f"{path}: cannot write, no space left on device")
    detail = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        detail = exc.strerror
    return AudioError(f"{path}: cannot write ({detail})")


def temp_path_for(path: Path) -> Path:
    """`atomic.temp_path_for` for an audio output: a failure is an AudioError naming `path`."""
    try:
        return atomic.temp_path_for(path)
    except OSError as exc:
        raise write_error(path, exc) from None


def frames_of(block: Any) -> np.ndarray:
    """`(channels, n)` samples (numpy or torch) as the contiguous float32 `(n, channels)` frames
    soundfile writes."""
    if hasattr(block, "detach"):  # a torch tensor, converted without importing torch here
        block = block.detach().cpu().float().numpy()
    return np.ascontiguousarray(np.asarray(block, dtype=np.float32).T)


class AudioWriter:
    """Streams `(channels, n)` blocks into `path` atomically.

    Blocks go to a hidden temporary file in the target folder; `commit()` renames it to `path`,
    `abort()` deletes it. Used as a context manager it commits on success and aborts on any
    exception, KeyboardInterrupt included. Integer and MP3 outputs saturate at full scale.
    `frames`, the expected length, lets a WAV longer than 4 GiB be written as RF64.
    """

    def __init__(
        self,
        path: PathLike,
        samplerate: int,
        channels: int,
        *,
        bit_depth: int = 16,
        fmt: Optional[str] = None,
        mp3_bitrate: int = 320,
        frames: Optional[int] = None,
    ) -> None:
        self.path = Path(path)
        fmt = (fmt or self.path.suffix.lstrip(".")).lower()
        subtype = output_subtype(fmt, bit_depth)
        self._float = subtype == "FLOAT"
        extra = {}
        if fmt == "mp3":
            extra = {"compression_level": mp3_compression_level(mp3_bitrate), "bitrate_mode": "CONSTANT"}
        self.temp = temp_path_for(self.path)
        try:
            self._file: Optional[sf.SoundFile] = sf.SoundFile(
                str(self.temp), "w", samplerate, channels, subtype=subtype,
                format=_container(fmt, subtype, channels, frames), **extra
            )
        except BaseException as exc:
            atomic.discard(self.temp)
            if isinstance(exc, (OSError, sf.SoundFileError, RuntimeError)):
                raise write_error(self.path, exc) from None
            raise

    def write(self, block: Any) -> None:
        """Append `(channels, n)` samples: a numpy array or a torch tensor."""
        assert self._file is not None, "writer already closed"
        data = frames_of(block)
        if not self._float:
            data = np.clip(data, -1.0, 1.0)
        try:
            self._file.write(data)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, (OSError, sf.SoundFileError, RuntimeError)):
                raise write_error(self.path, exc) from None
            raise

    def close(self) -> None:
        """Finish encoding into the temporary file (call `commit` to publish it)."""
        if self._file is not None:
            handle, self._file = self._file, None
            try:
                handle.close()
            except BaseException as exc:
                self.abort()
                if isinstance(exc, (OSError, sf.SoundFileError, RuntimeError)):
                    raise write_error(self.path, exc) from None
                raise

    def commit(self) -> None:
        """Close and atomically rename the temporary file to the final path."""
        self.close()
        try:
            atomic.commit(self.temp, self.path)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from None

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched."""
        if self._file is not None:
            handle, self._file = self._file, None
            try:
                handle.close()
            except Exception:  # the file is being discarded: its close error is irrelevant
                pass
        atomic.discard(self.temp)

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def commit_together(writers: Sequence[AudioWriter]) -> None:
    """Close `writers` and rename all their files into place, or none of them.

    For files that only make sense as a set (the stems of one track): a failure leaves every
    final path as it was, an earlier run's files included, and raises an AudioError naming the
    file that could not be placed.
    """
    for writer in writers:
        writer.close()
    try:
        atomic.commit_all([(writer.temp, writer.path) for writer in writers])
    except OSError as exc:
        raise write_error(Path(exc.filename), exc) from None

