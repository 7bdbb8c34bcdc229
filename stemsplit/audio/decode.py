"""Decoding: from an audio file to float32 `(channels, time)` blocks at the rate asked for.

Owns reading every input format: soundfile (wav, flac, mp3, ogg/vorbis, opus, aiff, ...) and, for
other containers (m4a, aac, webm, video files) or content libsndfile does not know, an `ffmpeg`
found on PATH; truncation and corruption checks; channel conversion; resampling block by block
(`_Decoding`) and `load_audio`, the whole decoded track in memory. Every problem is an AudioError
naming the file. It must not write files (see `spool` and `encode`) nor know about models.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Union

import numpy as np
import soundfile as sf
import torch

from stemsplit.audio.resample import StreamResampler
from stemsplit.constants import FFMPEG_EXTENSIONS, SOUNDFILE_EXTENSIONS
from stemsplit.errors import AudioError

PathLike = Union[str, "os.PathLike[str]"]

_BLOCK_FRAMES = 1 << 18  # frames decoded per read: bounds the transient memory of decoding


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
    # a stream written to a pipe (FLAC from `ffmpeg -f flac -`) does not know its length: libsndfile
    # then announces the largest count it can, and the file is read to its end instead
    unknown = handle.frames >= 1 << 62

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
            if not guessed and not unknown and handle.frames > 0 and read < handle.frames:
                raise AudioError(
                    f"{path}: truncated or corrupted file (decoded {read} of {handle.frames} frames)"
                )

    return _Source(handle.samplerate, handle.channels, None if guessed or unknown else handle.frames, blocks(),
                   handle.close)


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

