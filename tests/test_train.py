"""The training loop end to end with a tiny Demucs: it learns, resumes exactly, fine-tunes from a
checkpoint with a frozen encoder, runs from the CLI and under torchrun (2 CPU processes, gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_data import RATE, write_musdb, write_track

from stemsplit.models.checkpoint import read_metadata
from stemsplit.errors import ConfigError
from stemsplit.train.config import make_config
from stemsplit.train.trainer import train

TINY = dict(channels=8, depth=2, lstm_layers=0, resample=False, rewrite=False, glu=False, dconv_mode=0)
TINY_FLAGS = [f"--kw={k}={v}" for k, v in TINY.items()] + [f"--kw=samplerate={RATE}"]
NO_AUG = dict(remix=False, gain=False, flip=False, swap=False, shift=0.0)


def _config(tmp_path: Path, **overrides):
    values = dict(out_dir=tmp_path / "run", architecture="Demucs", samplerate=RATE, model_kwargs=dict(TINY),
                  segment=0.25, batch_size=2, steps=8, lr=3e-3, checkpoint_every=4, valid_every=4,
                  valid_excerpts=2, threads=1)
    values.update(overrides)
    return make_config(values)


class _Stop(Exception):
    """Raised by a progress callback to interrupt a run, as a crash would."""


def _losses(cfg, stop_at_step: int | None = None, take=lambda record: record["loss"]) -> list:
    """The loss (or `take(record)`) of every step of a run, interrupted (like a crash) after step
    `stop_at_step`."""
    losses: list = []

    def progress(record):
        if record["event"] == "step":
            losses.append(take(record))
            if record["step"] == stop_at_step:
                raise _Stop

    try:
        train(cfg, progress=progress)
    except _Stop:
        pass
    return losses


def test_tiny_model_overfits_a_few_excerpts(tmp_path):
    root = tmp_path / "two"
    for i in range(2):
        write_track(root / f"t{i}", 0.5, seed=i)  # tracks as long as the excerpt: two fixed examples
    cfg = _config(tmp_path, musdb=root, segment=0.5, steps=60, lr=1e-2, schedule="constant",
                  checkpoint_every=1000, augment=NO_AUG)
    losses = _losses(cfg)
    assert len(losses) == 60
    assert min(losses[-5:]) < losses[0] / 3


def test_resume_gives_the_same_next_losses(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    common = dict(musdb=root, warmup_steps=2, ema_decay=0.9, clip_grad=1.0, stft_weight=0.5,
                  augment=dict(pitch=1, pitch_prob=0.5, noise=True))
    straight = _losses(_config(tmp_path / "a", **common))
    first = _losses(_config(tmp_path / "b", **common), stop_at_step=6)  # the last checkpoint was at step 4
    assert first == straight[:6]
    resumed = _losses(_config(tmp_path / "b", resume=True, **common))
    assert resumed == straight[4:]
    run = tmp_path / "b" / "run"
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == list(range(1, 9))  # steps 5-6 of the crash dropped
    assert [r["step"] for r in steps if r["event"] == "valid"] == [4, 8]


def test_resume_continues_the_global_random_streams_the_model_draws_from(tmp_path):
    """HTDemucs draws dropout and positional-embedding jitter from torch's global generator, and
    t_sin_random_shift from Python's `random`. Each step here draws from both as the model would:
    a resumed run must draw what the uninterrupted one drew (the DataLoader's iterator took one more
    torch number after the restore, and `random` was neither seeded nor saved)."""
    import random

    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)

    def draws(cfg, stop_at_step=None):
        return _losses(cfg, stop_at_step, take=lambda record: (record["step"], torch.rand(1).item(), random.random()))

    common = dict(musdb=root, steps=6, checkpoint_every=3, valid_every=100, augment=NO_AUG)
    straight = draws(_config(tmp_path / "a", **common))
    random.seed(12345)  # whatever state the process is in, a run must start from its own seed
    assert draws(_config(tmp_path / "b", **common), stop_at_step=4) == straight[:4]
    assert draws(_config(tmp_path / "b", resume=True, **common)) == straight[3:]


def test_folder_and_synth_data_with_a_worker_give_the_same_losses_as_without(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    common = dict(musdb=root, synth_weight=1.0, steps=3, valid_every=3, augment=dict(tempo=0.1))
    in_process = _losses(_config(tmp_path / "a", **common))
    with_worker = _losses(_config(tmp_path / "b", num_workers=1, **common))
    assert in_process == with_worker


def test_checkpoints_are_native_and_fine_tuning_can_freeze_the_encoder(tmp_path):
    from stemsplit.models.checkpoint import load_checkpoint, read_metadata

    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    best = train(_config(tmp_path / "a", musdb=root, steps=4))
    run = tmp_path / "a" / "run"
    assert best == run / "best.safetensors"
    assert {p.name for p in run.iterdir()} >= {"last.safetensors", "best.safetensors", "state.pt", "log.jsonl"}
    assert read_metadata(run / "last.safetensors")["training"]["step"] == 4
    start = load_checkpoint(run / "last.safetensors")
    cfg = _config(tmp_path / "b", musdb=root, steps=3, init=str(run / "last.safetensors"), freeze_encoder=True)
    tuned = load_checkpoint(train(cfg).parent / "last.safetensors")
    before, after = start.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_bf16_autocast_on_cpu_and_plateau_schedule(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    losses = _losses(_config(tmp_path, musdb=root, steps=2, valid_every=1, precision="bf16", schedule="plateau",
                             loss="mse"))
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_config_errors_are_reported_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="no training data"):
        _config(tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        _config(tmp_path, musdb=tmp_path, learning_rate=1.0)
    with pytest.raises(ConfigError, match="plateau needs validation"):
        root = tmp_path / "only_train"
        write_track(root / "t0", 0.5, seed=0)
        train(_config(tmp_path, musdb=root, schedule="plateau"))


def test_cli_train_with_yaml_config(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"architecture": "Demucs", "model_kwargs": dict(TINY, samplerate=RATE),
                                  "samplerate": RATE, "segment": 0.25, "batch_size": 2, "steps": 3,
                                  "augment": {"pitch": 1}}))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "stemsplit", "train", "--config", str(config), "--musdb", str(root), "--out", str(out),
         "--steps", "2", "--checkpoint-every", "1", "--threads", "1", "--no-remix", "--no-valid-synth"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "best checkpoint" in result.stdout
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2]
    blocked = subprocess.run(  # a run folder inside a file: one line naming it, no traceback
        [sys.executable, "-m", "stemsplit", "train", "--config", str(config), "--musdb", str(root),
         "--out", str(out / "config.json" / "run"), "--steps", "1", "--threads", "1", "--no-remix"],
        capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 1 and "Traceback" not in blocked.stderr
    assert blocked.stderr.startswith("error:") and "config.json" in blocked.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["steps"] == 2 and saved["augment"]["remix"] is False and saved["augment"]["pitch"] == 1
    assert saved["valid_synth"] is False


def test_no_valid_synth_validates_on_the_folder_alone(tmp_path):
    from stemsplit.train.model import build_model
    from stemsplit.train.trainer import _Data

    root = write_musdb(tmp_path / "db", train=2, valid=2, seconds=0.5)

    def valid_set(**overrides):
        cfg = _config(tmp_path, musdb=root, valid_excerpts=4, **overrides)
        return _Data(cfg, build_model(cfg), int(0.25 * RATE)).valid

    def same(a, b):
        return len(a) == len(b) and all(torch.equal(x[1], y[1]) for x, y in zip(a, b))  # (mixture, stems)

    folder_only = valid_set(synth_weight=0.0)
    assert len(folder_only) == 4
    assert not same(valid_set(synth_weight=0.5), folder_only)  # half of them on-the-fly songs
    assert same(valid_set(synth_weight=0.5, valid_synth=False), folder_only)



def test_a_new_run_in_a_used_folder_starts_its_own_log(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    cfg = _config(tmp_path, musdb=root, steps=2, checkpoint_every=2, valid_every=2)
    _losses(cfg, stop_at_step=1)  # died before its first checkpoint: nothing to resume, nothing to keep
    _losses(cfg)  # the same folder again, without --resume: it was appended after the first run's curve
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [("step", 1), ("step", 2), ("valid", 2), ("checkpoint", 2)]


def test_a_run_folder_is_never_overwritten_and_a_resume_must_fit_it(tmp_path):
    """A new run in a folder holding one deleted its log at once and replaced its checkpoints at the
    first save; a resume with other model settings failed on a cryptic state_dict error (or dropped
    the EMA without a word), and one with --steps below the step reached did nothing and said nothing."""
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    cfg = _config(tmp_path, musdb=root, steps=2, checkpoint_every=2, valid_every=2)
    train(cfg)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ConfigError, match="already holds a training run .*--resume"):
        train(cfg)
    with pytest.raises(ConfigError, match=r"model_kwargs channels: 8, now 16; ema_decay 0.0, now 0.9"):
        train(_config(tmp_path, musdb=root, steps=4, resume=True, ema_decay=0.9,
                      model_kwargs=dict(TINY, channels=16)))
    with pytest.raises(ConfigError, match="already at step 2, past --steps 1"):
        train(_config(tmp_path, musdb=root, steps=1, resume=True))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    records: list = []  # what may change does: more steps, another lr
    train(_config(tmp_path, musdb=root, steps=3, lr=1e-3, resume=True), progress=records.append)
    assert [r["step"] for r in records if r["event"] == "step"] == [3]


def test_cli_resume_problems_are_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}}, run / "state.pt")
    base = [sys.executable, "-m", "stemsplit", "train", "--musdb", str(write_musdb(tmp_path / "db", train=1, valid=0)),
            "--out", str(run), "--arch", "Demucs", *TINY_FLAGS, "--segment", "0.25", "--threads", "1"]
    for extra, code, words in (([], 2, "already holds a training run"),
                               (["--resume"], 1, "not a training state written by stemsplit train")):
        result = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120)
        assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error:") and words in result.stderr and "state.pt" in result.stderr


def test_a_segment_too_short_for_the_stft_loss_is_refused_up_front(tmp_path):
    """torch.stft's padding error came mid-run as a traceback; it depends on the model's rate."""
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    cfg = _config(tmp_path, musdb=root, segment=0.1, stft_weight=1.0)  # 800 samples; the largest FFT is 2048
    with pytest.raises(ConfigError, match="too short for the STFT loss of size 2048"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_nan_validation_is_never_the_best(tmp_path, monkeypatch):
    """A NaN first score became `best`, and nothing compares greater than NaN: best.safetensors
    stayed at that step for the rest of the run."""
    from stemsplit.train import trainer

    means = iter([float("nan"), 1.0, 0.5])
    monkeypatch.setattr(trainer, "validate", lambda *args: {"mean": next(means)})
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    cfg = _config(tmp_path, musdb=root, steps=6, checkpoint_every=2, valid_every=2)
    records: list = []
    train(cfg, progress=records.append)
    valid = [(r["step"], r["best"]) for r in records if r["event"] == "valid"]
    assert valid == [(2, None), (4, 1.0), (6, 1.0)]
    assert read_metadata(tmp_path / "run" / "best.safetensors")["training"]["step"] == 4


def test_cli_train_refuses_a_config_section_that_is_not_a_mapping(tmp_path):
    config = tmp_path / "run.yaml"
    for text in ("augment: [remix]\n", "model_kwargs: [8]\n"):  # was a ValueError/TypeError traceback
        config.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "stemsplit", "train", "--config", str(config), "--musdb", str(tmp_path),
             "--kw", "channels=8", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error:") and "must be a mapping" in result.stderr


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, workers):
    """SIGTERM (preemption, docker stop) killed the run outright: one landing in a checkpoint write left
    its hidden .part file behind. It now unwinds like Ctrl-C (exit 130), through the writers' cleanup.
    With data workers the signal goes to the whole process group (a scheduler's cancel, `kill -- -PGID`):
    a worker killed by it made the main process print a traceback on its way out."""
    import signal
    import time

    from stemsplit.train.state import load_state

    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "stemsplit", "train", "--musdb", str(write_musdb(tmp_path / "db", train=2, valid=0)),
         "--out", str(out), "--arch", "Demucs", *TINY_FLAGS, "--segment", "0.25", "--batch-size", "2",
         "--steps", "100000", "--checkpoint-every", "1", "--threads", "1", "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (out / "state.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, (process.returncode, stderr)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.safetensors", "log.jsonl", "state.pt"]
    assert load_state(out / "state.pt")["step"] >= 1


def test_ddp_two_cpu_processes_write_one_checkpoint(tmp_path):
    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "stemsplit", "train", "--musdb", str(root), "--out", str(out), "--arch", "Demucs", *TINY_FLAGS,
         "--segment", "0.25", "--batch-size", "2", "--steps", "3", "--checkpoint-every", "3", "--valid-every", "3",
         "--threads", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2, 3]  # rank 0 alone writes
    assert [r["step"] for r in records if r["event"] == "checkpoint"] == [3]


def test_world_size_without_rank_is_a_clear_error(monkeypatch):
    from stemsplit.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK is not set"):
        distributed.setup("cpu")


def test_widen_starts_from_the_init_model_with_more_channels(tmp_path):
    from stemsplit.models.checkpoint import load_checkpoint, save_checkpoint
    from stemsplit.nn.hdemucs import HDemucs

    root = write_musdb(tmp_path / "db", train=2, valid=1, seconds=0.5)
    small = HDemucs(sources=["drums", "bass", "other", "vocals"], channels=4, depth=2, nfft=256,
                    dconv_lstm=9, dconv_attn=9, samplerate=RATE, segment=0.25)
    save_checkpoint(small, tmp_path / "small.safetensors")
    cfg = _config(tmp_path / "a", musdb=root, steps=2, init=str(tmp_path / "small.safetensors"), widen=8)
    wide = load_checkpoint(train(cfg).parent / "last.safetensors")
    assert wide.init_kwargs["channels"] == 8
    assert wide.encoder[0].conv.weight.shape[0] == 8
    with pytest.raises(ConfigError, match="--widen needs --init"):
        _config(tmp_path / "b", musdb=root, widen=8)
    with pytest.raises(ConfigError, match="only an HDemucs"):
        demucs = train(_config(tmp_path / "c", musdb=root, steps=1))
        train(_config(tmp_path / "d", musdb=root, steps=1, init=str(demucs.parent / "last.safetensors"), widen=16))


def test_cli_warns_when_forced_bf16_is_emulated_on_this_cpu(tmp_path):
    """Forced bf16 on a CPU without bf16 instructions trained ~7x slower than fp32, without a word."""
    from stemsplit.runtime import cpu_has_native_bf16

    empty = tmp_path / "empty"
    empty.mkdir()  # the run then stops at its first data error, after the warning
    for precision, warned in (("bf16", not cpu_has_native_bf16()), ("fp32", False)):
        result = subprocess.run(
            [sys.executable, "-m", "stemsplit", "train", "--musdb", str(empty), "--out", str(tmp_path / precision),
             "--precision", precision, "--device", "cpu"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "no track folders found" in result.stderr, result.stderr
        assert ("warning: --precision bf16 on a CPU without" in result.stderr) == warned, result.stderr
