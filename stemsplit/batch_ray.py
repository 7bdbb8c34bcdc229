"""The batch of `stemsplit.batch` with its tracks separated by a pool of Ray actors.

Owns connecting to Ray (`address`, else RAY_ADDRESS as Ray's own tools read it, else a local
instance started and stopped here), sizing the pool from the cluster's CPUs and GPUs, the actors
(each loads the model once and keeps one Separator for all its tracks), handing tracks to idle
actors, and actors that die: the track a dead actor held is retried once on another actor (a
fresh one replaces the dead), and fails with one line if that dies too.

Everything a track's outcome depends on is the local batch's: `batch.BatchPlan` plans the names
and collisions on the driver and `batch.run_track` runs in the actor, so names, skips, records
and files are those of `batch.separate_batch`. The actors write stems straight to the output
folder, which must therefore be the same path on every node (a shared file system); only
records travel back. Events: `start` when a track is first handed to an actor (so a track whose
stems exist gets `start` before its `done`), no `progress`, then `done` or `failed` with the
actor's record; tracks end in any order.

It must not print, parse options, nor decide how a track is planned, separated or written
(batch, pipeline). ray and torch are imported only when a batch runs.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from stemsplit import atomic
from stemsplit.batch import (BatchEvent, BatchPlan, BatchSettings, Track, TrackRecord, check_template, fail_track,
                             input_identities, model_label, run_track)
from stemsplit.constants import DEFAULT_TEMPLATE
from stemsplit.errors import AudioError, ModelError, SettingsError, StemsplitError, one_line
from stemsplit.pipeline import OutputOptions

TRIES = 2  # a track whose actor dies is retried once: a second death is taken to be the track's doing


def pool_size(resources: Mapping[str, float], device: str = "auto", workers: Optional[int] = None,
              cpus_per_worker: Optional[float] = None,
              gpus_per_worker: Optional[float] = None,
              node_cpus: Optional[float] = None) -> tuple[int, float, float]:
    """`(actors, CPUs each, GPUs each)` for a cluster with `resources` (`ray.cluster_resources()`).

    Unset values default to one actor per GPU (with up to 4 of the CPUs each) where the cluster
    has GPUs and `device` is not `cpu`; else to actors of up to 4 CPUs (torch threads) each, as
    many as the CPUs hold: a few threads per network use a CPU better than one process per core.
    An actor runs on one node: no default share exceeds `node_cpus`, the most CPUs one node has
    (else nodes smaller than the share leave the actors pending for ever).
    """
    for name, value in (("cpus_per_worker", cpus_per_worker), ("gpus_per_worker", gpus_per_worker)):
        if value is not None and not value >= 0:  # (NaN too)
            raise SettingsError(name, f"must be a number >= 0, got {value}")
    if workers is not None and workers < 1:
        raise SettingsError("workers", f"must be >= 1, got {workers}")
    cpus, gpus = int(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    largest = cpus if node_cpus is None else min(cpus, int(node_cpus))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus >= 1 and str(device).strip().lower() != "cpu" else 0.0
    if workers is None:
        workers = int(gpus // gpus_per_worker if gpus_per_worker else cpus // (cpus_per_worker or min(4, largest) or 1))
    workers = max(1, workers)
    if cpus_per_worker is None:  # the CPUs shared out, so that every actor of the pool fits at once
        cpus_per_worker = float(max(1, min(4, largest, cpus // workers)))
    return workers, cpus_per_worker, gpus_per_worker


class _Worker:
    """One actor: the driver's working folder, the model loaded once, and the batch it serves.

    Made a Ray actor class at run time (`ray.remote(...)(_Worker)`), so that importing this module
    imports no ray. Errors a user causes are kept and handed back as values, not raised, so that
    the driver re-raises them as themselves rather than wrapped in a Ray error.
    """

    def __init__(self, cwd: str, model: Optional[str], repo: Optional[str], separator: dict[str, Any],
                 threads: int) -> None:
        import torch

        from stemsplit import load_model
        from stemsplit.engine.separator import Separator

        torch.set_num_threads(threads)  # the actor's CPU share, whatever the node's core count
        self.failure: Optional[StemsplitError] = None
        self.settings: Optional[BatchSettings] = None
        try:
            os.chdir(cwd)  # relative inputs, outputs and model paths mean what they mean to the driver
        except OSError:
            self.failure = AudioError(f"{cwd}: the driver's working folder is missing on a Ray node; a Ray "
                                      "batch needs its files on a file system every node mounts at the same path")
            return
        try:
            self.separator = Separator(load_model(model, repo=repo), **separator)
        except StemsplitError as exc:
            self.failure = exc

    def sources(self) -> Union[list[str], StemsplitError]:
        """The model's sources, or the error that left this actor without a model."""
        return self.failure if self.failure is not None else list(self.separator.sources)

    def setup(self, batch: tuple[BatchSettings, list[Track]]) -> None:
        """Take the batch's settings and tracks, once; no stem may replace one of its inputs."""
        self.settings, self.tracks = batch
        # identities are taken here, not on the driver: a shared file system's device numbers differ per node
        self.inputs = input_identities(self.tracks)

    def run(self, index: int, targets: dict[str, Path]) -> BatchEvent:
        """Run track `index` of the batch (planned by the driver) and return its last event."""
        assert self.settings is not None, "setup() must come first"
        final: list[BatchEvent] = []

        def keep(event: BatchEvent) -> None:
            if event.kind in ("done", "failed"):
                final.append(event)

        run_track(self.tracks[index], targets, self.separator, self.settings, self.inputs, keep)
        return final[-1]


