"""Training data: folder checks (bad data is refused before training, naming the file), excerpts
read by seeking, deterministic per-index sampling. Also holds `write_musdb`, the small MUSDB-style
folder writer the other train tests import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemsplit.errors import DataError
from stemsplit.data.musdb import check_track, read_excerpt, scan_folder, split_roots
from stemsplit.train.data import ExcerptDataset, FolderSource, StepSampler

SOURCES = ["drums", "bass", "other", "vocals"]
RATE = 8000


def write_track(folder: Path, seconds: float, seed: int, rate: int = RATE, sources=SOURCES) -> dict[str, np.ndarray]:
    """One track of distinct sines per source (a different pitch set per seed), stereo, as wav."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    stems = {}
    for i, name in enumerate(sources):
        wave = 0.3 * np.sin(2 * np.pi * 100 * 2**i * (1 + 0.2 * seed) * t + i)
        stems[name] = np.stack([wave, 0.5 * wave]).astype(np.float32)
        sf.write(folder / f"{name}.wav", stems[name].T, rate, subtype="FLOAT")
    sf.write(folder / "mixture.wav", sum(stems.values()).T, rate, subtype="FLOAT")
    return stems


def write_musdb(root: Path, train: int = 2, valid: int = 1, seconds: float = 1.0) -> Path:
    """<root>/{train,valid}/<track>/{mixture,drums,bass,other,vocals}.wav."""
    for split, count in (("train", train), ("valid", valid)):
        for i in range(count):
            write_track(root / split / f"{split}{i}", seconds, seed=i + (100 if split == "valid" else 0))
    return root


