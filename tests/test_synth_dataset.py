"""SynthDataset, write_dataset and the hidden `stemsplit synth` command."""
from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from stemsplit.errors import AudioError, DataError
from stemsplit.synth import SOURCES, SynthDataset, write_dataset


def test_dataset_items_are_deterministic_stems():
    ds = SynthDataset(2.0, length=5, seed=11, samplerate=22050)
    assert len(ds) == 5
    item = ds[2]
    assert item.shape == (4, 2, 44100) and item.dtype == torch.float32
    assert torch.isfinite(item).all()
    assert float(item.sum(0).abs().max()) <= 1.0
    again = pickle.loads(pickle.dumps(ds))[2]
    assert torch.equal(item, again)
    assert not torch.equal(item, ds[3])
    assert not torch.equal(item, SynthDataset(2.0, length=5, seed=12, samplerate=22050)[2])
    assert torch.equal(ds[-3], item)
    with pytest.raises(IndexError):
        ds[5]


def test_dataset_works_in_dataloader_workers():
    ds = SynthDataset(1.0, length=2, seed=3, samplerate=16000, channels=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    batch = next(iter(loader))
    assert batch.shape == (2, 4, 1, 16000)
    assert torch.equal(batch[1], ds[1])


def test_write_dataset_float_is_exact(tmp_path):
    calls = []
    folders = write_dataset(tmp_path / "set", songs=2, seconds=1.5, seed=5, samplerate=22050,
                            progress=lambda done, total: calls.append((done, total)))
    assert [f.name for f in folders] == ["song_00000", "song_00001"]
    assert calls == [(1, 2), (2, 2)]
    stems = {}
    for name in ("mixture", *SOURCES):
        data, sr = soundfile.read(folders[0] / f"{name}.wav", dtype="float32", always_2d=True)
        assert sr == 22050 and data.shape == (33075, 2)
        stems[name] = data
    total = stems["drums"] + stems["bass"]
    total = total + stems["other"]
    total = total + stems["vocals"]
    assert np.array_equal(stems["mixture"], total)
    assert not list((tmp_path / "set").rglob("*.part"))


def test_write_dataset_16_bit_and_options(tmp_path):
    folders = write_dataset(tmp_path, songs=1, seconds=1.0, seed=1, samplerate=16000, channels=1,
                            bit_depth="16", styles=["rock"], production=False)
    info = soundfile.info(folders[0] / "vocals.wav")
    assert info.subtype == "PCM_16" and info.channels == 1
    with pytest.raises(ValueError):
        write_dataset(tmp_path, songs=1, seconds=1.0, seed=1, bit_depth="8")


def test_write_dataset_reports_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AudioError, match="file"):
        write_dataset(blocker / "out", songs=1, seconds=0.5, seed=0)


def test_cli_synth_writes_a_musdb_folder(tmp_path):
    out = tmp_path / "synth"
    run = subprocess.run([sys.executable, "-m", "stemsplit", "synth", str(out), "--songs", "1", "--seconds", "1",
                          "--seed", "2", "--samplerate", "16000", "--style", "funk"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (out / "song_00000").iterdir()) == sorted(f"{n}.wav" for n in ("mixture", *SOURCES))
    bad = subprocess.run([sys.executable, "-m", "stemsplit", "synth", str(out), "--style", "polka"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "polka" in bad.stderr


def test_write_dataset_refuses_bad_options_before_creating_anything(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="polka"):
        write_dataset(out, 1, 1.0, seed=0, styles=["polka"])
    with pytest.raises(ValueError, match="nope"):
        write_dataset(out, 1, 1.0, seed=0, exclude=["nope"])
    assert not out.exists()


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_interrupted_song_leaves_no_mixed_or_partial_song_folder(tmp_path, monkeypatch):
    old = write_dataset(tmp_path, songs=1, seconds=0.5, seed=1, samplerate=8000)[0]
    before = _files(old)
    from stemsplit.audio.encode import AudioWriter

    real_write, calls = AudioWriter.write, []

    def interrupted_on(n):
        def write(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real_write(*args, **kwargs)
        return write

    # Ctrl-C at the third file of song 0: its old files, all of them, stay as they were
    monkeypatch.setattr(AudioWriter, "write", interrupted_on(3))
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path, songs=2, seconds=0.5, seed=2, samplerate=8000)
    assert _files(old) == before
    # Ctrl-C at the third file of song 1: song 0 is the new one, whole; no folder for song 1
    calls.clear()
    monkeypatch.setattr(AudioWriter, "write", interrupted_on(8))
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path, songs=2, seconds=0.5, seed=2, samplerate=8000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song_00000"]
    stems = {name: soundfile.read(old / f"{name}.wav", dtype="float32")[0] for name in ("mixture", *SOURCES)}
    assert stems["mixture"].tobytes() != before["mixture.wav"]
    assert np.array_equal(stems["mixture"], ((stems["drums"] + stems["bass"]) + stems["other"]) + stems["vocals"])
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize("changes, error, message", [
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(seconds=float("inf")), ValueError, "seconds must be a positive, finite number"),
    (dict(samplerate=192001), ValueError, "samplerate must be 8000 to 192000 Hz"),
    (dict(soundfont="missing.sf2"), DataError, "missing.sf2: soundfont not found"),
])
def test_write_dataset_refuses_impossible_settings_before_creating_anything(tmp_path, changes, error, message):
    out = tmp_path / "never"
    settings = {**dict(songs=1, seconds=0.5, seed=0, samplerate=8000, soundfont_share=0.01), **changes}
    with pytest.raises(error, match=message):
        write_dataset(out, **settings)
    assert not out.exists()


def test_cli_synth_bad_seed_is_one_line_and_writes_nothing(tmp_path):
    run = subprocess.run([sys.executable, "-m", "stemsplit", "synth", str(tmp_path / "out"), "--songs", "1",
                          "--seconds", "0.5", "--seed", "-1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == "error: seed must be >= 0, got -1"
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()