class _Pool:
    """The driver's side of a batch: actors starting, idle and busy; tracks unclaimed, ready,
    finished. One loop waits for whichever actor answers first and reacts to it."""

    def __init__(self, ray: Any, spawn: Callable[[], Any], size: int, tracks: Sequence[Track],
                 plan: Callable[[list[str]], BatchPlan], on_event: Optional[Callable[[BatchEvent], None]]) -> None:
        from ray.exceptions import RayActorError

        self.ray, self.spawn, self.tracks, self.make_plan, self.on_event = ray, spawn, list(tracks), plan, on_event
        self.actor_died = RayActorError
        self.actors: set = set()  # every live actor, so that all are killed at the end
        self.starting: dict = {}  # sources() call -> actor
        self.busy: dict = {}  # run() call -> (actor, track index, its targets)
        self.idle: list = []
        self.plan: Optional[BatchPlan] = None
        self.batch: Any = None  # the ObjectRef of (settings, tracks): stored once, read by every actor
        self.unclaimed = list(range(len(self.tracks)))
        self.ready: deque[tuple[int, dict[str, Path]]] = deque()
        self.finished: set[int] = set()
        self.deaths: dict[int, int] = {}  # track index -> actors that died running it
        self.started: dict[int, float] = {}
        self.load_error = ""
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        actor = self.spawn()
        self.actors.add(actor)
        self.starting[actor.sources.remote()] = actor

    def run(self) -> list[TrackRecord]:
        while self.plan is None or len(self.finished) < len(self.tracks):
            if self.plan is not None:
                self._claim()
                self._dispatch()
                if len(self.finished) == len(self.tracks):
                    break
            if not self.starting and not self.busy:  # (an idle actor always has a ready track here)
                raise ModelError(f"every Ray worker failed to load the model: {self.load_error}")
            [ref], _ = self.ray.wait([*self.starting, *self.busy], num_returns=1)
            if ref in self.starting:
                self._started(ref, self.starting.pop(ref))
            else:
                self._finished(ref, *self.busy.pop(ref))
        assert self.plan is not None
        return self.plan.records

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors.clear()

    def _started(self, ref: Any, actor: Any) -> None:
        try:
            sources = self.ray.get(ref)
        except self.actor_died as exc:  # killed while loading: the pool carries on without it
            self.actors.discard(actor)
            self.load_error = one_line(exc)
            return
        if isinstance(sources, StemsplitError):
            if self.plan is None:  # the run cannot start, as a local one whose model fails to load
                raise sources
            # one node cannot (a device it lacks, a file it does not see): the others carry on
            self.ray.kill(actor, no_restart=True)
            self.actors.discard(actor)
            self.load_error = str(sources)
            return
        if self.plan is None:  # the first model loaded tells the driver its sources, so it can plan
            self.plan = self.make_plan(sources)
            self.batch = self.ray.put((self.plan.settings, self.plan.tracks))
        actor.setup.remote(self.batch)  # (an actor runs its calls in the order they were made)
        self.idle.append(actor)

    def _claim(self) -> None:
        """Claim, in order, each track whose earlier name-sharing tracks are all finished."""
        assert self.plan is not None
        waiting = []
        for index in self.unclaimed:
            if not all(j in self.finished for j in self.plan.blockers[index]):
                waiting.append(index)
                continue
            targets = self.plan.claim(index, self.on_event)
            if targets is None:
                self.finished.add(index)
            else:
                self.ready.append((index, targets))
        self.unclaimed = waiting

    def _dispatch(self) -> None:
        assert self.plan is not None
        while self.idle and self.ready:
            actor = self.idle.pop()
            index, targets = self.ready.popleft()
            if index not in self.started:  # one `start` per track, retries included
                self.started[index] = time.perf_counter()
                if self.on_event is not None:
                    self.on_event(BatchEvent("start", self.plan.records[index]))
            self.busy[actor.run.remote(index, targets)] = (actor, index, targets)

    def _finished(self, ref: Any, actor: Any, index: int, targets: dict[str, Path]) -> None:
        assert self.plan is not None
        record, track = self.plan.records[index], self.tracks[index]
        try:
            event: BatchEvent = self.ray.get(ref)
        except self.actor_died:
            self.actors.discard(actor)
            self.deaths[index] = self.deaths.get(index, 0) + 1
            if self.deaths[index] < TRIES:
                self.ready.appendleft((index, targets))  # first in line: it has waited longest
            else:
                fail_track(track, record, AudioError(f"worker died while separating {track.input} (twice)"),
                           self.started[index], self.on_event)
                for path in targets.values():  # what the dead workers left of the stems: no lock holds it now
                    atomic.remove_stale(path, older_than=time.time())
                self.plan.release(index)
                self.finished.add(index)
            if len(self.finished) + len(self.busy) < len(self.tracks):  # work left for a fresh actor
                self._spawn()
            return
        else:
            self.idle.append(actor)
            vars(record).update(vars(event.record))  # the driver's record object is the one returned
            if self.on_event is not None:
                self.on_event(dataclasses.replace(event, record=record))
        self.plan.release(index)
        self.finished.add(index)


