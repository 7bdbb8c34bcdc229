"""Spooling: long float32 signals kept in anonymous temporary files instead of memory.

Owns `SignalFile` (append blocks, read back by slices or in blocks, running mean and std of the
channel average) and `spool_audio`, a decoded input spooled at the model's rate (and, when asked,
at its own rate). The files have no name and vanish when closed or when the process dies, so
nothing is ever left behind. It must not decode formats itself (see `decode`) nor write audio
files (see `encode`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from stemsplit.audio.decode import _Decoding
from stemsplit.audio.encode import write_error
from stemsplit.errors import AudioError

PathLike = Union[str, "os.PathLike[str]"]
_READ_FRAMES = 1 << 18  # frames per block read back by `SignalFile.blocks`


class SignalFile:
    """A long float32 `(channels, time)` signal kept in an anonymous temporary file, not in memory.

    Frames are appended block by block (interleaved little-endian float32) and read back by
    slicing, `signal[:, start:end]`, which returns a `(channels, n)` tensor through an ordinary
    file read: only the slices asked for are ever in memory (a memory map would count every
    touched page toward the process's resident memory). The file has no name on POSIX systems and
    is deleted when closed on every system, so an error, Ctrl-C or even a killed process leaves
    nothing behind.

    While appending it accumulates, in float64 with Chan's pairwise update (stable for any
    length), the mean and variance of the channel average: the statistics the separator
    normalises its input with, known without a second pass over the file.
    """

    def __init__(self, channels: int, folder: Optional[PathLike] = None) -> None:
        self.channels = channels
        self.length = 0
        self._file = tempfile.TemporaryFile(dir=folder)
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the running mean

    @property
    def shape(self) -> tuple[int, int]:
        return (self.channels, self.length)

    def append(self, block: torch.Tensor) -> None:
        """Add `(channels, n)` samples at the end."""
        n = block.shape[-1]
        if n == 0:
            return
        data = block.detach().to("cpu", torch.float32).T.contiguous().numpy()
        self._file.seek(self.length * 4 * self.channels)
        self._file.write(data.astype("<f4", copy=False).tobytes())
        average = block.double().mean(0)
        block_mean = float(average.mean())
        block_m2 = float(((average - block_mean) ** 2).sum())
        total = self.length + n
        delta = block_mean - self._mean
        self._mean += delta * n / total
        self._m2 += block_m2 + delta * delta * self.length * n / total
        self.length = total

    def channel_mean_std(self) -> tuple[float, float]:
        """Mean and unbiased standard deviation of the channel average over all frames."""
        std = (self._m2 / (self.length - 1)) ** 0.5 if self.length > 1 else 0.0
        return self._mean, std

    def __getitem__(self, key: tuple[slice, slice]) -> torch.Tensor:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)
                and isinstance(key[1], slice) and key[1].step in (None, 1)):
            raise TypeError("a SignalFile is read as signal[:, start:end]")
        start, end, _ = key[1].indices(self.length)
        n = max(0, end - start)
        frames = np.empty((n, self.channels), dtype="<f4")
        if n:
            self._file.seek(start * 4 * self.channels)
            if self._file.readinto(frames) != frames.nbytes:
                raise AudioError("a temporary audio file was cut short while being read back")
        return torch.from_numpy(np.ascontiguousarray(frames.T, dtype=np.float32))

    def blocks(self) -> Iterator[torch.Tensor]:
        """The whole signal again, as consecutive `(channels, n)` blocks."""
        for start in range(0, self.length, _READ_FRAMES):
            yield self[:, start : start + _READ_FRAMES]

    def close(self) -> None:
        """Delete the file."""
        self._file.close()

    def __enter__(self) -> "SignalFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self.close()


@dataclass
class SpooledAudio:
    """A decoded input kept on disk: `signal` at `samplerate`, and the file's own facts.

    `native` holds the decoded signal at the file's own rate (channels converted), when it was
    asked for and differs from `signal`. `close()` deletes both files.
    """

    signal: SignalFile
    samplerate: int
    native_samplerate: int
    native_channels: int
    native_frames: int
    native: Optional[SignalFile] = None

    def close(self) -> None:
        self.signal.close()
        if self.native is not None:
            self.native.close()

    def __enter__(self) -> "SpooledAudio":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self.close()


def spool_audio(
    path: PathLike,
    samplerate: Optional[int] = None,
    channels: Optional[int] = None,
    *,
    folder: Optional[PathLike] = None,
    keep_native: bool = False,
) -> SpooledAudio:
    """Decode `path` like `load_audio`, but into temporary files in `folder` (default: the
    system's temporary folder) instead of memory.

    Memory stays bounded by one decoding block whatever the track's length. Raises AudioError
    like `load_audio`, and an AudioError naming the folder when the temporary files cannot be
    written there.
    """
    decoding = _Decoding(Path(path), samplerate, channels)
    where = Path(folder or tempfile.gettempdir())
    files: list[SignalFile] = []

    def new_file() -> SignalFile:
        try:
            where.mkdir(parents=True, exist_ok=True)
            files.append(SignalFile(decoding.channels, where))
        except OSError as exc:
            raise write_error(where, exc) from None
        return files[-1]

    def store(signal: SignalFile, block: torch.Tensor) -> None:
        try:
            signal.append(block)
        except OSError as exc:
            raise write_error(where, exc) from None

    try:
        signal = new_file()
        native = new_file() if keep_native and decoding.samplerate != decoding.native_samplerate else None
        for raw, converted in decoding:
            store(signal, converted)
            if native is not None:
                store(native, raw)
    except BaseException:
        for item in files:
            item.close()
        raise
    return SpooledAudio(signal, decoding.samplerate, decoding.native_samplerate, decoding.native_channels,
                        decoding.decoded, native)


