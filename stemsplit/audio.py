"""Audio in and out: decoding, channel conversion, resampling, atomic encoding.

Owns everything between a file on disk and a float32 `(channels, time)` tensor, in both
directions. Decoding goes through soundfile (wav, flac, mp3, ogg/vorbis, opus, aiff, ...) and, for
other containers (m4a, aac, webm, video files), through an `ffmpeg` found on PATH. Inputs are read in
blocks and resampled block by block, either into one tensor (`load_audio`) or, for tracks of any
length, into an anonymous temporary file read back by slices (`spool_audio`, `SignalFile`). Outputs
are written through `AudioWriter`, which streams blocks into a temporary file in the target folder
and renames it into place only when everything succeeded (the mechanics are `atomic`'s).

It must not know about models or separation, and it never prints.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import soundfile as sf
import torch

from stemsplit import atomic
from stemsplit.constants import (FFMPEG_EXTENSIONS, MP3_BITRATES, MP3_SAMPLERATES, OUTPUT_FORMATS,
                                 SOUNDFILE_EXTENSIONS)
from stemsplit.errors import AudioError

PathLike = Union[str, "os.PathLike[str]"]

_BLOCK_FRAMES = 1 << 18  # frames decoded per read: bounds the transient memory of decoding
# julius builds a (new, 2 * width + old) kernel for the reduced ratio old:new; past this many
# coefficients the ratio is too irregular (e.g. 44101 Hz) to resample with it sensibly.
_MAX_KERNEL_COEFFS = 20_000_000


# ---- resampling ---------------------------------------------------------------------------------


class StreamResampler:
    """julius resampling applied block by block, with the same output as one full-length call.

    julius computes output frame k (of `new` samples) from the input around k * old, reaching
    `width` samples to the left and `width + old` to the right, and pads the signal's ends by
    replication. Feeding blocks aligned on multiples of `old` plus enough real context on both
    sides therefore reproduces the full-length result; only the true ends see the replication
    padding, exactly as in a single call.
    """

    def __init__(self, old_sr: int, new_sr: int) -> None:
        import julius

        gcd = math.gcd(old_sr, new_sr)
        self.old, self.new = old_sr // gcd, new_sr // gcd
        self._resample = None
        if self.old != self.new:
            width = math.ceil(24 * self.old / (0.945 * min(self.old, self.new)))
            if self.new * (2 * width + 2 * self.old) > _MAX_KERNEL_COEFFS:
                raise AudioError(
                    f"cannot resample {old_sr} Hz to {new_sr} Hz: the ratio of the two rates is "
                    "too irregular (convert the file to a standard rate such as 44100 Hz first)"
                )
            self._resample = julius.ResampleFrac(old_sr, new_sr)
            # context kept on each side, a whole number of `old` periods larger than the reach
            self._context = (math.ceil((width + self.old) / self.old) + 1) * self.old
        self._history: Optional[torch.Tensor] = None  # already consumed input kept as left context
        self._pending: Optional[torch.Tensor] = None  # input not yet turned into output
        self._channels = 0

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Feed `(channels, n)` samples; returns the output samples that are now final."""
        self._channels = block.shape[0]
        if self._resample is None or block.shape[-1] == 0:  # (julius cannot take an empty signal)
            return block
        self._pending = block if self._pending is None else torch.cat([self._pending, block], -1)
        ready = (self._pending.shape[-1] - self._context) // self.old * self.old
        if ready <= 0:
            return block.new_zeros(block.shape[0], 0)
        return self._run(ready, final=False)

    def flush(self, full: bool = False) -> torch.Tensor:
        """Returns the remaining output once the input has ended.

        The output has floor(n * new / old) samples in all, or with `full` ceil(n * new / old): the
        last one then reaches past the input's end, where julius replicates the last sample.
        """
        if self._resample is None or self._pending is None:
            return torch.zeros(self._channels, 0)
        return self._run(self._pending.shape[-1], final=True, full=full)

    def _run(self, consume: int, final: bool, full: bool = False) -> torch.Tensor:
        assert self._pending is not None and self._resample is not None
        history = self._history
        left = 0 if history is None else history.shape[-1]
        joined = self._pending if history is None else torch.cat([history, self._pending], -1)
        chunk = joined if final else joined[..., : left + consume + self._context]
        out = self._resample(chunk, full=full)
        skip = left // self.old * self.new
        take = out.shape[-1] - skip if final else consume // self.old * self.new
        if final:
            self._history = self._pending = None
        else:
            self._history = joined[..., max(0, left + consume - self._context) : left + consume].clone()
            self._pending = self._pending[..., consume:].clone()
        return out[..., skip : skip + take]


