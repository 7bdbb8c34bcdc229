"""From one input file to stem files on disk, with bounded memory.

Owns the per-track pipeline the command line runs: decode into temporary files (next to the
outputs, deleted whatever happens), separate them as a stream, turn mono back into mono, build
`no_STEM` for two-stem output, resample back to the input's rate block by block, prevent
clipping, and encode every stem atomically (all stems of a track appear together, or none
does). Neither the input nor the stems are ever held in memory in full, so memory does not grow
with the track's length. With `clip="rescale"` the loudest sample is only known at the end, so
stems are first spooled as raw float32 next to their targets and encoded in a second pass.

It must not print or parse options (cli.py does), choose file names (batch.py does), nor know how
segments are computed (separate.py does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from stemsplit.audio import (AudioWriter, SignalFile, SpooledAudio, StreamResampler, commit_together,
                             encodable_samplerate, fit_length, mp3_compression_level, output_subtype, spool_audio,
                             temp_path_for, write_error)
from stemsplit.constants import CLIP_MODES
from stemsplit.errors import ModelError
from stemsplit.separate import Separator

_SPOOL_READ_FRAMES = 1 << 18


@dataclass
class OutputOptions:
    """How stems are written. `keep_samplerate=False` writes at the model's rate."""

    fmt: str = "wav"
    bit_depth: int = 16
    mp3_bitrate: int = 320
    clip: str = "rescale"
    keep_samplerate: bool = True


@dataclass
class TrackResult:
    """What separating one file produced."""

    outputs: dict[str, Path]
    duration: float  # seconds of audio
    samplerate: int  # rate of the written stems
    scale: float = 1.0  # factor applied by clip="rescale" (1.0 when nothing was too loud)


def output_stems(sources: Sequence[str], stems: Optional[Sequence[str]], two_stems: Optional[str]) -> list[str]:
    """Names of the files a track produces; ModelError for stems the model does not have."""
    if two_stems is not None:
        if stems:
            raise ModelError("--stems and --two-stems cannot be combined")
        if two_stems not in sources:
            raise ModelError(f"unknown stem {two_stems!r}; this model has {', '.join(sources)}")
        return [two_stems, f"no_{two_stems}"]
    if not stems:
        return list(sources)
    unknown = [s for s in stems if s not in sources]
    if unknown:
        raise ModelError(f"unknown stem(s) {', '.join(unknown)}; this model has {', '.join(sources)}")
    return list(dict.fromkeys(stems))


class _Spool:
    """Raw float32 frames in a hidden file next to the final output (for two-pass rescaling)."""

    def __init__(self, target: Path, channels: int) -> None:
        self.target, self.channels = target, channels
        self.path = temp_path_for(target)
        self._handle = open(self.path, "wb")

    def write(self, block: torch.Tensor) -> None:
        try:
            self._handle.write(block.T.contiguous().numpy().astype("<f4", copy=False).tobytes())
        except OSError as exc:
            raise write_error(self.target, exc) from None

    def close(self) -> None:
        try:
            self._handle.close()
        except OSError as exc:
            raise write_error(self.target, exc) from None

    def blocks(self) -> Iterator[torch.Tensor]:
        """Read the spooled frames back as `(channels, n)` tensors."""
        frame = 4 * self.channels
        with open(self.path, "rb") as handle:
            while True:
                data = handle.read(_SPOOL_READ_FRAMES * frame)
                if not data:
                    break
                yield torch.from_numpy(np.frombuffer(data, dtype="<f4").reshape(-1, self.channels).T.copy())

    def discard(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)