def test_scan_reads_tracks_and_split(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    train_root, valid_root = split_roots(root)
    assert (train_root, valid_root) == (root / "train", root / "valid")
    tracks = scan_folder(train_root, SOURCES, RATE)
    assert [t.name for t in tracks] == ["train0", "train1"]
    assert tracks[0].frames == RATE // 2 and tracks[0].channels == 2
    assert split_roots(train_root) == (train_root, None)  # a plain folder of tracks is all training
    (train_root / ".ipynb_checkpoints").mkdir()  # not tracks: they used to fail with "missing stem"
    (train_root / "__MACOSX").mkdir()
    assert [t.name for t in scan_folder(train_root, SOURCES, RATE)] == ["train0", "train1"]


@pytest.mark.parametrize("problem", ["missing", "length", "rate", "unreadable", "channels"])
def test_bad_track_names_the_file(tmp_path, problem):
    folder = tmp_path / "song"
    write_track(folder, 0.25, seed=0)
    bad = folder / "bass.wav"
    if problem == "missing":
        bad.unlink()
    elif problem == "length":
        sf.write(bad, np.zeros((RATE // 8, 2), np.float32), RATE)
    elif problem == "rate":
        sf.write(bad, np.zeros((RATE // 4, 2), np.float32), RATE * 2)
    elif problem == "unreadable":
        bad.write_bytes(b"RIFF not really a wav file")
    else:
        sf.write(bad, np.zeros((RATE // 4, 3), np.float32), RATE)
    with pytest.raises(DataError, match="bass.wav"):
        check_track(folder, SOURCES, RATE)


def test_wrong_samplerate_for_model_names_the_file(tmp_path):
    write_track(tmp_path / "song", 0.25, seed=0, rate=RATE * 2)
    with pytest.raises(DataError, match=r"drums\.wav: sample rate 16000 Hz, but the model needs 8000"):
        scan_folder(tmp_path, SOURCES, RATE)


def test_any_source_list_and_flac(tmp_path):
    folder = tmp_path / "song"
    stems = write_track(folder, 0.25, seed=0, sources=["guitar", "piano"])
    (folder / "piano.wav").unlink()
    sf.write(folder / "piano.flac", stems["piano"].T, RATE, subtype="PCM_24")
    track = check_track(folder, ["guitar", "piano"], RATE)
    assert track.files["piano"].suffix == ".flac"


def test_read_excerpt_seeks_and_pads(tmp_path):
    stems = write_track(tmp_path / "song", 0.5, seed=0)
    path = tmp_path / "song" / "bass.wav"
    got = read_excerpt(path, 1000, 500, 2)
    np.testing.assert_allclose(got, stems["bass"][:, 1000:1500])
    tail = read_excerpt(path, RATE // 2 - 100, 300, 2)
    np.testing.assert_allclose(tail[:, :100], stems["bass"][:, -100:])
    assert not tail[:, 100:].any()


def test_mono_file_for_stereo_model_is_duplicated(tmp_path):
    sf.write(tmp_path / "m.wav", np.linspace(-1, 1, 64, dtype=np.float32), RATE)
    got = read_excerpt(tmp_path / "m.wav", 0, 64, 2)
    assert got.shape == (2, 64) and np.array_equal(got[0], got[1])


def test_excerpts_are_deterministic_per_index(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=0, seconds=0.5)
    source = FolderSource(scan_folder(root / "train", SOURCES, RATE), SOURCES, 2)
    data = ExcerptDataset([source], [1.0], frames=1000, seed=3)
    index, first = data[7]
    assert index == 7 and first.shape == (4, 2, 1000)
    assert torch.equal(first, data[7][1])
    assert not torch.equal(first, data[8][1])
    assert not torch.equal(first, ExcerptDataset([source], [1.0], frames=1000, seed=4)[7][1])


def test_step_sampler_splits_ranks_and_resumes():
    full = list(StepSampler(0, 3, batch_size=2))
    assert full == [0, 1, 2, 3, 4, 5]
    assert list(StepSampler(2, 3, batch_size=2)) == full[4:]
    rank0 = list(StepSampler(0, 2, batch_size=2, rank=0, world=2))
    rank1 = list(StepSampler(0, 2, batch_size=2, rank=1, world=2))
    assert rank0 == [0, 1, 4, 5] and rank1 == [2, 3, 6, 7]


def test_cli_refuses_bad_data_before_training(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=0, seconds=0.25)
    (root / "train" / "train1" / "vocals.wav").unlink()
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "stemsplit", "train", "--musdb", str(root), "--out", str(out), "--arch", "Demucs",
         "--kw", f"samplerate={RATE}", "--kw", "channels=4", "--kw", "depth=1", "--steps", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "vocals.wav" in result.stderr and "train1" in result.stderr
    assert not out.exists()


class _Constant:
    """A stand-in data source whose excerpts are filled with one value."""

    def __init__(self, value: float):
        self.value = value

    def excerpt(self, rng, frames):
        return np.full((4, 2, frames), self.value, dtype=np.float32)


def test_data_sources_are_drawn_by_weight():
    data = ExcerptDataset([_Constant(1.0), _Constant(2.0)], [3.0, 1.0], frames=8, seed=0)
    picks = [float(data[i][1][0, 0, 0]) for i in range(400)]
    share = picks.count(1.0) / len(picks)
    assert 0.65 < share < 0.85 and picks.count(2.0) > 0
    only_first = ExcerptDataset([_Constant(1.0), _Constant(2.0)], [1.0, 0.0], frames=8, seed=0)
    assert all(float(only_first[i][1][0, 0, 0]) == 1.0 for i in range(50))
    with pytest.raises(DataError, match="zero weight"):
        ExcerptDataset([_Constant(1.0)], [0.0], frames=8, seed=0)


def test_synth_source_renders_the_model_stems_in_order():
    from stemsplit.train.data import SynthSource

    source = SynthSource(["vocals", "drums"], RATE, 1, frames=RATE // 4, seed=0)
    got = source.excerpt(np.random.default_rng(0), RATE // 4)
    assert got.shape == (2, 1, RATE // 4) and got.dtype == np.float32
    assert np.array_equal(got, source.song(int(np.random.default_rng(0).integers(0, SynthSource.VALID_FIRST_SONG)),
                                           RATE // 4))
    with pytest.raises(DataError, match="piano"):
        SynthSource(["piano"], RATE, 1, frames=100, seed=0)
