"""One track, from its input to its stems: the only track pipeline.

Owns the way from a decoded input to stems: the input is spooled (a file, into temporary files:
memory does not grow with its length) or taken as a tensor; the Separator streams stems at the
model's rate; mono is turned back into mono, `no_STEM` is made for two-stem output, stems are
resampled back to the input's rate block by block and clamped if asked; then a sink (`sinks`)
takes them: stem files written atomically as a group, one stem streamed to a pipe, or tensors.
The API's `separate()`, the CLI's batch (`separate_file`), `-o -` (`separate_to_stream`) and
`evaluate` all run this.
It must not print or parse options (cli does), choose file names (batch does), nor know how
segments are computed (engine does).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Protocol, Sequence, Union

import torch
from torch import nn

from stemsplit.audio.encode import encodable_samplerate, mp3_compression_level, output_subtype, write_error
from stemsplit.audio.resample import StreamResampler, fit_length, resample
from stemsplit.audio.spool import SpooledAudio, spool_audio
from stemsplit import atomic
from stemsplit.constants import CLIP_MODES
from stemsplit.engine.plan import source_indices
from stemsplit.engine.separator import LongSignal, Separator
from stemsplit.errors import AudioError, ModelError, SettingsError
from stemsplit.sinks import FileSink, StreamSink, TensorSink


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


class TrackAudio(Protocol):
    """A decoded input: `signal` at the model's rate and channels, and the input's own facts.

    `native` is the input at its own rate (channels converted), where it was kept and differs
    from `signal`. `stemsplit.audio.spool.SpooledAudio` is one; `_TensorInput` another.
    """

    signal: LongSignal
    native: Optional[LongSignal]
    native_samplerate: int
    native_channels: int
    native_frames: int


def output_stems(sources: Sequence[str], stems: Optional[Sequence[str]], two_stems: Optional[str]) -> list[str]:
    """Names of the stems a track produces; SettingsError for stems the model does not have."""
    if two_stems is not None:
        if stems:
            raise SettingsError("stems", "and two_stems cannot be combined")
        source_indices(sources, [two_stems], param="two_stems")
        return [two_stems, f"no_{two_stems}"]
    if not stems:
        return list(sources)
    source_indices(sources, stems, param="stems")
    return list(dict.fromkeys(stems))


# ---- the stream of output blocks -----------------------------------------------------------------


def _output_blocks(audio: TrackAudio, separator: Separator, wanted: list[str], two_stems: Optional[str],
                   out_rate: int, channels: int, clamp: bool) -> Iterator[torch.Tensor]:
    """`(stems, channels, n)` blocks at `out_rate`, consecutive, covering the input's length.

    With `two_stems`, `wanted` is `[STEM]` and blocks hold STEM and no_STEM. no_STEM is the
    mixture minus STEM at the output rate when the mixture is at hand there (so the pair sums
    back to the input exactly); otherwise it is made at the model's rate and resampled with STEM.
    """
    mono = channels == 1 and separator.audio_channels != 1
    mixture: Optional[LongSignal] = None
    if out_rate == audio.native_samplerate and audio.native is not None:
        mixture = audio.native
    elif out_rate == separator.samplerate:
        mixture = audio.signal
    rest_first = two_stems is not None and mixture is None
    count = 2 if rest_first else len(wanted)  # (with the mixture at hand, no_STEM is made after resampling)
    resampler = StreamResampler(separator.samplerate, out_rate)
    written = 0

    def with_rest(block: torch.Tensor, mix: LongSignal, start: int) -> torch.Tensor:
        """`(1, channels, n)` STEM -> STEM and no_STEM, `mix` read from frame `start`."""
        rest = mix[:, start : start + block.shape[-1]][:channels] - block[0]
        return torch.stack([block[0], rest])

    def finish(block: torch.Tensor) -> torch.Tensor:
        nonlocal written
        if two_stems is not None and mixture is not None:
            block = with_rest(block, mixture, written)
        written += block.shape[-1]
        return block.clamp(-1.0, 1.0) if clamp else block

    for start, block in separator.stream(audio.signal, wanted):
        if mono:
            block = block.mean(1, keepdim=True)
        if rest_first:
            block = with_rest(block, audio.signal, start)
        block = resampler.push(block.flatten(0, 1)).unflatten(0, (count, channels))
        if block.shape[-1]:
            yield finish(block)
    same_rate = out_rate == audio.native_samplerate
    tail = resampler.flush(full=same_rate).reshape(count, channels, -1)
    if same_rate:  # keep the input's length exactly
        tail = fit_length(tail, audio.native_frames - written)
    if tail.shape[-1]:
        yield finish(tail)


def _run(audio: TrackAudio, separator: Separator, sink: Union[FileSink, TensorSink], wanted: list[str],
         two_stems: Optional[str], out_rate: int, channels: int, clamp: bool) -> None:
    for block in _output_blocks(audio, separator, wanted, two_stems, out_rate, channels, clamp):
        sink.write(block)


def _out_format(audio: TrackAudio, separator: Separator, keep_samplerate: bool, keep_channels: bool,
                fmt: Optional[str] = None) -> tuple[int, int, int]:
    """Rate, channels and length of the stems of `audio`."""
    wished = audio.native_samplerate if keep_samplerate else separator.samplerate
    rate = encodable_samplerate(fmt, wished) if fmt is not None else wished  # mp3 cannot hold 96 kHz, say
    channels = 1 if keep_channels and audio.native_channels == 1 else separator.audio_channels
    return rate, channels, math.ceil(audio.native_frames * rate / audio.native_samplerate)


# ---- entry points --------------------------------------------------------------------------------


def _encode(audio: TrackAudio, separator: Separator, make_sink: Callable[[int, int, int], FileSink],
            wanted: list[str], two_stems: Optional[str], options: OutputOptions,
            on_start: Optional[Callable[[float], None]]) -> TrackResult:
    """Run a decoded track into an encoding sink made for its output `(rate, channels, frames)`;
    the sink publishes everything at the end, or drops it on any failure."""
    duration = audio.signal.shape[-1] / separator.samplerate
    if on_start is not None:
        on_start(duration)
    rate, channels, frames = _out_format(audio, separator, options.keep_samplerate, True, options.fmt)
    sink = make_sink(rate, channels, frames)
    try:
        _run(audio, separator, sink, wanted, two_stems, rate, channels, options.clip == "clamp")
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return TrackResult(outputs={}, duration=duration, samplerate=rate, scale=sink.scale)


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
    started = time.time()
    try:
        made = _missing_folders(folder)
        for target in targets.values():  # what a killed run left of these stems
            atomic.remove_stale(target, older_than=started)
    except OSError as exc:  # a folder the user may not read, a name the file system cannot hold
        raise write_error(Path(exc.filename or folder), exc) from None
    try:
        with spool_audio(path, separator.samplerate, separator.audio_channels, folder=folder,
                         keep_native=keep_native) as audio:
            wanted = [two_stems] if two_stems is not None else list(targets)
            result = _encode(audio, separator, lambda *fmt: FileSink(targets, options, *fmt), wanted, two_stems,
                             options, on_start)
            result.outputs = dict(targets)
            return result
    except BaseException:
        _remove_if_empty(made)
        raise


def separate_to_stream(path: Union[str, Path], separator: Separator, stream: IO[bytes], stem: str,
                       options: OutputOptions, two_stems: Optional[str] = None,
                       on_start: Optional[Callable[[float], None]] = None) -> TrackResult:
    """Separate `path` and stream one stem (a model source, or `STEM`/`no_STEM` with
    `two_stems=STEM`) to `stream` as WAV or FLAC, block by block; memory stays bounded.

    Bytes written before a failure stay written: the caller must report the failure (the CLI
    exits non-zero).
    """
    if options.fmt not in ("wav", "flac"):
        raise SettingsError("fmt", f"{options.fmt} cannot be streamed (use wav or flac)")
    output_subtype(options.fmt, options.bit_depth)
    wanted = [two_stems] if two_stems is not None else [stem]
    names = output_stems(separator.sources, None if two_stems is not None else [stem], two_stems)
    if stem not in names:
        raise SettingsError("stem", f"{stem!r} is not among {', '.join(names)}")
    keep_native = two_stems is not None and options.keep_samplerate
    with spool_audio(path, separator.samplerate, separator.audio_channels, keep_native=keep_native) as audio:
        return _encode(audio, separator, lambda *fmt: StreamSink(stream, stem, names.index(stem), options, *fmt),
                       wanted, two_stems, options, on_start)


@dataclass
class _TensorInput:
    """A tensor given to `separate()`, as a decoded input (see `TrackAudio`)."""

    signal: torch.Tensor
    native: Optional[torch.Tensor]
    native_samplerate: int
    native_channels: int
    native_frames: int

    def close(self) -> None:
        pass

    def __enter__(self) -> "_TensorInput":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _tensor_input(wav: torch.Tensor, samplerate: int, separator: Separator) -> _TensorInput:
    wav = wav.detach().to("cpu", torch.float32)
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ModelError(f"expected a (channels, time) tensor, got shape {tuple(wav.shape)}")
    channels = wav.shape[0]
    if channels not in (1, 2):
        raise AudioError(f"tensor has {channels} channels; only mono and stereo are supported")
    native = wav.expand(separator.audio_channels, -1) if channels == 1 else wav
    signal = resample(native, samplerate, separator.samplerate)
    return _TensorInput(signal, native, samplerate, channels, wav.shape[-1])


def separate_audio(audio: TrackAudio, separator: Separator, sources: Optional[Sequence[str]] = None, *,
                   keep_samplerate: bool = True, keep_channels: bool = True) -> torch.Tensor:
    """Separate a decoded input into a `(stems, channels, time)` tensor in memory.

    At the input's rate and channels by default (mono in, mono out), or at the model's.
    """
    wanted = output_stems(separator.sources, sources, None)
    rate, channels, _ = _out_format(audio, separator, keep_samplerate, keep_channels)
    sink = TensorSink()
    _run(audio, separator, sink, wanted, None, rate, channels, clamp=False)
    return sink.result(len(wanted), channels)


def open_input(path_or_tensor: Union[str, Path, torch.Tensor], separator: Separator,
               samplerate: Optional[int] = None) -> Union[SpooledAudio, _TensorInput]:
    """Decode a file into temporary files, or take a tensor at `samplerate` (default: the model's)."""
    if isinstance(path_or_tensor, torch.Tensor):
        return _tensor_input(path_or_tensor, samplerate or separator.samplerate, separator)
    return spool_audio(path_or_tensor, separator.samplerate, separator.audio_channels, keep_native=True)


def separate(
    path_or_tensor: Union[str, Path, torch.Tensor],
    model: Union[None, str, nn.Module] = None,
    *,
    samplerate: Optional[int] = None,
    sources: Optional[Sequence[str]] = None,
    repo: Optional[Union[str, Path]] = None,
    offline: Optional[bool] = None,
    **kwargs: object,
) -> dict[str, torch.Tensor]:
    """Separate a file or a `(channels, time)` tensor; returns `{stem: (channels, time)}`.

    Stems come back at the input's sample rate and channel count (mono in, mono out). A tensor is
    taken to be at `samplerate` (default: the model's). `model` is a model, a catalog name or a
    checkpoint path (None: the default model, as `load_model` resolves it; `offline` as there).
    Other keyword arguments go to `Separator`.
    """
    if not isinstance(model, nn.Module):
        from stemsplit.models.resolve import load_model

        model = load_model(model, repo=repo, offline=offline)
    separator = Separator(model, **kwargs)  # type: ignore[arg-type]
    names = output_stems(separator.sources, sources, None)
    with open_input(path_or_tensor, separator, samplerate) as audio:
        stems = separate_audio(audio, separator, names)
    return dict(zip(names, stems))


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
