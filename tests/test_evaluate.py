"""Evaluation over a MUSDB-style folder: every source of every track scored with the metrics of
stemsplit.metrics on the Separator's output; aggregates; JSON/CSV; the hidden CLI command."""
from __future__ import annotations

import copy
import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import read_audio
from test_train_data import RATE, write_musdb

from stemsplit import metrics
from stemsplit.models.checkpoint import build_model, save_checkpoint
from stemsplit.errors import DataError, StemsplitError
from stemsplit.evaluate import Evaluation, evaluate
from stemsplit.engine.separator import Separator

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)  # mono keeps BSSEval's least-squares systems small (4 sources x 512 taps)
    return build_model("Demucs", dict(sources=SOURCES, samplerate=RATE, audio_channels=1, channels=4, depth=2, lstm_layers=0,
                                      resample=False, rewrite=False, glu=False, dconv_mode=0, segment=1))


def test_evaluate_scores_every_source_of_every_track(tmp_path, tiny_model):
    root = write_musdb(tmp_path / "db", train=0, valid=2, seconds=2.5) / "valid"
    result = evaluate(tiny_model, root, device="cpu")
    assert list(result.tracks) == ["valid0", "valid1"]
    assert result.metrics == ("usdr", "si_sdr", "sdr", "isr", "sir", "sar")
    # Recompute one track by hand from the same separator output.
    mix = read_audio(root / "valid1" / "mixture.wav", RATE, 1)[0]
    refs = torch.stack([read_audio(root / "valid1" / f"{s}.wav", RATE, 1)[0] for s in SOURCES])
    est = Separator(tiny_model, device="cpu").separate_tensor(mix)
    want_usdr = metrics.usdr(refs, est)
    want_sdr = metrics.nanmedian(metrics.bss_eval(refs, est, RATE)["sdr"])
    for i, source in enumerate(SOURCES):
        assert result.tracks["valid1"][source]["usdr"] == pytest.approx(float(want_usdr[i]), abs=1e-6)
        assert result.tracks["valid1"][source]["sdr"] == pytest.approx(float(want_sdr[i]), abs=1e-6)
    aggregate = result.aggregate()
    for source in SOURCES:
        values = [result.tracks[t][source]["si_sdr"] for t in result.tracks]
        assert aggregate[source]["si_sdr"]["mean"] == pytest.approx(np.mean(values))
        assert aggregate[source]["si_sdr"]["median"] == pytest.approx(np.median(values))


def test_tracks_limit_and_bad_folder_names_the_file(tmp_path, tiny_model):
    root = write_musdb(tmp_path / "db", train=0, valid=2, seconds=1.0) / "valid"
    result = evaluate(tiny_model, root, tracks=["valid1"], bss=False, device="cpu")
    assert list(result.tracks) == ["valid1"] and result.metrics == ("usdr", "si_sdr")
    (root / "valid0" / "mixture.wav").unlink()  # one bad track is reported; the run goes on
    result = evaluate(tiny_model, root, bss=False, device="cpu")
    assert list(result.tracks) == ["valid1"] and "valid0/mixture.wav: missing stem" in result.failed["valid0"]
    with pytest.raises(DataError, match="nope"):
        evaluate(tiny_model, root, tracks=["nope"], device="cpu")


