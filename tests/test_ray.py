"""stemsplit.batch_ray on a real local Ray instance (2 CPUs, started once for the module).

The local batch is the oracle: the same tiny model and files through `separate_batch` must give
the same records and byte-identical stems. Workers are killed for real (`os._exit` in the
actor, from a worker setup hook) to check retries, failures and what is left on disk.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import soundfile as sf
from conftest import comparable_records, file_tree, ray_worker_pythonpath, tone

ray = pytest.importorskip("ray")

from stemsplit.batch import BatchEvent, expand_inputs, separate_batch  # noqa: E402
from stemsplit.batch_ray import pool_size, separate_batch_ray  # noqa: E402
from stemsplit.errors import ModelError, SettingsError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKERS = "STEMSPLIT_TEST_RAY_MARKERS"  # folder where a dying worker notes that it died
SETTINGS = dict(device="cpu", precision="fp32")  # one thread everywhere: the same sums in the same order


def die_on_marked_tracks() -> None:
    """Ray worker setup hook: kill the worker when it is about to place the stems of a track called
    die_always*, or die_once* the first time (a marker file remembers), with every stem already
    written to its temporary file: the worst moment, as much as possible is on disk."""
    from stemsplit import sinks

    commit_together = sinks.commit_together

    def commit_or_die(writers):  # type: ignore[no-untyped-def]
        track = writers[0].path.parent.name  # the default template: <model>/<track>/<stem>.wav
        marker = Path(os.environ[MARKERS]) / track
        if track.startswith("die_always") or (track.startswith("die_once") and not marker.exists()):
            marker.touch()
            os._exit(1)
        commit_together(writers)

    sinks.commit_together = commit_or_die


@pytest.fixture(scope="module")
def markers(tmp_path_factory):
    """A local Ray for the whole module; its workers import this tree (and this file, for the hook)."""
    folder = tmp_path_factory.mktemp("markers")
    path = ray_worker_pythonpath()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, MARKERS: str(folder), "OMP_NUM_THREADS": "1"},
                          "worker_process_setup_hook": "test_ray.die_on_marked_tracks"})
    yield folder
    ray.shutdown()


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """Four 2-second songs and one file that is not audio."""
    folder = tmp_path_factory.mktemp("songs")
    for i in range(4):
        sf.write(folder / f"song{i}.wav", tone(2.0, 44100, 2, seed=i), 44100)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    return folder


def _local(inputs, out, checkpoint, **kwargs):
    from stemsplit import load_model
    from stemsplit.engine.separator import Separator

    separator = Separator(load_model(str(checkpoint)), **SETTINGS)
    return separate_batch(expand_inputs(inputs, out), separator, out, model="tiny", **kwargs)


def _ray(inputs, out, checkpoint, events=None, **kwargs):
    return separate_batch_ray(expand_inputs(inputs, out), out, model=checkpoint, cpus_per_worker=1,
                              on_event=None if events is None else events.append, **SETTINGS, **kwargs)


@pytest.fixture(scope="module")
def first_run(markers, songs, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "out"
    events: list[BatchEvent] = []
    started = time.perf_counter()
    records = _ray([songs], out, tiny_checkpoint, events)
    return out, records, events, time.perf_counter() - started


def test_workers_import_this_tree(markers):
    @ray.remote
    def where() -> str:
        import stemsplit

        return stemsplit.__file__

    assert Path(ray.get(where.remote())).resolve().is_relative_to(ROOT)


def test_outputs_and_records_are_the_local_batch_s(first_run, songs, tiny_checkpoint, tmp_path):
    out, records, events, _ = first_run
    local_out = tmp_path / "local"
    local = _local([songs], local_out, tiny_checkpoint)
    assert [r.status for r in records] == ["failed"] + ["ok"] * 4  # broken.wav sorts first
    assert comparable_records(records, out) == comparable_records(local, local_out)
    assert file_tree(out) == file_tree(local_out) and len(file_tree(out)) == 16
    ends = [e for e in events if e.kind in ("done", "failed")]
    assert sorted(e.record.input for e in ends) == sorted(r.input for r in records)  # one end per track
    assert all(e.record is r for e in ends for r in records if r.input == e.record.input)
    assert [e.kind for e in events].count("start") == 5 and "progress" not in [e.kind for e in events]


def test_a_corrupt_file_fails_only_itself_with_one_line(first_run, songs):
    _, records, events, _ = first_run
    failed = [e for e in events if e.kind == "failed"]
    assert len(failed) == 1 and failed[0].record.input == str(songs / "broken.wav")
    assert "\n" not in failed[0].message and "broken.wav" in failed[0].message
    assert [r.status for r in records if Path(r.input).name.startswith("song")] == ["ok"] * 4


def test_a_second_run_skips_finished_tracks(first_run, songs, tiny_checkpoint):
    out, _, _, _ = first_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    records = _ray([songs], out, tiny_checkpoint)
    assert [r.status for r in records] == ["failed"] + ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == before


def test_collisions_between_tracks_are_the_local_batch_s(markers, songs, tiny_checkpoint, tmp_path):
    """One name for every track: the broken first track fails (giving the names back), the next
    writes them, the last collides with it; the last must wait for the others to know that."""
    inputs = [songs / "broken.wav", songs / "song0.wav", songs / "song1.wav"]
    records = _ray(inputs, tmp_path / "ray", tiny_checkpoint, template="{model}/{stem}.{ext}")
    local = _local(inputs, tmp_path / "local", tiny_checkpoint, template="{model}/{stem}.{ext}")
    assert [r.status for r in records] == ["failed", "ok", "failed"] and "collide" in records[2].error
    assert comparable_records(records, tmp_path / "ray") == comparable_records(local, tmp_path / "local")
    assert file_tree(tmp_path / "ray") == file_tree(tmp_path / "local")


@pytest.fixture(scope="module")
def killed_run(markers, tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dying")
    for name in ("die_once", "die_always", "fine"):
        sf.write(folder / f"{name}.wav", tone(2.0, 44100, 2, seed=len(name)), 44100)
    out = folder / "out"
    events: list[BatchEvent] = []
    records = _ray([folder / n for n in ("die_once.wav", "die_always.wav", "fine.wav")], out, tiny_checkpoint,
                   events)
    return folder, out, {Path(r.input).stem: r for r in records}, events


def test_a_track_whose_worker_died_is_retried_and_completes(killed_run, markers, tiny_checkpoint, tmp_path):
    folder, out, records, events = killed_run
    assert (markers / "die_once").exists()  # the worker did die
    assert records["die_once"].status == "ok" and records["fine"].status == "ok"
    local = tmp_path / "local"
    _local([folder / "die_once.wav"], local, tiny_checkpoint)
    assert file_tree(out / "tiny" / "die_once") == file_tree(local / "tiny" / "die_once")  # complete stems
    assert not [p for p in out.rglob(".*")]  # the dead worker's temporaries went with the retry
    assert [e.kind for e in events if e.record.input.endswith("die_once.wav")] == ["start", "done"]


def test_a_track_that_kills_its_worker_twice_fails_alone(killed_run):
    _, out, records, events = killed_run
    record = records["die_always"]
    assert record.status == "failed" and record.outputs == {}
    failed = [e for e in events if e.kind == "failed"]
    assert len(failed) == 1 and failed[0].message == f"worker died while separating {record.input} (twice)"
    assert not list((out / "tiny" / "die_always").glob("*"))  # no stems, no temporaries
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_settings_and_model_errors_are_raised_before_any_track(markers, songs, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SettingsError) as caught:  # found by the actor's Separator, raised as itself
        _ray([songs / "song0.wav"], out, tiny_checkpoint, segment=-1.0)
    assert caught.value.param == "segment"
    with pytest.raises(ModelError, match="flute"):  # found by the driver's plan
        _ray([songs / "song0.wav"], out, tiny_checkpoint, stems=["flute"])
    assert not out.exists()


def test_pool_size_defaults_to_one_actor_per_gpu_else_threaded_cpu_actors():
    assert pool_size({"CPU": 32, "GPU": 4}) == (4, 4.0, 1.0)
    assert pool_size({"CPU": 4, "GPU": 2}) == (2, 2.0, 1.0)
    assert pool_size({"CPU": 32, "GPU": 4}, device="cpu") == (8, 4.0, 0.0)
    assert pool_size({"CPU": 16}) == (4, 4.0, 0.0)
    assert pool_size({"CPU": 2}) == (1, 2.0, 0.0)
    assert pool_size({"CPU": 2}, cpus_per_worker=1) == (2, 1.0, 0.0)
    assert pool_size({"CPU": 8, "GPU": 2}, gpus_per_worker=0.5) == (4, 2.0, 0.5)
    assert pool_size({"CPU": 8}, workers=3) == (3, 2.0, 0.0)
    # no actor bigger than the biggest node: four 2-CPU nodes, or two of 1 CPU (test_ray_cluster.py)
    assert pool_size({"CPU": 8}, node_cpus=2) == (4, 2.0, 0.0)
    assert pool_size({"CPU": 8}, workers=1, node_cpus=2) == (1, 2.0, 0.0)
    assert pool_size({"CPU": 2}, node_cpus=1) == (2, 1.0, 0.0)
    assert pool_size({"CPU": 16}, node_cpus=64) == pool_size({"CPU": 16})
    for bad in (dict(workers=0), dict(cpus_per_worker=-1), dict(gpus_per_worker=float("nan"))):
        with pytest.raises(SettingsError):
            pool_size({"CPU": 8}, **bad)



def test_the_cli_runs_the_batch_on_the_cluster_ray_address_names(markers, songs, tiny_checkpoint, tmp_path):
    """`stemsplit ... --ray` as `ray job submit` would run it: RAY_ADDRESS names the running
    cluster; the files and the --json summary are those of a local CLI run."""
    import json

    from conftest import run_cli

    address = ray.get_runtime_context().gcs_address
    inputs = [str(songs / "song0.wav"), str(songs / "song1.wav"), str(songs / "broken.wav")]
    common = ["--model-path", str(tiny_checkpoint), "-d", "cpu", "--precision", "fp32", "--json"]
    remote = run_cli(*inputs, *common, "--ray", "--ray-cpus-per-worker", "1", "-o", "ray", cwd=tmp_path,
                     env={"RAY_ADDRESS": address})
    local = run_cli(*inputs, *common, "-o", "local", cwd=tmp_path)
    assert remote.returncode == local.returncode == 1, remote.stderr
    summary, oracle = json.loads(remote.stdout), json.loads(local.stdout)
    assert [(t["input"], t["status"]) for t in summary["tracks"]] == [(t["input"], t["status"]) for t in oracle["tracks"]]
    assert summary["runner"] == "ray" and summary["ok"] == 2 and summary["failed"] == 1
    for name in ("song0", "song1"):
        for stem in ("drums", "bass", "other", "vocals"):
            ours = tmp_path / "ray" / "tiny" / name / f"{stem}.wav"
            assert ours.read_bytes() == (tmp_path / "local" / "tiny" / name / f"{stem}.wav").read_bytes()
    assert [line for line in remote.stderr.splitlines() if line.startswith("error:")] == \
        [line for line in local.stderr.splitlines() if line.startswith("error:")]