def separate_file(
    path: Union[str, Path],
    separator: Separator,
    targets: dict[str, Path],
    options: OutputOptions,
    two_stems: Optional[str] = None,
    on_start: Optional[Callable[[float], None]] = None,
) -> TrackResult:
    """Separate `path` and write one file per entry of `targets` (`{stem: final path}`).

    Keys of `targets` are model sources, or `STEM` and `no_STEM` with `two_stems=STEM`. Nothing
    appears at any final path unless every stem was written completely. `on_start` receives the
    track's duration in seconds once it is decoded. The decoded input lives in anonymous
    temporary files in the first target's folder while the track is processed.
    """
    if options.clip not in CLIP_MODES:
        raise ValueError(f"unknown clip mode {options.clip!r}")
    # with clip="rescale" the stem files are opened only after the whole separation: an impossible
    # format (flac at 32 bits, an unknown MP3 bitrate) must be refused before that work, not after
    output_subtype(options.fmt, options.bit_depth)
    if options.fmt == "mp3":
        mp3_compression_level(options.mp3_bitrate)
    path = Path(path)
    # no_STEM is the mixture minus STEM at the output rate: keep the input at its own rate too
    keep_native = two_stems is not None and options.keep_samplerate
    folder = next(iter(targets.values())).parent
    made = _missing_folders(folder)
    try:
        with spool_audio(path, separator.samplerate, separator.audio_channels, folder=folder,
                         keep_native=keep_native) as loaded:
            if on_start is not None:
                on_start(loaded.signal.shape[-1] / separator.samplerate)
            return _separate_spooled(loaded, separator, targets, options, two_stems)
    except BaseException:
        _remove_if_empty(made)
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed track created, deepest first, where nothing else was put.

    A failure leaves no stem files; it should not leave `separated/<model>/<track>/` behind
    either, or a batch of bad inputs litters the output folder with empty track folders.
    """
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:  # never made: the track failed before anything was written
            continue
        except OSError:  # not empty: another track wrote there, and so into its parents
            return


def _separate_spooled(
    loaded: SpooledAudio,
    separator: Separator,
    targets: dict[str, Path],
    options: OutputOptions,
    two_stems: Optional[str],
) -> TrackResult:
    """Separate an already decoded input and write its stems (see `separate_file`)."""
    wanted = [two_stems] if two_stems is not None else [s for s in targets]
    wished = loaded.native_samplerate if options.keep_samplerate else separator.samplerate
    out_rate = encodable_samplerate(options.fmt, wished)  # mp3 cannot hold 96 kHz, say
    mono = loaded.native_channels == 1
    channels = 1 if mono else separator.audio_channels
    # no_STEM is the mixture minus STEM at the output rate when the mixture is at hand there (so
    # the pair sums back to the input exactly); otherwise it is made at the model's rate and
    # resampled with STEM
    mixture: Optional[SignalFile] = None
    if out_rate == loaded.native_samplerate and loaded.native is not None:
        mixture = loaded.native
    elif out_rate == separator.samplerate:
        mixture = loaded.signal
    names = list(targets)
    spooled = options.clip == "rescale"
    opened: list = []  # every spool and writer created, so that any failure can remove them all

    frames = math.ceil(loaded.native_frames * out_rate / loaded.native_samplerate)

    def writer_for(name: str) -> AudioWriter:
        writer = AudioWriter(targets[name], out_rate, channels, bit_depth=options.bit_depth, fmt=options.fmt,
                             mp3_bitrate=options.mp3_bitrate, frames=frames)
        opened.append(writer)
        return writer

    try:
        sinks: list = []
        for name in names:
            if spooled:
                sinks.append(_Spool(targets[name], channels))
                opened.append(sinks[-1])
            else:
                sinks.append(writer_for(name))
        resampler = StreamResampler(separator.samplerate, out_rate)
        written = 0
        peak = 0.0

        def with_rest(block: torch.Tensor, mix: SignalFile, start: int) -> torch.Tensor:
            """`(1, channels, n)` STEM -> STEM and no_STEM, `mix` read from frame `start`."""
            rest = mix[:, start : start + block.shape[-1]][:channels] - block[0]
            return torch.stack([block[0], rest])

        def emit(block: torch.Tensor) -> None:
            """Write `(stems, channels, n)` at the output rate to the sinks."""
            nonlocal written, peak
            n = block.shape[-1]
            if n == 0:
                return
            if two_stems is not None and mixture is not None:
                block = with_rest(block, mixture, written)
            if options.clip == "clamp":
                block = block.clamp(-1.0, 1.0)
            peak = max(peak, float(block.abs().max()))
            for sink, stem in zip(sinks, block):
                sink.write(stem)
            written += n

        rest_first = two_stems is not None and mixture is None
        stems_count = len(names) if rest_first else len(wanted)
        for start, block in separator.stream(loaded.signal, wanted):
            if mono:
                block = block.mean(1, keepdim=True)
            if rest_first:
                block = with_rest(block, loaded.signal, start)
            emit(resampler.push(block.flatten(0, 1)).unflatten(0, (stems_count, channels)))
        same_rate = out_rate == loaded.native_samplerate
        tail = resampler.flush(full=same_rate).reshape(stems_count, channels, -1)
        if same_rate:  # keep the input's length exactly
            tail = fit_length(tail, loaded.native_frames - written)
        emit(tail)

        scale = 1.0
        writers = sinks
        if spooled:
            scale = 1.0 / max(1.01 * peak, 1.0)
            writers = []
            for name, spool in zip(names, sinks):
                spool.close()
                writer = writer_for(name)
                for block in spool.blocks():
                    writer.write(block * scale if scale != 1.0 else block)
                writer.close()
                spool.discard()
                writers.append(writer)
        commit_together(writers)
    except BaseException:
        for item in opened:
            item.abort() if isinstance(item, AudioWriter) else item.discard()
        raise
    return TrackResult(
        outputs=dict(targets), duration=loaded.signal.shape[-1] / separator.samplerate, samplerate=out_rate,
        scale=scale
    )
