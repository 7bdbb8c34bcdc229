"""stemsplit.batch: templates, input expansion, and the per-track loop with its records and events."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import GainModel, gain_expected, tone

from stemsplit.batch import BatchEvent, BatchPlan, Track, check_template, expand_inputs, model_label, separate_batch
from stemsplit.shard import parse_shard, select_shard
from stemsplit.constants import DEFAULT_MODEL, DEFAULT_TEMPLATE as TEMPLATE
from stemsplit.errors import ModelError, SettingsError, TemplateError
from stemsplit.pipeline import OutputOptions
from stemsplit.engine.separator import Separator

RATE = 8000
EXACT = OutputOptions(bit_depth=32, clip="none")  # float wav, no rescaling: stems are exactly what the model gave


def _song(path, seconds=0.4, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, RATE, 2, seed=seed), RATE, subtype="FLOAT")
    return path


@pytest.fixture
def separator():
    return Separator(GainModel(samplerate=RATE, segment=0.25), device="cpu")


@pytest.mark.parametrize("template", [TEMPLATE, "{stem}.{ext}", "{track}-{stem}.{ext}", "a/{model}_{stem}.flac"])
def test_good_templates_pass(template):
    check_template(template)


@pytest.mark.parametrize(
    "template, reason",
    [
        ("{album}/{stem}.{ext}", "has unknown field(s) album"),
        ("{model}/{track}.{ext}", "must contain {stem}"),
        ("../{stem}.{ext}", "would write outside the output folder"),
        ("/tmp/{stem}.{ext}", "would write outside the output folder"),
        ("{track}/../../{stem}", "would write outside the output folder"),
        ("{stem", "is malformed"),
        ("{track}{stem:.0}.{ext}", "formats the field {stem}"),
        ("{track}/{stem!r}.{ext}", "formats the field {stem}"),
        ("{stem:>20}.{ext}", "formats the field {stem}"),
    ],
)
def test_bad_templates_raise_template_error(template, reason):
    with pytest.raises(TemplateError) as caught:
        check_template(template)
    assert caught.value.template == template and caught.value.reason.startswith(reason)
    assert repr(template) in str(caught.value)


def test_model_label():
    assert model_label(None) == DEFAULT_MODEL
    assert model_label("htdemucs_ft") == "htdemucs_ft"
    assert model_label("models/mine.th") == "mine"
    assert model_label(Path("ckpt/no_suffix")) == "no_suffix"
    assert model_label("../ckpt/no_suffix") == "no_suffix"  # `-n PATH` of a file without suffix: no folders


def test_expand_inputs_folders_globs_duplicates_and_misses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _song(tmp_path / "album" / "b.wav")
    _song(tmp_path / "album" / "cd1" / "a.wav")
    _song(tmp_path / "album" / ".hidden.wav")
    (tmp_path / "album" / "notes.txt").write_text("not audio")
    _song(tmp_path / "album" / "out" / "old" / "drums.wav")  # earlier stems inside the output folder
    _song(tmp_path / "loose.wav")
    (tmp_path / "empty").mkdir()
    tracks = expand_inputs(["album", "album/b.wav", "*.wav", "nope*.flac", "empty", "missing.wav"], "album/out")
    assert [(t.input, t.path is not None) for t in tracks] == [
        ("album/b.wav", True), ("album/cd1/a.wav", True), ("loose.wav", True),
        ("nope*.flac", False), ("empty", False), ("missing.wav", False),
    ]
    errors = [t.error for t in tracks if t.path is None]
    assert errors == ["nope*.flac: no files match this pattern", "empty: folder contains no audio files",
                      "missing.wav: no such file or folder"]


def test_batch_writes_skips_and_overwrites(tmp_path, separator):
    one = _song(tmp_path / "in" / "one.wav", seed=1)
    two = _song(tmp_path / "in" / "two.wav", seconds=0.7, seed=2)
    out = tmp_path / "out"
    events: list[BatchEvent] = []
    records = separate_batch(expand_inputs([str(tmp_path / "in")], out), separator, out, model="gain",
                             options=EXACT, stems=["vocals", "drums"], on_event=events.append)
    assert [r.status for r in records] == ["ok", "ok"]
    assert records[0].outputs == {"vocals": out / "gain" / "one" / "vocals.wav",
                                  "drums": out / "gain" / "one" / "drums.wav"}
    assert records[1].duration == pytest.approx(0.7) and records[1].seconds >= 0
    # each stem is the gain times its own input: the right track went to the right file
    for record, source in zip(records, (one, two)):
        mix = torch.from_numpy(sf.read(source, dtype="float32")[0].T.copy())
        vocals = sf.read(record.outputs["vocals"], dtype="float32")[0]
        np.testing.assert_allclose(vocals.T, gain_expected(separator.model, mix)[3].numpy(), atol=1e-5)
    assert sorted(p.name for p in (out / "gain" / "two").iterdir()) == ["drums.wav", "vocals.wav"]
    # events: start, progress from 0 to all segments, done -- per track, in order
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds.count("start") == 2 and kinds.count("done") == 2
    first = events[1 : kinds.index("done")]
    assert {e.kind for e in first} == {"progress"} and first[0].done == 0 and first[-1].done == first[-1].total > 1
    assert separator.progress is None  # the borrowed hook is given back

    records[0].outputs["vocals"].write_bytes(b"stale")  # exists, so a rerun skips the track
    events.clear()
    again = separate_batch(expand_inputs([str(one)], out), separator, out, model="gain", options=EXACT,
                           stems=["vocals", "drums"], on_event=events.append)
    assert [r.status for r in again] == ["skipped"] and [e.kind for e in events] == ["done"]
    assert again[0].as_dict() == {"input": str(one), "status": "skipped",
                                  "outputs": {k: str(v) for k, v in records[0].outputs.items()},
                                  "duration": None, "seconds": 0.0, "error": None}
    forced = separate_batch(expand_inputs([str(one)], out), separator, out, model="gain", options=EXACT,
                            stems=["vocals", "drums"], overwrite=True)
    assert forced[0].status == "ok"
    assert sf.info(records[0].outputs["vocals"]).frames == int(0.4 * RATE)  # rewritten


def test_failures_are_recorded_and_do_not_stop_the_batch(tmp_path, separator):
    _song(tmp_path / "a" / "song.wav")
    _song(tmp_path / "b" / "song.wav")  # same track name: its outputs would overwrite a/song.wav's
    (tmp_path / "bad.wav").write_text("not audio at all\n" * 20)
    _song(tmp_path / "last.wav")
    (tmp_path / "...wav").write_bytes((tmp_path / "last.wav").read_bytes())  # track "..": leaves the folder
    out = tmp_path / "out"
    inputs = [str(tmp_path / n) for n in ("a/song.wav", "b/song.wav", "bad.wav", "...wav", "gone.wav", "last.wav")]
    events: list[BatchEvent] = []
    records = separate_batch(expand_inputs(inputs, out), separator, out, model="m", template="{track}/{stem}.{ext}",
                             two_stems="vocals", options=EXACT, on_event=events.append)
    assert [r.status for r in records] == ["ok", "failed", "failed", "failed", "failed", "ok"]
    assert sorted(p.name for p in (out / "last").iterdir()) == ["no_vocals.wav", "vocals.wav"]
    failed = {e.record.input: e.message for e in events if e.kind == "failed"}
    assert list(failed) == inputs[1:5]
    assert "collide with those of " + inputs[0] in failed[inputs[1]]
    assert "would leave the output folder" in failed[inputs[3]]
    assert failed[inputs[4]] == f"{inputs[4]}: no such file or folder"
    for record in records[1:5]:
        assert record.error and record.as_dict()["error"] == record.error
        assert record.outputs == {}  # nothing was written (b/song.wav's planned files are a/song.wav's)
        assert record.input in failed[record.input]  # every failure line names its input
    assert records[0].as_dict()["error"] is None  # the README lists `error` for every track
    # a track that fails while decoding ends with "failed" after its "start"
    bad = [e.kind for e in events if e.record is records[2]]
    assert bad == ["start", "failed"]
    assert [p for p in out.rglob("*") if p.name.startswith(".")] == []  # no temporary files left


def test_plan_blockers_are_the_earlier_tracks_sharing_a_name(tmp_path):
    """What a runner that runs tracks out of order waits for before claiming a track."""
    tracks = [Track("a", tmp_path / "a" / "song.wav"), Track("b", tmp_path / "b.wav"),
              Track("c", tmp_path / "c" / "song.wav"), Track("gone"), Track("d", tmp_path / "song.wav")]
    plan = BatchPlan(tracks, tmp_path / "out", ["vocals", "drums"], model="m", template="{track}/{stem}.{ext}")
    assert plan.blockers == [[], [], [0], [], [0, 2]]
    events: list[BatchEvent] = []
    assert plan.claim(3, events.append) is None and plan.records[3].status == "failed"
    assert plan.claim(0) == {s: tmp_path / "out" / "song" / f"{s}.wav" for s in ("vocals", "drums")}
    plan.records[0].status = "failed"
    plan.release(0)  # a failed track gives its names back
    assert plan.claim(2) is not None and plan.claim(4) is None
    assert "collide with those of c" in plan.records[4].error and [e.kind for e in events] == ["failed"]


def test_a_failed_track_does_not_hold_its_output_names(tmp_path, separator):
    (tmp_path / "song.mp3").write_text("not audio at all\n" * 20)  # fails, so writes no song/ stems
    _song(tmp_path / "song.wav")
    _song(tmp_path / "x" / "song.wav")  # still collides: song.wav took the names and succeeded
    out = tmp_path / "out"
    inputs = [str(tmp_path / n) for n in ("song.mp3", "song.wav", "x/song.wav")]
    records = separate_batch(expand_inputs(inputs, out), separator, out, model="m", template="{track}/{stem}.{ext}",
                             two_stems="vocals", options=EXACT)
    assert [r.status for r in records] == ["failed", "ok", "failed"]
    assert "collide with those of " + inputs[1] in records[2].error
    assert sf.info(out / "song" / "vocals.wav").frames == int(0.4 * RATE)


def test_a_track_that_fails_midway_leaves_no_empty_folders(tmp_path, separator):
    """Decoding had started (the track folder held its temporary files) when the NaN was found."""
    broken = tone(0.4, RATE, 2)
    broken[1000, 0] = np.nan
    sf.write(tmp_path / "nan.wav", broken, RATE, subtype="FLOAT")
    out = tmp_path / "separated"
    records = separate_batch([Track("nan.wav", tmp_path / "nan.wav")], separator, out, model="m", options=EXACT)
    assert [r.status for r in records] == ["failed"] and "NaN" in records[0].error
    assert not out.exists()  # nor separated/m/ nor separated/m/nan/
    ok = _song(tmp_path / "ok.wav")
    records = separate_batch([Track("ok.wav", ok), Track("nan.wav", tmp_path / "nan.wav")], separator, out,
                             model="m", options=EXACT)
    assert [r.status for r in records] == ["ok", "failed"]
    assert [p.name for p in (out / "m").iterdir()] == ["ok"]


def test_a_name_too_long_for_the_file_system_fails_only_its_track(tmp_path, separator):
    short = _song(tmp_path / "short.wav")  # written first, so the output folder exists when `long` is checked
    long = _song(tmp_path / ("x" * 250 + ".wav"))  # fits, but "<track>_vocals.wav" is over 255 bytes
    out = tmp_path / "out"
    records = separate_batch([Track(str(short), short), Track(str(long), long)], separator, out, model="m",
                             template="{track}_{stem}.{ext}", stems=["vocals"], options=EXACT)
    assert [r.status for r in records] == ["ok", "failed"]
    assert "too long" in records[1].error
    assert sorted(p.name for p in out.iterdir()) == ["short_vocals.wav"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_where_a_stem_goes_fails_the_track_at_once(tmp_path, separator, overwrite):
    """It counted as an existing output (the track was "skipped"), or with `overwrite` failed after
    the separation on "Not a directory"."""
    song = _song(tmp_path / "song.wav")
    out = tmp_path / "out"
    (out / "m" / "song" / "vocals.wav").mkdir(parents=True)
    records = separate_batch([Track("song.wav", song)], separator, out, model="m", stems=["vocals"],
                             options=EXACT, overwrite=overwrite)
    assert records[0].status == "failed" and records[0].error.endswith("vocals.wav: is a folder, so the stem "
                                                                        "cannot be written there")
    assert separator.model.calls == 0


def test_wrong_template_or_stems_refuse_before_any_track(tmp_path, separator):
    tracks = [Track("x.wav", _song(tmp_path / "x.wav"))]
    out = tmp_path / "out"
    with pytest.raises(TemplateError):
        separate_batch(tracks, separator, out, model="m", template="{track}.{ext}")
    with pytest.raises(ModelError, match="unknown stem"):
        separate_batch(tracks, separator, out, model="m", stems=["flute"])
    assert not out.exists()


def test_a_folder_name_too_long_for_the_file_system_fails_only_its_track(tmp_path, separator):
    """The folder of the stems cannot be made (its name is over 255 bytes): that track fails, the
    batch goes on."""
    long = _song(tmp_path / ("y" * 250 + ".wav"))
    short = _song(tmp_path / "short.wav")
    out = tmp_path / "out"
    records = separate_batch([Track(str(long), long), Track(str(short), short)], separator, out, model="m",
                             template="{track}{track}/{stem}.{ext}", stems=["vocals"], options=EXACT)
    assert [r.status for r in records] == ["failed", "ok"]
    assert "too long" in records[0].error and records[0].error.count("\n") == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every folder")
def test_an_output_folder_the_user_may_not_read_fails_each_track(tmp_path, separator):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        songs = [_song(tmp_path / "a.wav"), _song(tmp_path / "b.wav")]
        records = separate_batch([Track(str(s), s) for s in songs], separator, locked / "out", model="m",
                                 options=EXACT)
    finally:
        locked.chmod(0o755)
    assert [r.status for r in records] == ["failed", "failed"]
    assert all("ermission" in r.error for r in records)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("link", [None, "symlink", "hardlink"])
def test_an_input_is_never_replaced_by_its_own_stem(tmp_path, separator, overwrite, link):
    song = _song(tmp_path / "vocals.wav")
    given = song
    if link is not None:
        given = tmp_path / "inputs" / "song.wav"
        given.parent.mkdir()
        os.symlink(song, given) if link == "symlink" else os.link(song, given)
    before = song.read_bytes()
    other = _song(tmp_path / "elsewhere" / "other.wav", seed=3)
    records = separate_batch([Track(str(given), given), Track(str(other), other)], separator, tmp_path,
                             model="m", template="{stem}.{ext}", stems=["vocals"], options=EXACT, overwrite=overwrite)
    assert records[0].status == "failed" and "is an input of this run" in records[0].error
    assert song.read_bytes() == before
    assert records[1].status == "failed"  # (its vocals.wav would be the same input file)


def test_stale_temporaries_of_a_killed_run_are_removed_when_the_track_is_written_again(tmp_path, separator):
    song = _song(tmp_path / "song.wav")
    out = tmp_path / "out"
    folder = out / "m" / "song"
    folder.mkdir(parents=True)
    stale = folder / ".vocals.wav.abc123.part"
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    # one still held by a live process (another run writing it) stays
    held = folder / ".drums.wav.def456.part"
    held.write_bytes(b"y")
    os.utime(held, (time.time() - 3600, time.time() - 3600))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        records = separate_batch([Track(str(song), song)], separator, out, model="m", options=EXACT)
    finally:
        holder.kill()
        holder.wait()
    assert records[0].status == "ok"
    assert not stale.exists() and held.exists()
    assert sorted(p.name for p in folder.iterdir()) == [".drums.wav.def456.part", "bass.wav", "drums.wav",
                                                         "other.wav", "vocals.wav"]


def _catalogue(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_shards_are_disjoint_complete_and_stable_when_files_are_added(tmp_path):
    names = [f"artist{a}/album{b}/track{c}.wav" for a in range(3) for b in range(2) for c in range(5)]
    music = _catalogue(tmp_path / "Music", names)
    tracks = expand_inputs([music], tmp_path / "out")
    shards = [select_shard(tracks, k, 4) for k in range(1, 5)]
    keys = [t.key for shard in shards for t in shard]
    assert sorted(keys) == sorted(names) and len(set(keys)) == len(names)
    assert all(shards), "30 tracks over 4 shards: none should be empty"
    _catalogue(music, [f"new/track{i}.wav" for i in range(10)])
    grown = expand_inputs([music], tmp_path / "out")
    for k, shard in enumerate(shards, start=1):
        again = {t.key for t in select_shard(grown, k, 4)}
        assert {t.key for t in shard} <= again  # nobody moved
    # the key is relative to the folder argument: the same catalogue elsewhere shards the same way
    moved = tmp_path / "elsewhere" / "Music"
    moved.parent.mkdir()
    music.rename(moved)
    assert [t.key for t in select_shard(expand_inputs([moved], tmp_path / "out"), 2, 4)] == \
        [t.key for t in select_shard(grown, 2, 4)]


@pytest.mark.parametrize("text, environ, expected", [
    ("2/5", {}, (2, 5)),
    ("auto/4", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0"}, (1, 4)),
    ("auto/4", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (4, 4)),
    ("auto/3", {"JOB_COMPLETION_INDEX": "2"}, (3, 3)),
])
def test_parse_shard(text, environ, expected):
    assert parse_shard(text, environ) == expected


@pytest.mark.parametrize("text, environ", [
    ("0/4", {}), ("5/4", {}), ("1/0", {}), ("a/b", {}), ("3", {}), ("auto/4", {}),
    ("auto/4", {"JOB_COMPLETION_INDEX": "4"}),
])
def test_bad_shards_are_settings_errors(text, environ):
    with pytest.raises(SettingsError) as caught:
        parse_shard(text, environ)
    assert caught.value.param == "shard"


def test_dir_field_mirrors_the_tree_and_tells_musdb_mixtures_apart(tmp_path, separator):
    root = tmp_path / "musdb"
    for name in ("Artist - One", "Artist - Two"):
        _song(root / name / "mixture.wav", seed=len(name))
    _song(root / "loose.wav")
    out = tmp_path / "out"
    records = separate_batch(expand_inputs([root], out), separator, out, model="m",
                             template="{model}/{dir}/{track}/{stem}.{ext}", stems=["vocals"], options=EXACT)
    assert [r.status for r in records] == ["ok", "ok", "ok"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.wav")) == [
        "m/Artist - One/mixture/vocals.wav", "m/Artist - Two/mixture/vocals.wav", "m/loose/vocals.wav"]
