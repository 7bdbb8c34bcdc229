"""Disk-backed input: SignalFile, spool_audio, the Separator reading from disk, temp file cleanup,
and memory that does not grow with the track's length."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import GainModel, read_audio, tiny_demucs, tone

from stemsplit.audio.decode import load_audio
from stemsplit.audio.spool import SignalFile, spool_audio
from stemsplit.errors import AudioError
from stemsplit.pipeline import OutputOptions, separate_file
from stemsplit.engine.separator import Separator, _mean_std

HAS_PROC_FD = Path("/proc/self/fd").is_dir()


def _open_files_under(folder: Path) -> list[str]:
    """Targets of this process's open file descriptors that lie in `folder` (Linux)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def test_signal_file_slices_and_statistics_match_a_tensor(tmp_path):
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 100_003, generator=g) * 0.2 + 0.3
    with SignalFile(2, tmp_path) as signal:
        for start, size in ((0, 7), (7, 50_000), (50_007, 0), (50_007, 49_996)):
            signal.append(full[:, start : start + size])
        assert signal.shape == (2, 100_003)
        for lo, hi in ((0, 10), (5, 60_000), (99_990, 100_010), (-5, 3), (200_000, 200_010)):
            assert torch.equal(signal[:, lo:hi], full[:, lo:hi])
        with pytest.raises(TypeError):
            signal[0]
        mean, std = _mean_std(signal)
        ref = full.double().mean(0)
        assert abs(float(mean) - float(ref.mean())) < 1e-7 and abs(float(std) - float(ref.std() + 1e-8)) < 1e-7
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, rate", [("in48.flac", 48000), ("in44.wav", 44100)])
@pytest.mark.parametrize("channels", [1, 2])
def test_spool_audio_equals_load_audio(tmp_path, name, rate, channels):
    src = tmp_path / name
    sf.write(src, tone(2.3, rate, channels), rate)
    loaded = load_audio(src, 44100, 2)
    with spool_audio(src, 44100, 2, folder=tmp_path / "work", keep_native=True) as spooled:
        assert (spooled.samplerate, spooled.native_samplerate) == (44100, rate)
        assert (spooled.native_channels, spooled.native_frames) == (channels, loaded.native_frames)
        assert torch.equal(spooled.signal[:, 0 : spooled.signal.shape[-1]], loaded.wav)
        if rate == 44100:
            assert spooled.native is None
        else:
            native = read_audio(src, None, 2)[0]
            assert torch.equal(spooled.native[:, 0 : spooled.native.shape[-1]], native)
    assert list((tmp_path / "work").iterdir()) == []


def test_spool_audio_errors_name_the_file_and_leave_nothing(tmp_path):
    bad = tmp_path / "nan.wav"
    data = tone(1.0, 8000, 2)
    data[5000, 1] = np.nan
    sf.write(bad, data, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN"):
        spool_audio(bad, 8000, 2, folder=tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(AudioError, match="cannot write"):
        spool_audio(bad, 8000, 2, folder=blocked / "sub")


@pytest.mark.parametrize("kwargs", [{}, {"shifts": 2, "overlap": 0.5, "batch_size": 3}])
def test_separator_gives_the_same_stems_from_disk_and_from_memory(tmp_path, kwargs):
    model = tiny_demucs(samplerate=8000, segment=0.5)
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(2, 8000 * 3 + 123, generator=g) * 0.2 + 0.01
    separator = Separator(model, device="cpu", **kwargs)
    expected = separator.separate_tensor(mix, ["vocals", "drums"])
    with SignalFile(2, tmp_path) as signal:
        for start in range(0, mix.shape[-1], 1000):
            signal.append(mix[:, start : start + 1000])
        from_disk = separator.separate_tensor(signal, ["vocals", "drums"])
    assert from_disk.shape == expected.shape
    assert (from_disk - expected).abs().max() <= 1e-6


@pytest.mark.skipif(not HAS_PROC_FD, reason="needs /proc/self/fd to see open temporary files")
@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError, None])
def test_decoded_input_lives_next_to_the_outputs_and_is_always_deleted(tmp_path, failure):
    src = tmp_path / "in.wav"
    sf.write(src, tone(3.0, 11025, 1), 11025)
    out = tmp_path / "out"
    seen = []

    def progress(done, total):
        seen.append(_open_files_under(out))
        if failure is not None and done >= 2:
            raise failure("stop")

    model = GainModel(samplerate=8000, segment=0.5)
    targets = {"drums": out / "drums.wav", "no_drums": out / "no_drums.wav"}
    options = OutputOptions(clip="none", keep_samplerate=True)
    separator = Separator(model, device="cpu", progress=progress)
    if failure is None:
        separate_file(src, separator, targets, options, two_stems="drums")
        assert sorted(p.name for p in out.iterdir()) == ["drums.wav", "no_drums.wav"]
    else:
        with pytest.raises(failure):
            separate_file(src, separator, targets, options, two_stems="drums")
        assert not out.exists()  # nothing left, not even the folder it made
    # while separating: the input at the model's rate and at its own rate, as anonymous files
    assert sum("(deleted)" in target for target in seen[0]) == 2
    assert _open_files_under(out) == []


def test_memory_does_not_grow_with_track_length(tmp_path):
    """Peak RSS of a whole separation, 1 minute against 12 minutes of 8 kHz audio.

    Holding the decoded input in memory adds about 55 MB for the longer track (42 MB of input
    plus its temporaries); the disk-backed pipeline keeps the difference to a few MB.
    """
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import numpy as np, soundfile as sf, torch
        sys.path.insert(0, sys.argv[3])
        from conftest import GainModel
        from stemsplit.pipeline import OutputOptions, separate_file
        from stemsplit.engine.separator import Separator
        torch.set_num_threads(1)
        folder, minutes = sys.argv[1], float(sys.argv[2])
        src = f"{folder}/in{minutes:g}.wav"
        with sf.SoundFile(src, "w", 8000, 2, subtype="PCM_16") as handle:
            rng = np.random.default_rng(0)
            for _ in range(int(minutes * 6)):
                handle.write((rng.standard_normal((80000, 2)) * 0.1).astype(np.float32))
        model = GainModel(samplerate=8000, segment=10.0)
        targets = {name: Path(folder, f"out{minutes:g}", f"{name}.wav") for name in model.sources}
        separate_file(src, Separator(model, device="cpu"), targets, OutputOptions(clip="rescale"))
        """
    )
    tests = str(Path(__file__).parent)
    peaks = []
    for minutes in (1, 12):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(minutes), tests],
                                stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read().decode() if proc.stderr else ""
        peaks.append(usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024))
    growth = (peaks[1] - peaks[0]) / 2**20
    assert growth < 25, f"peak RSS grew by {growth:.0f} MB from 1 to 12 minutes"
