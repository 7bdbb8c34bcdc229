"""Where a track's stem blocks go: files written atomically as a group, one stem streamed to a
pipe, or tensors in memory.

Owns the sinks the pipeline writes `(stems, channels, n)` blocks into, and `clip="rescale"`'s
second pass (stems are spooled first, since their loudest sample is known only at the end). It
must not decode, separate, resample or choose file names.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Optional

import torch

from stemsplit.audio.encode import AudioWriter, commit_together, write_error
from stemsplit.audio.pipe import StreamWriter
from stemsplit.audio.spool import SignalFile

if TYPE_CHECKING:
    from stemsplit.pipeline import OutputOptions


class FileSink:
    """Stem files, all committed together or none; spooled first when they are rescaled at the end."""

    def __init__(self, targets: dict[str, Path], options: "OutputOptions", samplerate: int, channels: int,
                 frames: int) -> None:
        self.targets, self.options = targets, options
        self.samplerate, self.channels, self.frames = samplerate, channels, frames
        self.rescale = options.clip == "rescale"
        self.pick: Optional[list[int]] = None  # the rows of each block this sink writes (None: all)
        self.peak = 0.0
        self.scale = 1.0
        self._opened: list = []  # every spool and writer made, so that a failure removes them all
        self._sinks = [self._spool(path) if self.rescale else self._writer(path) for path in targets.values()]

    def _writer(self, path: Path) -> AudioWriter:
        o = self.options
        writer = AudioWriter(path, self.samplerate, self.channels, bit_depth=o.bit_depth, fmt=o.fmt,
                             mp3_bitrate=o.mp3_bitrate, frames=self.frames)
        self._opened.append(writer)
        return writer

    def _spool(self, path: Path) -> SignalFile:
        try:
            self._opened.append(SignalFile(self.channels, folder=self._spool_folder(path)))
        except OSError as exc:
            raise write_error(path, exc) from None
        return self._opened[-1]

    @staticmethod
    def _spool_folder(path: Path) -> Optional[Path]:
        return path.parent  # (beside the stem: the output folder is known to be writable and large)

    def _publish(self, writers: list) -> None:
        commit_together(writers)

    def write(self, block: torch.Tensor) -> None:
        block = block[self.pick] if self.pick is not None else block
        self.peak = max(self.peak, float(block.abs().max()))
        for sink, stem, path in zip(self._sinks, block, self.targets.values()):
            try:
                sink.append(stem) if self.rescale else sink.write(stem)
            except OSError as exc:  # (a spool on a full disk; writers word their own errors)
                raise write_error(path, exc) from None

    def commit(self) -> None:
        writers = self._sinks
        if self.rescale:
            self.scale = 1.0 / max(1.01 * self.peak, 1.0)
            writers = []
            for path, spool in zip(self.targets.values(), self._sinks):
                writer = self._writer(path)
                for block in spool.blocks():
                    writer.write(block * self.scale if self.scale != 1.0 else block)
                writer.close()
                spool.close()
                writers.append(writer)
        self._publish(writers)

    def abort(self) -> None:
        for item in self._opened:
            item.close() if isinstance(item, SignalFile) else item.abort()


class StreamSink(FileSink):
    """One stem streamed to a pipe (`-o -`); with clip="rescale" it is spooled first, since its
    scale is known only at the end."""

    def __init__(self, stream: IO[bytes], stem: str, row: int, options: "OutputOptions", samplerate: int,
                 channels: int, frames: int) -> None:
        self.stream = stream
        super().__init__({stem: Path("-")}, options, samplerate, channels, frames)
        self.pick = [row]

    def _writer(self, path: Path) -> StreamWriter:  # type: ignore[override]
        o = self.options
        writer = StreamWriter(self.stream, self.samplerate, self.channels, fmt=o.fmt, bit_depth=o.bit_depth,
                              frames=self.frames)
        self._opened.append(writer)
        return writer

    @staticmethod
    def _spool_folder(path: Path) -> Optional[Path]:
        return None  # the system's temporary folder

    def _publish(self, writers: list) -> None:
        for writer in writers:
            writer.close()


class TensorSink:
    """Stems kept in memory, as one `(stems, channels, time)` tensor at the end."""

    def __init__(self) -> None:
        self.blocks: list[torch.Tensor] = []

    def write(self, block: torch.Tensor) -> None:
        self.blocks.append(block)

    def result(self, stems: int, channels: int) -> torch.Tensor:
        return torch.cat(self.blocks, -1) if self.blocks else torch.zeros(stems, channels, 0)
