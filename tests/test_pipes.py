"""Shell pipes: `-` reads a track from stdin, `-o -` streams one stem to stdout (real CLI runs)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import GainModel, tone

from stemsplit.audio.decode import load_audio
from stemsplit.audio.pipe import StreamWriter
from stemsplit.engine.separator import Separator
from stemsplit.errors import ModelError
from stemsplit.pipeline import OutputOptions, separate_file, separate_to_stream


def _cli(*args: str, cwd, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "stemsplit", *args], cwd=cwd, input=stdin, capture_output=True,
                          env=env, timeout=300)


@pytest.fixture()
def song(tmp_path):
    path = tmp_path / "song.wav"
    sf.write(path, tone(1.5, 44100, 2), 44100)
    return path


def test_stdin_is_a_track_named_by_name(tmp_path, song, tiny_checkpoint):
    result = _cli("-", "--name", "my song", "--model-path", str(tiny_checkpoint), "-o", "sep", cwd=tmp_path,
                  stdin=song.read_bytes())
    assert result.returncode == 0, result.stderr
    oracle = _cli(str(song), "--model-path", str(tiny_checkpoint), "-o", "file", cwd=tmp_path)
    for stem in ("drums", "bass", "other", "vocals"):
        ours = tmp_path / "sep" / "tiny" / "my song" / f"{stem}.wav"
        assert ours.read_bytes() == (tmp_path / "file" / "tiny" / "song" / f"{stem}.wav").read_bytes()
    assert oracle.returncode == 0
    assert not [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(".stemsplit-stdin-")]


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_one_stem_streams_to_stdout_as_the_file_would_be(tmp_path, song, tiny_checkpoint, fmt):
    """`stemsplit - --stems vocals -o - < in.wav | ...`: stdout holds the stem and nothing else."""
    result = _cli("-", "--stems", "vocals", "-o", "-", "--format", fmt, "--model-path", str(tiny_checkpoint),
                  cwd=tmp_path, stdin=song.read_bytes())
    assert result.returncode == 0, result.stderr
    (tmp_path / f"piped.{fmt}").write_bytes(result.stdout)
    _cli(str(song), "--model-path", str(tiny_checkpoint), "--format", fmt, "-o", "file", cwd=tmp_path)
    piped = load_audio(tmp_path / f"piped.{fmt}")  # (a FLAC stream does not know its length: read to its end)
    filed = load_audio(tmp_path / "file" / "tiny" / "song" / f"vocals.{fmt}")
    assert piped.samplerate == 44100 and piped.wav.shape == filed.wav.shape == (2, 66150)
    assert torch.equal(piped.wav, filed.wav)


def test_two_stems_pick_the_rest_and_a_stream_of_unknown_length_is_read(tmp_path, song, tiny_checkpoint):
    """A FLAC written to a pipe (unknown length) in, no_vocals out."""
    flac = io.BytesIO()
    sf.write(flac, tone(1.5, 44100, 2), 44100, format="FLAC")
    data = bytearray(flac.getvalue())
    data[21] &= 0xF0  # STREAMINFO's total-samples field: 0, "unknown", as a pipe leaves it
    data[22:26] = bytes(4)
    result = _cli("-", "--two-stems", "vocals", "--stems", "no_vocals", "-o", "-", "--model-path",
                  str(tiny_checkpoint), cwd=tmp_path, stdin=bytes(data))
    assert result.returncode == 0, result.stderr
    (tmp_path / "rest.wav").write_bytes(result.stdout)
    assert load_audio(tmp_path / "rest.wav").wav.shape == (2, 66150)


@pytest.mark.parametrize("args, message", [
    (["--stems", "vocals,drums"], "-o - streams one stem"),
    ([], "-o - streams one stem"),
    (["--stems", "vocals", "--json"], "--json cannot be used"),
    (["--stems", "vocals", "--format", "mp3"], "streams wav or flac"),
    (["--two-stems", "vocals", "--stems", "bass"], "-o - streams one stem"),
])
def test_stdout_usage_errors(tmp_path, song, tiny_checkpoint, args, message):
    result = _cli(str(song), "-o", "-", *args, "--model-path", str(tiny_checkpoint), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr.decode() and result.stdout == b""


def test_a_failure_after_bytes_were_written_raises(tmp_path, song):
    """Bytes that went down the pipe stay there: the failure must reach the caller (the CLI exits 1)."""

    class Breaks(GainModel):
        def forward(self, mix):
            out = super().forward(mix)
            return out * float("nan") if self.calls > 1 else out

    separator = Separator(Breaks(samplerate=44100, segment=0.5), device="cpu", precision="fp32")
    stream = io.BytesIO()
    with pytest.raises(ModelError, match="NaN"):
        separate_to_stream(song, separator, stream, "vocals", OutputOptions(clip="none"))
    assert len(stream.getvalue()) > 44  # the header and the first blocks went out


def test_stream_writer_pads_or_cuts_to_the_announced_length():
    stream = io.BytesIO()
    writer = StreamWriter(stream, 8000, 1, frames=100)
    writer.write(np.full((1, 60), 0.5, np.float32))
    writer.close()
    data, rate = sf.read(io.BytesIO(stream.getvalue()), dtype="float32")
    assert rate == 8000 and data.shape == (100,) and np.all(data[60:] == 0)
    stream = io.BytesIO()
    writer = StreamWriter(stream, 8000, 1, frames=10)
    writer.write(torch.full((1, 60), 0.5))
    writer.close()
    assert sf.info(io.BytesIO(stream.getvalue())).frames == 10 and len(stream.getvalue()) == 44 + 20


def test_stdout_stream_equals_the_stem_file_in_process(tmp_path, song):
    separator = Separator(GainModel(samplerate=44100, segment=0.5), device="cpu", precision="fp32")
    for clip in ("rescale", "clamp"):
        stream = io.BytesIO()
        options = OutputOptions(clip=clip)
        separate_to_stream(song, separator, stream, "bass", options)
        separate_file(song, separator, {"bass": tmp_path / f"{clip}.wav"}, options)
        assert sf.read(io.BytesIO(stream.getvalue()))[0].tolist() == sf.read(tmp_path / f"{clip}.wav")[0].tolist()