def _connect(ray: Any, address: Optional[str]) -> bool:
    """Connect this process to Ray unless it is; True when this call connected, so that the run
    disconnects at its end (which stops a local instance it started, and only that)."""
    if ray.is_initialized():
        return False
    # the dashboard is only ours to leave out on an instance started here; worker output must not
    # reach the driver's stdout, where --json writes its document
    local = not (address or os.environ.get("RAY_ADDRESS"))
    ray.init(address=address, log_to_driver=False, **({"include_dashboard": False} if local else {}))
    return True


def separate_batch_ray(
    tracks: Sequence[Track],
    out: Union[str, Path],
    *,
    model: Union[None, str, "os.PathLike[str]"] = None,
    repo: Union[None, str, "os.PathLike[str]"] = None,
    device: str = "auto",
    segment: Optional[float] = None,
    overlap: float = 0.25,
    shifts: int = 0,
    seed: int = 0,
    batch_size: int = 1,
    precision: str = "auto",
    template: str = DEFAULT_TEMPLATE,
    stems: Optional[Sequence[str]] = None,
    two_stems: Optional[str] = None,
    options: Optional[OutputOptions] = None,
    overwrite: bool = False,
    workers: Optional[int] = None,
    cpus_per_worker: Optional[float] = None,
    gpus_per_worker: Optional[float] = None,
    address: Optional[str] = None,
    on_event: Optional[Callable[[BatchEvent], None]] = None,
) -> list[TrackRecord]:
    """`batch.separate_batch` on a Ray cluster: one record per track, in order, same files.

    `model` and `repo` are what `stemsplit.load_model` takes; every actor loads the model itself
    (the driver never does: with no `model` it only resolves the default's name, once, which may
    download it). The separator settings are `Separator`'s, `template` to `overwrite`
    `separate_batch`'s (`options` an `OutputOptions`). `workers`, `cpus_per_worker` and
    `gpus_per_worker` size the pool (defaults: `pool_size`; never more actors than tracks).
    `address` is Ray's (`auto`, `ray://host:10001`, ...); a process already connected to Ray is
    used as it is and left connected.
    Raises before any track runs what the local batch raises (TemplateError, ModelError,
    SettingsError), ModelError when every actor died loading the model, and any bug a worker hit.
    """
    check_template(template)  # a typo should cost no cluster
    import ray

    connected = _connect(ray, address)
    pool: Optional[_Pool] = None
    try:
        node_cpus = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=None)
        size, cpus, gpus = pool_size(ray.cluster_resources(), device, workers, cpus_per_worker, gpus_per_worker,
                                     node_cpus)
        settings = dict(device=device, segment=segment, overlap=overlap, shifts=shifts, seed=seed,
                        batch_size=batch_size, precision=precision)
        # restarts are the pool's business (a fresh actor, the track retried once), not Ray's
        actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0)(_Worker)
        if model is None:  # resolved once, here: every actor then loads the same model by name
            from stemsplit.models.resolve import resolve_default

            model = resolve_default().name
        spec = (os.getcwd(), os.fspath(model), None if repo is None else os.fspath(repo))
        label = model_label(Path(model) if isinstance(model, os.PathLike) else model)

        def spawn() -> Any:
            return actor_class.remote(*spec, settings, max(1, int(cpus)))

        def plan(sources: list[str]) -> BatchPlan:
            return BatchPlan(tracks, out, sources, model=label, template=template, stems=stems, two_stems=two_stems,
                             options=options, overwrite=overwrite)

        pool = _Pool(ray, spawn, min(size, max(1, len(tracks))), tracks, plan, on_event)
        return pool.run()
    finally:
        if pool is not None:
            pool.close()
        if connected:
            ray.shutdown()