def test_aggregate_skips_undefined_scores_and_files_use_null(tmp_path):
    result = Evaluation(("usdr", "sdr"), ["a"])
    result.tracks = {"t0": {"a": {"usdr": 1.0, "sdr": math.nan}}, "t1": {"a": {"usdr": 3.0, "sdr": 2.0}},
                     "t2": {"a": {"usdr": 8.0, "sdr": 4.0}}}
    aggregate = result.aggregate()
    assert aggregate["a"]["usdr"] == {"mean": 4.0, "median": 3.0}
    assert aggregate["a"]["sdr"] == {"mean": 3.0, "median": 3.0}
    result.write_json(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["tracks"]["t0"]["a"]["sdr"] is None and data["aggregate"]["a"]["sdr"]["median"] == 3.0
    result.write_csv(tmp_path / "s.csv")
    rows = list(csv.reader((tmp_path / "s.csv").open()))
    assert rows[0] == ["track", "source", "usdr", "sdr"]
    assert rows[1] == ["t0", "a", "1.0000", ""]
    assert ["<median>", "a", "3.0000", "3.0000"] in rows
    result.tracks["t1"]["a"]["sdr"] = math.inf  # a perfect estimate: JSON has no Infinity, so null
    result.write_json(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["tracks"]["t1"]["a"]["sdr"] is None and data["aggregate"]["a"]["sdr"]["mean"] is None
    blocked = tmp_path / "s.json" / "x.csv"  # inside a file: an OSError, reported as a one-line error
    with pytest.raises(StemsplitError, match="x.csv: cannot write the scores"):
        result.write_csv(blocked)


def test_cli_evaluate_writes_json_and_csv(tmp_path, tiny_model):
    root = write_musdb(tmp_path / "db", train=0, valid=2, seconds=1.0) / "valid"
    save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    out_json, out_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    result = subprocess.run(
        [sys.executable, "-m", "stemsplit", "evaluate", str(root), "--model-path", str(tmp_path / "tiny.safetensors"),
         "--tracks", "valid0", "--json", str(out_json), "--csv", str(out_csv), "--device", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "valid0" in result.stdout and "aggregate over 1 track" in result.stdout
    data = json.loads(out_json.read_text())
    assert list(data["tracks"]) == ["valid0"] and set(data["tracks"]["valid0"]) == set(SOURCES)
    assert data["precision"] in ("fp32", "bf16") and f"the network ran in {data['precision']} (auto)" in result.stdout
    assert len(list(csv.reader(out_csv.open()))) == 1 + 4 + 2 * 4
    missing = subprocess.run(
        [sys.executable, "-m", "stemsplit", "evaluate", str(tmp_path / "no[red]where"), "--model-path",
         str(tmp_path / "tiny.safetensors")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no[red]where" in missing.stderr  # a path, not rich markup
    threads = subprocess.run(  # torch.set_num_threads(-1) was a traceback
        [sys.executable, "-m", "stemsplit", "evaluate", str(root), "--model-path", str(tmp_path / "tiny.safetensors"),
         "--threads", "-1"], capture_output=True, text=True, timeout=120)
    assert threads.returncode == 2 and "--threads" in threads.stderr and "Traceback" not in threads.stderr


def test_cli_evaluate_runs_in_the_precision_asked_for_and_says_so(tmp_path, tiny_model):
    root = write_musdb(tmp_path / "db", train=0, valid=1, seconds=1.0) / "valid"
    save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    scores = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        result = _cli_evaluate(str(root), "--model-path", str(tmp_path / "tiny.safetensors"), "--no-bss",
                               "--precision", precision, "--json", str(out))
        assert result.returncode == 0, result.stderr
        assert f"the network ran in {precision}\n" in result.stdout
        data = json.loads(out.read_text())
        assert data["precision"] == precision
        scores[precision] = data["aggregate"]
    for source in SOURCES:  # bf16 moves the scores a little, not a lot
        assert abs(scores["bf16"][source]["usdr"]["mean"] - scores["fp32"][source]["usdr"]["mean"]) < 1.0
    unknown = _cli_evaluate(str(root), "--model-path", str(tmp_path / "tiny.safetensors"), "--precision", "fp64")
    assert unknown.returncode == 2 and "--precision" in unknown.stderr and "Traceback" not in unknown.stderr


def _spoil(path, how: str) -> None:
    """Make one stem file bad in place: a NaN sample, or silent throughout."""
    import soundfile as sf

    data, rate = sf.read(path, always_2d=True)
    if how == "nan":
        data[100, 0] = np.nan
    else:
        data[:] = 0.0
    sf.write(path, data, rate, subtype="FLOAT")


def test_a_bad_track_is_reported_and_the_others_are_still_scored(tmp_path, tiny_model):
    root = write_musdb(tmp_path / "db", train=0, valid=3, seconds=1.0) / "valid"
    (root / "valid0" / "bass.wav").unlink()  # found by the check before any work
    _spoil(root / "valid1" / "drums.wav", "nan")  # found only when the track is read
    events = []
    result = evaluate(tiny_model, root, bss=False, device="cpu", progress=events.append)
    assert list(result.tracks) == ["valid2"]
    assert set(result.failed) == {"valid0", "valid1"}
    assert "valid0/bass.wav: missing stem" in result.failed["valid0"]
    assert "valid1/drums.wav: contains NaN" in result.failed["valid1"]
    assert [e["name"] for e in events if e["event"] == "failed"] == ["valid0", "valid1"]
    result.write_json(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["failed"] == result.failed


def test_an_estimate_with_nan_fails_its_track_instead_of_scoring_undefined(tmp_path, tiny_model):
    root = write_musdb(tmp_path / "db", train=0, valid=1, seconds=1.0) / "valid"
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(broken.parameters()).fill_(math.nan)
    result = evaluate(broken, root, bss=False, device="cpu")
    assert result.tracks == {}  # every metric would be NaN, which reads as "undefined" and is skipped
    assert "valid0/mixture.wav: the model's estimate has NaN or infinite samples" in result.failed["valid0"]


def test_a_track_named_twice_is_scored_once(tmp_path, tiny_model):
    root = write_musdb(tmp_path / "db", train=0, valid=2, seconds=1.0) / "valid"
    events = []
    evaluate(tiny_model, root, tracks=["valid1", "valid1"], bss=False, device="cpu", progress=events.append)
    assert [(e["name"], e["total"]) for e in events if e["event"] == "scored"] == [("valid1", 1)]


def _cli_evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stemsplit", "evaluate", *args, "--device", "cpu", "--threads", "1"],
                          capture_output=True, text=True, timeout=120)


def test_cli_evaluate_goes_on_past_a_bad_track_and_exits_1(tmp_path, tiny_model):
    root = write_musdb(tmp_path / "db", train=0, valid=2, seconds=1.0) / "valid"
    model = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model, model)
    _spoil(root / "valid0" / "drums.wav", "nan")
    _spoil(root / "valid1" / "bass.wav", "silent")
    out_json, out_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    run = _cli_evaluate(str(root), "--model-path", str(model), "--json", str(out_json), "--csv", str(out_csv))
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("error:") == 1 and "valid0/drums.wav: contains NaN" in run.stderr
    assert "aggregate over 1 track(s), 1 failed" in run.stdout
    assert "-: undefined" in run.stdout  # a silent bass leaves the whole track without BSSEval scores
    data = json.loads(out_json.read_text())
    assert list(data["tracks"]) == ["valid1"] and list(data["failed"]) == ["valid0"]
    assert [row[0] for row in csv.reader(out_csv.open())][1:5] == ["valid1"] * 4
    # A scores file that cannot be written is reported after the scores are shown, not instead of them.
    run = _cli_evaluate(str(root), "--model-path", str(model), "--no-bss", "--json", str(out_csv / "x.json"))
    assert run.returncode == 1 and "x.json: cannot write the scores" in run.stderr
    assert "aggregate over 1 track(s), 1 failed" in run.stdout
    # Nothing scored: an error saying so, and the files of the earlier run are left as they were.
    (root / "valid1" / "mixture.wav").unlink()
    before = out_json.read_text()
    run = _cli_evaluate(str(root), "--model-path", str(model), "--json", str(out_json))
    assert run.returncode == 1 and "no track could be scored (2 failed)" in run.stderr
    assert out_json.read_text() == before


def test_cli_evaluate_bad_options_are_usage_errors_before_any_work(tmp_path):
    (tmp_path / "out.json").mkdir()
    for args in (["--overlap", "1"], ["--segment", "0"], ["--shifts", "-1"], ["--batch-size", "0"],
                 ["--json", str(tmp_path / "out.json")], ["--json", "s.txt", "--csv", "./s.txt"]):
        run = _cli_evaluate(str(tmp_path), "--model-path", str(tmp_path / "none.safetensors"), *args)
        assert run.returncode == 2, (args, run.stderr)
        assert args[0] in run.stderr and "Traceback" not in run.stderr


def test_cli_evaluate_on_a_musdb_root_points_to_its_test_folder(tmp_path, tiny_model):
    db = write_musdb(tmp_path / "db", train=1, valid=1, seconds=1.0)
    (db / "valid").rename(db / "test")
    save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    run = _cli_evaluate(str(db), "--model-path", str(tmp_path / "tiny.safetensors"), "--no-bss")
    assert run.returncode == 1 and "no track could be scored (2 failed)" in run.stderr
    assert f"give its test folder, {db / 'test'}" in run.stderr.replace("\n", "")
