"""Shared fixtures: tiny models, a saved tiny checkpoint, and real audio files in every format.

Everything is generated on the fly into pytest's temporary folders; nothing is downloaded.
"""
from __future__ import annotations

import atexit
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Offline for the whole session, every `stemsplit` subprocess included (they inherit os.environ):
# a run without a model name gets the embedded model with no socket opened. Tests of downloads and
# of the default's network attempt unset it (the `online` fixture, or their own environment).
os.environ["STEMSPLIT_OFFLINE"] = "1"
# and an empty model cache of its own: a user's cached htdemucs must not become the tests' default
_CACHE = tempfile.mkdtemp(prefix="stemsplit-test-cache-")
os.environ["STEMSPLIT_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)
torch.set_num_threads(1)

SOURCES = ["drums", "bass", "other", "vocals"]


class GainModel(nn.Module):
    """A model whose output is known exactly: source k is the input times `gains[k]`.

    Being pointwise, a correct overlap-add must reproduce `gains[k] * mix` at every sample,
    seams included. `valid_length` (v2-style padding) or `use_train_segment` (HTDemucs-style
    fixed length) can be switched on to exercise the padding paths; `calls` counts forwards.
    """

    def __init__(self, samplerate: int = 8000, segment: float = 1.0, gains=(0.1, 0.2, 0.3, 0.4),
                 padding: str = "none") -> None:
        super().__init__()
        self.samplerate = samplerate
        self.audio_channels = 2
        self.sources = SOURCES[: len(gains)]
        self.segment = segment
        self.gains = nn.Parameter(torch.tensor(gains, dtype=torch.float32), requires_grad=False)
        self.padding = padding
        self.use_train_segment = padding == "fixed"
        self.calls = 0
        if padding == "valid":
            self.valid_length = lambda length: 64 * math.ceil(length / 64) + 32

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.padding == "valid":
            assert mix.shape[-1] % 64 == 32, "input not padded to a valid length"
        if self.padding == "fixed":
            assert mix.shape[-1] <= int(self.segment * self.samplerate)
        return mix[:, None] * self.gains[None, :, None, None]


def gain_expected(model: GainModel, mix: torch.Tensor) -> torch.Tensor:
    """What a perfect separator returns for `mix` with a GainModel (normalisation included)."""
    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    return ((mix - mean) / std)[None] * model.gains[:, None, None] * std + mean


def tiny_demucs(samplerate: int = 44100, segment: float = 1.0, seed: int = 0) -> nn.Module:
    """A random 4-source stemsplit.nn.Demucs small enough to run in milliseconds."""
    from stemsplit.nn import Demucs

    torch.manual_seed(seed)
    return Demucs(sources=list(SOURCES), channels=4, depth=2, lstm_layers=0, samplerate=samplerate,
                  segment=segment).eval()


@pytest.fixture
def online(monkeypatch) -> None:
    """Lift the session's offline mode (see the top of this file) for one test."""
    monkeypatch.delenv("STEMSPLIT_OFFLINE", raising=False)


@pytest.fixture
def gain_model() -> GainModel:
    return GainModel()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny 44.1 kHz model saved as a native checkpoint, for `--model-path`."""
    from stemsplit.models.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(tiny_demucs(), path)
    return path


def tone(seconds: float, samplerate: int, channels: int, seed: int = 0) -> np.ndarray:
    """A `(frames, channels)` float32 test signal: two tones plus a little noise, peak ~0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * samplerate)) / samplerate
    cols = [0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.1 * np.sin(2 * np.pi * 1000 * t)
            + 0.05 * rng.standard_normal(t.shape) for c in range(channels)]
    return np.stack(cols, 1).astype(np.float32)


# name -> (samplerate, channels, soundfile write kwargs)
AUDIO_SPECS = {
    "stereo.wav": (44100, 2, {}),
    "mono.wav": (44100, 1, {}),
    "hi24.flac": (96000, 2, {"subtype": "PCM_24"}),
    "song.mp3": (44100, 2, {}),
    "song.ogg": (44100, 2, {}),
    "song.opus": (48000, 2, {"format": "OGG", "subtype": "OPUS"}),
    "song.aiff": (22050, 2, {}),
    "low.wav": (8000, 1, {}),
    "max.wav": (192000, 2, {"subtype": "FLOAT"}),
    "mono48.flac": (48000, 1, {}),
}


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """Real audio files in every soundfile format, several rates, mono and stereo (1.2 s each)."""
    folder = tmp_path_factory.mktemp("audio")
    for name, (rate, channels, kwargs) in AUDIO_SPECS.items():
        sf.write(folder / name, tone(1.2, rate, channels, seed=len(name)), rate, **kwargs)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is not None:
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(folder / "stereo.wav"), "-c:a", "aac",
                        str(folder / "song.m4a")], check=True)
    return folder


def read_audio(path, samplerate=None, channels=None):
    """A decoded file and its rate: `(wav, samplerate)`, the way most tests want it."""
    from stemsplit.audio.decode import load_audio

    loaded = load_audio(path, samplerate, channels)
    return loaded.wav, loaded.samplerate


def write_audio(path, wav, samplerate, **options):
    """Write a whole `(channels, time)` tensor through the stem writer (atomically)."""
    from stemsplit.audio.encode import AudioWriter

    with AudioWriter(path, samplerate, wav.shape[0], frames=wav.shape[-1], **options) as writer:
        writer.write(wav)


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m stemsplit ARGS` for real; stdout is a pipe, so output is plain text."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "stemsplit", *args], cwd=cwd, capture_output=True,
                          text=True, env=full_env, timeout=300)


def file_tree(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` by its relative path, with its bytes: two runs' outputs compare whole."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def comparable_records(records, out: Path) -> list[dict]:
    """Batch records as dicts with their outputs relative to `out` and no timing, so that runs into
    different folders (local, Ray) compare equal when they did the same."""
    return [dict(r.as_dict(), seconds=None, outputs={k: os.path.relpath(v, out) for k, v in r.outputs.items()})
            for r in records]


def ray_worker_pythonpath() -> str:
    """PYTHONPATH for Ray workers: this tree and the tests folder (for worker setup hooks), then the caller's."""
    root = Path(__file__).resolve().parents[1]
    return os.pathsep.join([str(root), str(root / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])
