"""The `separate` command, run for real through `python -m stemsplit` in a subprocess."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import SOURCES, run_cli, tone


def test_help_is_instant_and_does_not_import_torch(tmp_path):
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, stemsplit.cli; print('torch' in sys.modules)"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False"
    result = run_cli("separate", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--two-stems" in result.stdout


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, audio_dir, tiny_checkpoint):
    """One real batch: good files (folder + glob + file), bad ones, JSON summary."""
    work = tmp_path_factory.mktemp("batch")
    folder = work / "album"
    folder.mkdir()
    shutil.copy(audio_dir / "stereo.wav", folder / "one.wav")
    shutil.copy(audio_dir / "mono48.flac", folder / "two.flac")
    (work / "later").mkdir()
    shutil.copy(audio_dir / "song.aiff", work / "later" / "one.aiff")  # same track name as one.wav
    (folder / "notes.txt").write_text("not audio")
    shutil.copy(audio_dir / "song.ogg", work / "three.ogg")
    (work / "fake.mp3").write_text("definitely not an mp3\n" * 20)
    sf.write(work / "empty.wav", np.zeros((0, 2), np.float32), 44100)
    (work / "nothing").mkdir()
    args = ["album", "later/one.aiff", "*.ogg", "fake.mp3", "empty.wav", "nothing", "missing.wav",
            "--model-path", str(tiny_checkpoint), "--json"]
    return work, args, run_cli(*args, cwd=work)


def test_batch_separates_good_inputs_and_reports_bad_ones(batch_run):
    work, _, result = batch_run
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)  # nothing but JSON on stdout
    status = {record["input"]: record["status"] for record in summary["tracks"]}
    assert status == {"album/one.wav": "ok", "album/two.flac": "ok", "later/one.aiff": "failed",
                      "three.ogg": "ok", "fake.mp3": "failed", "empty.wav": "failed", "nothing": "failed",
                      "missing.wav": "failed"}
    assert summary["ok"] == 3 and summary["failed"] == 5
    for track in ("one", "two", "three"):
        for stem in SOURCES:
            assert (work / "separated" / "tiny" / track / f"{stem}.wav").is_file()
    two = sf.info(work / "separated" / "tiny" / "two" / "drums.wav")
    assert two.samplerate == 48000 and two.channels == 1  # input rate and mono kept
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 5
    for name, cause in [("later/one.aiff", "collide with those of album/one.wav"),("fake.mp3", "not a recognised audio file"), ("empty.wav", "no audio samples"),
                        ("nothing", "no audio files"), ("missing.wav", "no such file")]:
        assert any(name in line and cause in line for line in errors), (name, errors)
    ok = next(r for r in summary["tracks"] if r["input"] == "three.ogg")
    assert ok["duration"] == pytest.approx(1.2, abs=0.05) and ok["seconds"] >= 0
    assert ok["outputs"]["vocals"].endswith("separated/tiny/three/vocals.wav")
    assert not list(work.rglob("*.part"))


def test_rerun_skips_finished_tracks(batch_run, tiny_checkpoint):
    work, _, _ = batch_run
    result = run_cli("album", "--model-path", str(tiny_checkpoint), cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped") == 2  # plain one-line-per-track output on a pipe
    forced = run_cli("album/one.wav", "--model-path", str(tiny_checkpoint), "--overwrite", "-q", cwd=work)
    assert forced.returncode == 0 and forced.stdout == ""


def test_two_stems_template_format_and_rate_options(tmp_path, audio_dir, tiny_checkpoint):
    shutil.copy(audio_dir / "hi24.flac", tmp_path / "hi.flac")
    result = run_cli("separate", "hi.flac", "--model-path", str(tiny_checkpoint), "--two-stems", "vocals",
                     "--format", "flac", "--bit-depth", "24", "--filename", "{track}-{stem}.{ext}", "-o", "stems",
                     "--clip", "none", "--shifts", "1", "--batch-size", "2", "--overlap", "0.5", "-d", "cpu",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok hi.flac")
    vocals, rate = sf.read(tmp_path / "stems" / "hi-vocals.flac", dtype="float32")
    rest, _ = sf.read(tmp_path / "stems" / "hi-no_vocals.flac", dtype="float32")
    original, _ = sf.read(tmp_path / "hi.flac", dtype="float32")
    assert rate == 96000 and sf.info(tmp_path / "stems" / "hi-vocals.flac").subtype == "PCM_24"
    assert np.abs(vocals + rest - original).max() < 2e-6 * 4  # two 24-bit roundings
    assert sorted(p.name for p in (tmp_path / "stems").iterdir()) == ["hi-no_vocals.flac", "hi-vocals.flac"]

    result = run_cli("hi.flac", "--model-path", str(tiny_checkpoint), "--stems", "bass,drums", "--format", "mp3",
                     "--mp3-bitrate", "128", "--model-samplerate", "-v", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model tiny" in result.stdout
    written = sorted(p.name for p in (tmp_path / "separated" / "tiny" / "hi").iterdir())
    assert written == ["bass.mp3", "drums.mp3"]
    assert sf.info(tmp_path / "separated" / "tiny" / "hi" / "bass.mp3").samplerate == 44100


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--filename", "../{stem}.{ext}"], "outside the output folder"),
        (["--filename", "{model}/{track}.{ext}"], "must contain {stem}"),
        (["--filename", "{album}/{stem}.{ext}"], "unknown field"),
        (["--format", "flac", "--bit-depth", "32"], "flac cannot store 32-bit"),
        (["--stems", "flute"], "unknown stem"),
        (["--two-stems", "vocals", "--stems", "bass"], "not both"),
        (["--overlap", "1.0"], "--overlap"),
        (["--mp3-bitrate", "100"], "not an MP3 bitrate"),
        (["--format", "ogg"], "ogg"),
        (["--repo", "."], "use either --repo (with -n/--model) or --model-path, not both"),
        (["--segment", "nan"], "--segment must be a positive number of seconds, got nan"),
        (["-d", "tpu"], "--device names an unknown device 'tpu'"),
        (["--shard", "3/2"], "--shard '3/2' is not K/N or auto/N"),
        (["--shard", "auto/4"], "--shard auto/4 needs SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX"),
        # known only once the model is loaded; each track failed with exit 1
        (["--overlap", "0.9999999999"], "--segment 1.0 s with overlap 0.9999999999 leaves no sample between segments; raise the segment or lower the overlap"),
        (["--segment", "1e-9"], "leaves no sample between segments"),
    ],
)
def test_usage_errors_exit_2(tmp_path, audio_dir, tiny_checkpoint, extra, message):
    result = run_cli(str(audio_dir / "stereo.wav"), "--model-path", str(tiny_checkpoint), *extra, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert not (tmp_path / "separated").exists()


def test_repo_without_a_model_name_is_a_usage_error(tmp_path, audio_dir):
    """Without -n the embedded default model was loaded and --repo silently ignored."""
    result = run_cli(str(audio_dir / "stereo.wav"), "--repo", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--repo looks up the model named by -n/--model: give -n NAME too" in result.stderr
    assert not (tmp_path / "separated").exists()


def test_a_segment_longer_than_the_track_covers_it_whole(tmp_path, audio_dir, tiny_checkpoint):
    result = run_cli(str(audio_dir / "stereo.wav"), "--model-path", str(tiny_checkpoint), "--segment", "1e9",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sf.info(tmp_path / "separated" / "tiny" / "stereo" / "vocals.wav").frames == int(1.2 * 44100)


@pytest.mark.parametrize("setup", [["--model-path", "missing.safetensors"], ["--model-path", "corrupt.safetensors"],
                                   ["-n", "no-such-model.th"]],
                         ids=["missing", "corrupt", "missing-named-file"])
def test_a_run_that_cannot_start_still_gives_a_json_document(tmp_path, audio_dir, tiny_checkpoint, setup):
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a checkpoint" * 10)
    shutil.copy(tiny_checkpoint, tmp_path / "tiny.safetensors")
    result = run_cli(str(audio_dir / "stereo.wav"), "missing.wav", *setup, "--json", cwd=tmp_path)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    error = summary["error"]
    assert result.stderr.strip() == f"error: {error}"  # the same cause, as one line on stderr
    assert summary["ok"] == summary["skipped"] == 0 and summary["failed"] == 2
    assert [(t["input"], t["status"]) for t in summary["tracks"]] == [(str(audio_dir / "stereo.wav"), "failed"),
                                                                      ("missing.wav", "failed")]
    assert summary["tracks"][0]["error"] == error and "no such file" in summary["tracks"][1]["error"]
    assert not (tmp_path / "separated").exists()


def test_a_model_that_cannot_load_is_exactly_one_error_line(tmp_path, audio_dir):
    """The download bar used to leave a blank line on a piped stderr before the error."""
    result = run_cli(str(audio_dir / "stereo.wav"), "--model-path", "missing.safetensors", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")


def test_unwritable_output_folder_fails_the_track(tmp_path, audio_dir, tiny_checkpoint):
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    result = run_cli(str(audio_dir / "mono.wav"), "--model-path", str(tiny_checkpoint), "-o", "blocked",
                     cwd=tmp_path)
    assert result.returncode == 1
    assert "mono.wav" in result.stderr and "cannot write" in result.stderr


def test_disk_full_through_the_cli_leaves_no_partial_files(tmp_path, audio_dir, tiny_checkpoint):
    script = (
        "import errno, sys, soundfile as sf\n"
        "write = sf.SoundFile.write\n"
        "count = [0]\n"
        "def full(self, data):\n"
        "    count[0] += 1\n"
        "    if count[0] > 2:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return write(self, data)\n"
        "sf.SoundFile.write = full\n"
        "from stemsplit.cli import main\n"
        "sys.argv = ['stemsplit'] + sys.argv[1:]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(audio_dir / "stereo.wav"), "--model-path",
                             str(tiny_checkpoint), "--clip", "none"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert "no space left on device" in result.stderr
    assert [p for p in (tmp_path / "separated").rglob("*") if p.is_file()] == []


def test_default_invocation_with_progress_bars(tmp_path, audio_dir, tiny_checkpoint):
    sf.write(tmp_path / "short.wav", tone(0.05, 44100, 2), 44100)  # shorter than a segment
    # TTY_COMPATIBLE=1 makes rich treat the pipe as a terminal: the live progress bars are drawn
    result = run_cli("short.wav", "--model-path", str(tiny_checkpoint), cwd=tmp_path, env={"TTY_COMPATIBLE": "1"})
    assert result.returncode == 0, result.stderr
    assert "all tracks" in result.stdout and "ok short.wav" in result.stdout
    assert sf.info(tmp_path / "separated" / "tiny" / "short" / "vocals.wav").frames == int(0.05 * 44100)


def test_options_before_the_inputs_may_take_a_command_name_as_value(tmp_path, audio_dir, tiny_checkpoint):
    result = run_cli("-o", "models", str(audio_dir / "mono.wav"), "--model-path", str(tiny_checkpoint), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models" / "tiny" / "mono" / "vocals.wav").is_file()


def test_progress_bar_shows_bracketed_file_names_literally():
    import io

    from rich.console import Console

    from stemsplit.batch import BatchEvent, TrackRecord
    from stemsplit.cli.display import BatchDisplay

    display = BatchDisplay(Console(file=io.StringIO(), force_terminal=True), 1, fancy=True, plain=False,
                            verbose=False)
    try:
        display(BatchEvent("start", TrackRecord("album/song [live] [bold].wav")))
        task = display.bar.tasks[-1]
        assert display.bar.columns[0].render(task).plain == "song [live] [bold].wav"
    finally:
        display.close()


def test_sigterm_mid_separation_leaves_no_partial_files(tmp_path):
    """`timeout` or a scheduler stops a batch with SIGTERM, whose default action left hidden .part
    stems in the track folder; it now unwinds as Ctrl-C does (exit 130) and removes them."""
    import signal
    import time

    sf.write(tmp_path / "long.wav", tone(30.0, 44100, 2), 44100)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "stemsplit", "long.wav", "-o", str(out)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.rglob("*.part")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert list(out.rglob("*.part")), "the separation ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, (process.returncode, stderr)
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_an_unknown_model_name_is_a_usage_error(tmp_path, audio_dir):
    result = run_cli(str(audio_dir / "stereo.wav"), "-n", "htdemucz", "--json", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "unknown model 'htdemucz'; did you mean 'htdemucs'?" in result.stderr and result.stdout == ""
    assert not (tmp_path / "separated").exists()


def test_json_names_device_precision_and_a_null_error_for_every_track(tmp_path, audio_dir, tiny_checkpoint):
    result = run_cli(str(audio_dir / "stereo.wav"), "--model-path", str(tiny_checkpoint), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["device"] == "cpu" and summary["precision"] in ("fp32", "bf16")
    assert [track["error"] for track in summary["tracks"]] == [None]
    again = json.loads(run_cli(str(audio_dir / "stereo.wav"), "--model-path", str(tiny_checkpoint), "--json",
                               cwd=tmp_path).stdout)
    assert again["tracks"][0]["status"] == "skipped" and again["tracks"][0]["error"] is None


def test_models_info_of_an_unknown_name_still_prints_a_json_document(tmp_path):
    result = run_cli("models", "info", "nosuch", "--json", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown model 'nosuch'" in json.loads(result.stdout)["error"]


def test_a_file_name_with_control_characters_stays_on_one_line(tmp_path, audio_dir, tiny_checkpoint):
    shutil.copy(audio_dir / "stereo.wav", tmp_path / "two\nlines\x1b[31m.wav")
    result = run_cli("two\nlines\x1b[31m.wav", "--model-path", str(tiny_checkpoint), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("ok two\\nlines\\x1b[31m.wav -> ")
    assert "\x1b" not in result.stdout


def test_a_file_name_starting_with_a_dash_gets_the_double_dash_hint(tmp_path, audio_dir, tiny_checkpoint):
    shutil.copy(audio_dir / "stereo.wav", tmp_path / "-dash.wav")
    result = run_cli("-dash.wav", "--model-path", str(tiny_checkpoint), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: '-dash.wav' is a file, but a name starting with '-' reads as options: "
                                     "put -- before the file names (stemsplit -- -dash.wav)")
    fixed = run_cli("--model-path", str(tiny_checkpoint), "--", "-dash.wav", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert (tmp_path / "separated" / "tiny" / "-dash" / "vocals.wav").is_file()


def test_shards_of_a_folder_are_disjoint_and_cover_it(tmp_path, audio_dir, tiny_checkpoint):
    """The README's job-array command line: N shard runs (Slurm's --array=1-N and Kubernetes'
    JOB_COMPLETION_INDEX=0..N-1 spellings), each writing only its own tracks."""
    music = tmp_path / "Music"
    for artist in ("a", "b"):
        for k in range(3):
            (music / artist).mkdir(parents=True, exist_ok=True)
            shutil.copy(audio_dir / "mono.wav", music / artist / f"mixture{k}.wav")
    seen = []
    for index, env in enumerate([{"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1"},
                                 {"JOB_COMPLETION_INDEX": "1"}, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0"}]):
        result = run_cli("Music", "--model-path", str(tiny_checkpoint), "--shard", "auto/3", "--json",
                         "--filename", "{model}/{dir}/{track}/{stem}.{ext}", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        seen.append([track["input"] for track in json.loads(result.stdout)["tracks"]])
    flat = sorted(name for shard in seen for name in shard)
    assert flat == sorted(str(p.relative_to(tmp_path)) for p in music.rglob("*.wav"))  # complete, disjoint
    for artist in ("a", "b"):
        found = sorted(p.name for p in (tmp_path / "separated" / "tiny" / artist).iterdir())
        assert found == [f"mixture{k}" for k in range(3)]
