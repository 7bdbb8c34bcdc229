"""stemsplit.batch_ray on a real two-node Ray cluster (a head and a worker node of 1 CPU each, both
on this machine, by `ray.cluster_utils.Cluster`), started once for the module and shut down after.

The local batch is the oracle, as in test_ray.py: the same tiny model and songs through
`separate_batch` must give the same records and byte-identical stems. A worker setup hook notes
the node and actor that run each track, so that the pool is seen to use both nodes for real.
With sizes unset, the pool must fit nodes smaller than the cluster: no 2-CPU actor on 1-CPU nodes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import soundfile as sf
from conftest import comparable_records, file_tree, ray_worker_pythonpath, tone

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from stemsplit.batch import TrackRecord, expand_inputs, separate_batch  # noqa: E402
from stemsplit.batch_ray import separate_batch_ray  # noqa: E402

WHERE = "STEMSPLIT_TEST_RAY_WHERE"  # folder where each track notes the node and actor that ran it
SETTINGS = dict(device="cpu", precision="fp32")  # one thread everywhere: the same sums in the same order
NODE = dict(num_cpus=1, object_store_memory=80 * 2**20)  # one 1-CPU actor per node; Ray's minimum store is 75 MiB
ACTORS = 2  # cpus_per_worker=1 on 2 CPUs
SONGS = 4


def notes(folder: Path) -> list[tuple[str, str, str]]:
    """`(track, node id, actor id)` for each track an actor began, from the files the hook touches."""
    return [tuple(p.name.split(" ")) for p in folder.iterdir()]  # type: ignore[misc]


def note_where_tracks_run() -> None:
    """Ray worker setup hook: an actor about to run a track touches `<track> <node> <actor>`, then
    waits (a minute at most) until two actors have, so that the actor that loads the model first
    cannot take every track while the other is still loading: both must run one."""
    from stemsplit import batch_ray

    run_track = batch_ray.run_track

    def noted(track: Any, *args: Any, **kwargs: Any) -> Any:
        folder, context = Path(os.environ[WHERE]), ray.get_runtime_context()
        # a name, not contents: touching is atomic for the other actor reading the folder
        (folder / f"{Path(track.input).stem} {context.get_node_id()} {context.get_actor_id()}").touch()
        deadline = time.monotonic() + 60
        while len({actor for _, _, actor in notes(folder)}) < ACTORS and time.monotonic() < deadline:
            time.sleep(0.05)
        return run_track(track, *args, **kwargs)

    batch_ray.run_track = noted  # the actor's `run` looks it up in its module when called


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Path]:
    """The two nodes and the driver connected to them, for the module; yields the hook's folder.

    Shut down at the end, which also deletes the address the cluster recorded in Ray's temporary
    folder: a later `ray.init()` (test_ray.py's) must start its own instance, not join this one."""
    where = tmp_path_factory.mktemp("where")
    path = ray_worker_pythonpath()
    nodes = Cluster(initialize_head=True, head_node_args=dict(NODE, include_dashboard=False))
    try:
        nodes.add_node(**NODE)
        nodes.wait_for_nodes()
        # not nodes.connect(): it passes no runtime_env, and the workers need this tree and the hook
        ray.init(address=nodes.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path, WHERE: str(where), "OMP_NUM_THREADS": "1"},
                              "worker_process_setup_hook": "test_ray_cluster.note_where_tracks_run"})
        yield where
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("songs")
    for i in range(SONGS):
        sf.write(folder / f"song{i}.wav", tone(2.0, 44100, 2, seed=i), 44100)
    return folder


@pytest.fixture(scope="module")
def ray_run(cluster, songs, tiny_checkpoint, tmp_path_factory) -> tuple[Path, list[TrackRecord]]:
    out = tmp_path_factory.mktemp("ray") / "out"
    records = separate_batch_ray(expand_inputs([songs], out), out, model=tiny_checkpoint, cpus_per_worker=1,
                                 **SETTINGS)
    return out, records


def test_the_cluster_has_two_live_nodes_of_one_cpu(cluster):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert ray.cluster_resources()["CPU"] == 2


def test_outputs_and_records_are_the_local_batch_s(ray_run, songs, tiny_checkpoint, tmp_path):
    from stemsplit import load_model
    from stemsplit.engine.separator import Separator

    out, records = ray_run
    local_out = tmp_path / "local"
    separator = Separator(load_model(str(tiny_checkpoint)), **SETTINGS)
    local = separate_batch(expand_inputs([songs], local_out), separator, local_out, model="tiny")
    assert [r.status for r in records] == ["ok"] * SONGS
    assert comparable_records(records, out) == comparable_records(local, local_out)
    assert file_tree(out) == file_tree(local_out) and len(file_tree(out)) == 4 * SONGS


def test_tracks_ran_on_both_nodes_one_actor_each(ray_run, cluster):
    ran = notes(cluster)
    assert sorted(track for track, _, _ in ran) == [f"song{i}" for i in range(SONGS)]  # each once: no retries
    actors = {actor: node for _, node, actor in ran}
    assert len(actors) == ACTORS  # the barrier in the hook saw both; a third would be a replacement
    assert set(actors.values()) == {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # one per node


def test_the_default_pool_fits_the_nodes_not_just_the_cluster_s_cpus(ray_run, songs, tiny_checkpoint, tmp_path):
    """Sized on the cluster's 2 CPUs alone, the one actor of a one-track batch would ask for 2 CPUs,
    which neither node has, and Ray would keep it pending for ever; sized on the nodes, it asks for
    1 and runs. Run by the CLI, as `ray job submit` would, so that a hang is a killed process."""
    command = [sys.executable, "-m", "stemsplit", str(songs / "song0.wav"), "--model-path", str(tiny_checkpoint),
               "-d", "cpu", "--precision", "fp32", "--ray", "-o", "out"]
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, OMP_NUM_THREADS="1")
    try:
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the batch still waits for its actor after 120 s: one no node can hold?")
    assert run.returncode == 0, run.stderr
    assert file_tree(tmp_path / "out" / "tiny" / "song0") == file_tree(ray_run[0] / "tiny" / "song0") != {}