def resample(wav: torch.Tensor, old_sr: int, new_sr: int, length: Optional[int] = None) -> torch.Tensor:
    """Resample `(..., time)` from `old_sr` to `new_sr` with julius (identity when equal).

    With `length`, the result has exactly that many samples (see `fit_length`): the way back to
    a signal's own rate after a trip to another one, where rounding lost a sample or two.
    """
    if old_sr != new_sr:
        resampler = StreamResampler(old_sr, new_sr)
        flat = wav.reshape(math.prod(wav.shape[:-1]), wav.shape[-1])  # (-1 is ambiguous when empty)
        out = torch.cat([resampler.push(flat), resampler.flush(full=length is not None)], -1)
        wav = out.reshape(*wav.shape[:-1], out.shape[-1])
    return wav if length is None else fit_length(wav, length)


def fit_length(wav: torch.Tensor, frames: int) -> torch.Tensor:
    """`(..., time)` cut or extended to `frames` samples, a missing end repeating the last sample.

    Resampling to a model's rate and back rounds the length down twice, losing up to two
    samples; the resampler's full output (`flush(full=True)`) gives back all but at most one,
    and repeating its neighbour for that one keeps the signal continuous: a zero there is a
    click, and stems that no longer sum to their mixture.
    """
    if wav.shape[-1] >= frames:
        return wav[..., : max(frames, 0)]
    if wav.shape[-1] == 0:
        return wav.new_zeros(*wav.shape[:-1], frames)
    return torch.cat([wav, wav[..., -1:].expand(*wav.shape[:-1], frames - wav.shape[-1])], -1)


# ---- decoding -----------------------------------------------------------------------------------


@dataclass
class _Source:
    """An opened input: its format facts and an iterator of `(frames, channels)` float32 blocks.

    Iterating `blocks` to its end releases the decoder. `close` releases it early, and is the only
    way for a source whose blocks were never started (a generator that never ran cannot clean up).
    """

    samplerate: int
    channels: int
    frames: Optional[int]  # None when not known in advance (ffmpeg pipes, MP3s without a length header)
    blocks: Iterator[np.ndarray]
    close: Callable[[], None]


_FFMPEG_TAG = re.compile(r"^\s*\[[^\]]* @ 0x[0-9a-fA-F]+\]\s*")
_DECLARED_SIZE = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _truncation(handle: sf.SoundFile) -> Optional[str]:
    """Why libsndfile's parse log says the file is cut short, if it does.

    libsndfile quietly shortens a WAV/AIFF whose data chunk claims more bytes than the file holds,
    and an Ogg stream without its end; its log (`extra_info`) is the only place that says so.
    Sizes of 0 or 0xFFFFFFFF are "unknown" markers written by streaming encoders, not truncation.
    """
    log = handle.extra_info
    for match in _DECLARED_SIZE.finditer(log):
        declared, actual = int(match.group(2)), int(match.group(3))
        if declared not in (0, 0xFFFFFFFF) and declared > actual:
            return f"the header announces {declared} bytes of audio, the file holds {actual}"
    if any(marker in log for marker in ("ended unexpectedly", "> file length", "lacks an end-of-stream")):
        return "the stream ends before its end marker"
    return None


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence C-level stderr: libmpg123 prints resync notes there when probing non-MP3 data."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _Unrecognised(AudioError):
    """libsndfile does not know the content at all (as opposed to a known but damaged file)."""


def _mp3_length_is_known(path: Path) -> bool:
    """Whether an MP3 announces its length: a Xing, Info or VBRI header in its first frame.

    Without one, libsndfile's frame count is mpg123's guess from the file size and the first
    frame's bitrate: larger than the truth for most constant-bitrate files (which would then look
    truncated) and smaller for some variable-bitrate ones, and libsndfile never reads past it.
    """
    with open(path, "rb") as handle:
        head = handle.read(10)
        start = 0
        if len(head) == 10 and head[:3] == b"ID3":  # skip the ID3v2 tag (size is 4 x 7 bits)
            size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F
            start = 10 + size + (10 if head[5] & 0x10 else 0)  # flag 0x10: a footer follows
        handle.seek(start)
        frame = handle.read(64)  # the headers sit at most 36 bytes into the first frame
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


def _soundfile_source(path: Path) -> _Source:
    """Open `path` with libsndfile; `_Unrecognised` when libsndfile does not know the content.

    The source's `frames` is None for an MP3 without a length header (see `_mp3_length_is_known`):
    it is then read to its end, and if libsndfile stops exactly at its guess an AudioError says
    that the rest could not be read, rather than the track being silently cut short.
    """
    try:
        with _native_stderr_silenced():
            handle = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError):
        raise _Unrecognised(f"{path}: not a recognised audio file (unknown format or corrupted header)") from None
    truncated = _truncation(handle)
    if truncated is not None:
        handle.close()
        raise AudioError(f"{path}: truncated or corrupted file ({truncated})")
    guessed = handle.format == "MP3" and not _mp3_length_is_known(path)

    def blocks() -> Iterator[np.ndarray]:
        with handle:
            read = 0
            while True:
                try:
                    data = handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                except (sf.SoundFileError, RuntimeError) as exc:
                    raise AudioError(f"{path}: corrupted audio data after {read} frames ({exc})") from None
                if data.shape[0] == 0:
                    break
                read += data.shape[0]
                yield data
                if data.shape[0] < _BLOCK_FRAMES:
                    break
            if guessed and read == handle.frames:
                raise AudioError(
                    f"{path}: this MP3 has no length header and libsndfile cannot read past its "
                    f"estimate of {read} frames; install ffmpeg to decode it whole (or re-encode it)"
                )
            if not guessed and handle.frames > 0 and read < handle.frames:
                raise AudioError(
                    f"{path}: truncated or corrupted file (decoded {read} of {handle.frames} frames)"
                )

    return _Source(handle.samplerate, handle.channels, None if guessed else handle.frames, blocks(), handle.close)


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _ffmpeg_source(path: Path, ffmpeg: str) -> _Source:
    """Decode with ffmpeg to a float32 WAV stream on a pipe, and parse its header ourselves."""
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-map", "0:a:0",
           "-f", "wav", "-acodec", "pcm_f32le", "-"]
    errlog = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errlog, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None

    def stop() -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def close() -> None:
        stop()
        proc.stdout.close()
        errlog.close()

    def errors() -> list[str]:
        """ffmpeg's error lines (it runs with `-v error`), without their `[demuxer @ 0x...]` tags."""
        errlog.seek(0)
        text = errlog.read().decode("utf-8", "replace")
        return [_FFMPEG_TAG.sub("", ln).strip() for ln in text.splitlines() if ln.strip()]

    def failure(what: str) -> AudioError:
        stop()  # its error log is complete only once it has exited
        lines = errors()
        close()
        cause = lines[-1] if lines else what
        return AudioError(f"{path}: not a readable audio file (ffmpeg: {cause})")

    header = _read_exact(proc.stdout, 12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise failure("no audio stream")
    channels = samplerate = 0
    while True:
        chunk = _read_exact(proc.stdout, 8)
        if len(chunk) < 8:
            raise failure("no audio data")
        tag, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if tag == b"data":
            break
        body = _read_exact(proc.stdout, size + (size & 1))
        if tag == b"fmt ":
            channels = int.from_bytes(body[2:4], "little")
            samplerate = int.from_bytes(body[4:8], "little")
    if channels <= 0 or samplerate <= 0:
        raise failure("unreadable stream format")

    def blocks() -> Iterator[np.ndarray]:
        frame_bytes = 4 * channels
        try:
            while True:
                data = _read_exact(proc.stdout, _BLOCK_FRAMES * frame_bytes)
                usable = len(data) // frame_bytes * frame_bytes
                if usable:
                    # a copy: a view of the immutable bytes is read-only, and torch warns on stderr
                    # when it wraps one (a mono block is passed on without a transposing copy)
                    yield np.frombuffer(data, dtype="<f4", count=usable // 4).reshape(-1, channels).copy()
                if len(data) < _BLOCK_FRAMES * frame_bytes:
                    break
            # ffmpeg exits with 0 from a truncated or damaged file (a cut download, "File ended
            # prematurely") after decoding what it could: any error it reported fails the file
            if proc.wait() != 0 or errors():
                raise failure(f"exit status {proc.returncode}")
        finally:
            close()

    return _Source(samplerate, channels, None, blocks(), close)


def _open_source(path: Path) -> _Source:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    suffix = path.suffix.lower()
    ffmpeg = shutil.which("ffmpeg")
    refused: Optional[AudioError] = None  # libsndfile's verdict on a file it does not know
    if suffix not in FFMPEG_EXTENSIONS:  # extensions lie (an AAC named .mp3): ffmpeg gets a turn
        try:
            source = _soundfile_source(path)
        except _Unrecognised as exc:
            refused = exc
        else:
            if source.frames is not None or ffmpeg is None:
                return source
            source.close()  # an MP3 whose length libsndfile can only guess: ffmpeg reads it whole
    # for a file that should have been audio, an error in libsndfile's words when ffmpeg fails too
    fallback = refused if suffix in SOUNDFILE_EXTENSIONS else None
    if ffmpeg is None:
        if fallback is not None:
            raise fallback
        raise AudioError(
            f"{path}: cannot decode {suffix or 'extension-less'} files without ffmpeg; install ffmpeg "
            "and make sure it is on PATH (or convert the file to wav/flac/mp3)"
        )
    try:
        return _ffmpeg_source(path, ffmpeg)
    except AudioError:
        if fallback is not None:
            raise fallback from None
        raise


def _convert_channels(block: torch.Tensor, channels: Optional[int], path: Path) -> torch.Tensor:
    have = block.shape[0]
    if channels is None or channels == have:
        return block
    if have > 2:
        raise AudioError(
            f"{path}: has {have} channels; only mono and stereo are supported "
            "(downmix it first, e.g. `ffmpeg -i IN -ac 2 OUT.wav`)"
        )
    if channels == 1:
        return block.mean(0, keepdim=True)
    if have == 1:
        return block.expand(channels, -1)
    raise AudioError(f"{path}: cannot convert {have} channels to {channels}")


class _Decoding:
    """One pass over a file: the format facts, then `(native, converted)` blocks.

    `native` is a decoded block at the file's own rate with channels converted, `converted` the
    output of the block-wise resampler that became final with it (possibly empty). A last pair
    with an empty `native` carries the resampler's tail. Iterating raises AudioError (naming the
    file) for undecodable, truncated or empty files and for NaN or infinite samples.
    """

    def __init__(self, path: Path, samplerate: Optional[int], channels: Optional[int]) -> None:
        self.path = path
        self._source = _open_source(path)
        try:
            self._check(samplerate, channels)
        except BaseException:
            self._source.close()  # its blocks never started, so nothing else would release the decoder
            raise
        self.decoded = 0  # native frames decoded so far

    def _check(self, samplerate: Optional[int], channels: Optional[int]) -> None:
        """Settle the output format; AudioError (naming the file) for one this input cannot give."""
        path, source = self.path, self._source
        self.native_samplerate = source.samplerate
        self.native_channels = source.channels
        self.samplerate = samplerate or source.samplerate
        self.channels = channels or source.channels
        self._convert_to = channels
        if channels is not None and source.channels > 2:
            _convert_channels(torch.zeros(source.channels, 0), channels, path)
        try:
            self._resampler = StreamResampler(source.samplerate, self.samplerate)
        except AudioError as exc:
            raise AudioError(f"{path}: {exc}") from None
        self.expected: Optional[int] = None  # converted frames announced by the container, if any
        if source.frames is not None and source.frames > 0:
            self.expected = source.frames * self._resampler.new // self._resampler.old

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for block in self._source.blocks:
            tensor = torch.from_numpy(np.ascontiguousarray(block.T))
            if not bool(torch.isfinite(tensor).all()):
                bad = self.decoded + int((~torch.isfinite(tensor)).any(0).nonzero()[0])
                raise AudioError(f"{self.path}: contains NaN or infinite samples (first at frame {bad})")
            self.decoded += tensor.shape[-1]
            tensor = _convert_channels(tensor, self._convert_to, self.path)
            yield tensor, self._resampler.push(tensor)
        if self.decoded == 0:
            raise AudioError(f"{self.path}: contains no audio samples (empty or truncated file)")
        yield torch.zeros(self.channels, 0), self._resampler.flush()


@dataclass
class LoadedAudio:
    """A decoded input: `wav` at `samplerate`, plus the file's own rate, channels and length."""

    wav: torch.Tensor
    samplerate: int
    native_samplerate: int
    native_channels: int
    native_frames: int


def load_audio(path: PathLike, samplerate: Optional[int] = None, channels: Optional[int] = None) -> LoadedAudio:
    """Decode `path` block by block, converting channels and resampling on the fly.

    Raises AudioError (naming the file) for missing, empty, undecodable, truncated files and for
    NaN or infinite samples.
    """
    decoding = _Decoding(Path(path), samplerate, channels)
    expected = decoding.expected
    parts: list[torch.Tensor] = []
    wav = torch.empty(decoding.channels, expected) if expected is not None else None
    filled = 0

    def store(piece: torch.Tensor) -> None:
        nonlocal filled, wav
        if piece.shape[-1] == 0:
            return
        if wav is not None and filled + piece.shape[-1] <= wav.shape[-1]:
            wav[:, filled : filled + piece.shape[-1]] = piece
        else:
            if wav is not None:  # the decoder delivered more than announced: switch to a list
                parts.append(wav[:, :filled])
                wav = None
            parts.append(piece.clone())
        filled += piece.shape[-1]

    for _, converted in decoding:
        store(converted)
    if wav is not None and not parts:
        result = wav[:, :filled]
    else:
        if wav is not None:
            parts.insert(0, wav[:, :filled])
        result = torch.cat(parts, -1)
    return LoadedAudio(result.contiguous(), decoding.samplerate, decoding.native_samplerate,
                       decoding.native_channels, decoding.decoded)


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


def read_audio(
    path: PathLike, samplerate: Optional[int] = None, channels: Optional[int] = None
) -> tuple[torch.Tensor, int]:
    """Decode `path` to a float32 `(channels, time)` tensor, optionally resampled/converted.

    Returns the tensor and its sample rate. Mono becomes dual-mono when `channels=2`; stereo is
    averaged when `channels=1`; files with more than two channels are refused when a conversion is
    asked for.
    """
    loaded = load_audio(path, samplerate, channels)
    return loaded.wav, loaded.samplerate


# ---- encoding -----------------------------------------------------------------------------------


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

    def write(self, block: torch.Tensor) -> None:
        """Append `(channels, n)` samples."""
        assert self._file is not None, "writer already closed"
        if not self._float:
            block = block.clamp(-1.0, 1.0)
        data = block.detach().to("cpu", torch.float32).T.contiguous().numpy()
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


def write_audio(
    path: PathLike,
    wav: torch.Tensor,
    samplerate: int,
    *,
    bit_depth: int = 16,
    fmt: Optional[str] = None,
    mp3_bitrate: int = 320,
) -> None:
    """Write `(channels, time)` to `path` atomically (temporary file + rename)."""
    if wav.dim() != 2:
        raise ValueError(f"expected a (channels, time) tensor, got shape {tuple(wav.shape)}")
    with AudioWriter(path, samplerate, wav.shape[0], bit_depth=bit_depth, fmt=fmt, mp3_bitrate=mp3_bitrate,
                     frames=wav.shape[-1]) as w:
        for start in range(0, wav.shape[-1], _BLOCK_FRAMES):
            w.write(wav[:, start : start + _BLOCK_FRAMES])
