"""The training loop: from a `TrainConfig` to native checkpoints.

Owns: checking the data before the first step, the optimisation loop (AdamW, schedule,
clipping, EMA, bf16 autocast, DistributedDataParallel) of the model that model.py builds,
periodic validation (uSDR per source on fixed excerpts), checkpoints (`last` and `best`, native
format via stemsplit.models.checkpoint), the resumable state file, and the JSON-lines log.
Files in `out_dir`: last.safetensors, best.safetensors (when there is validation data),
state.pt (resume), log.jsonl, config.json. Only rank 0 writes.
Must not: print (progress goes to the `progress` callback as plain dicts) or parse flags.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from stemsplit.atomic import write_text
from stemsplit.errors import CheckpointError, ConfigError, one_line
from stemsplit.train import distributed
from stemsplit.train.augment import Augmenter
from stemsplit.train.config import TrainConfig, to_jsonable
from stemsplit.data.musdb import scan_folder, split_roots
from stemsplit.train.data import (ExcerptDataset, FolderSource, StepSampler, SynthSource, synth_options,
                                  validation_set)
from stemsplit.train.ema import EMA
from stemsplit.train.losses import StemLoss
from stemsplit.train.model import build_model, freeze_encoder, param_groups
from stemsplit.train.schedule import Schedule
from stemsplit.train.state import load_state, save_state

Progress = Callable[[dict[str, Any]], None]

RUN_FILES = ("state.pt", "last.safetensors", "best.safetensors")
"""A folder holding any of these holds a run, which a new run there (no --resume) would overwrite."""

STATE_KEYS = ("step", "best", "model", "optimizer", "schedule", "ema", "rng")
"""The keys every state written by `_train` holds (and "config" since it is compared on resume)."""

FIXED_ON_RESUME = ("architecture", "model_kwargs", "init", "widen", "sources", "samplerate", "channels", "freeze_encoder",
                   "ema_decay")
"""Settings that shape the model, its optimiser state or its averaged weights: a resumed run must keep
them. Everything else (steps, lr and schedule, data, augmentation, loss, runtime) may change."""


class _Data:
    """The checked data of a run: the training excerpt set, its collation, the validation excerpts."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, frames: int):
        stems = list(model.sources)
        rate, channels = int(model.samplerate), int(model.audio_channels)
        sources: list[Any] = []
        weights: list[float] = []
        folder_valid: Optional[FolderSource] = None
        if cfg.musdb is not None:
            train_root, valid_root = split_roots(cfg.musdb)
            valid_root = cfg.valid if cfg.valid is not None else valid_root
            sources.append(FolderSource(scan_folder(train_root, stems, rate), stems, channels))
            weights.append(cfg.musdb_weight)
            if valid_root is not None:
                folder_valid = FolderSource(scan_folder(valid_root, stems, rate), stems, channels)
        elif cfg.valid is not None:
            folder_valid = FolderSource(scan_folder(cfg.valid, stems, rate), stems, channels)
        self.collate = Augmenter(cfg.augment, stems, rate, frames, cfg.seed)
        synth_valid = None
        if cfg.synth_weight > 0:
            # With recorded samples, validation songs use material training never hears.
            sources.append(SynthSource(stems, rate, channels, self.collate.input_frames, cfg.seed,
                                       **synth_options(cfg.synth_samples, cfg.synth_sample_share, "train")))
            weights.append(cfg.synth_weight)
            if cfg.valid_synth or folder_valid is None:  # without a folder, the songs are all there is
                synth_valid = SynthSource(stems, rate, channels, frames, cfg.seed,
                                          **synth_options(cfg.synth_samples, cfg.synth_sample_share, "valid"))
        self.dataset = ExcerptDataset(sources, weights, self.collate.input_frames, cfg.seed)
        crop = Augmenter(cfg.augment, stems, rate, frames, cfg.seed, train=False)
        excerpts = validation_set(folder_valid, synth_valid, cfg.valid_excerpts, frames)
        self.valid = [crop([(0, e)]) for e in excerpts]


class _Log:
    """Append-only JSON-lines log (rank 0), mirrored to the progress callback."""

    def __init__(self, path: Optional[Path], progress: Optional[Progress]):
        self._handle = open(path, "a", encoding="utf-8") if path is not None else None
        self._progress = progress

    def __call__(self, record: dict[str, Any]) -> None:
        if self._handle is not None:
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
        if self._progress is not None:
            self._progress(record)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _leave_quietly_on_sigterm(worker: int) -> None:
    """In a data worker: exit cleanly on SIGTERM. A process-group kill (a scheduler's cancel) also
    reaches the main process, which stops the run itself; a worker dying of the signal made the
    main process raise in its cleanup (a traceback, and a checkpoint's .part file left behind)."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past `step` (written after the last checkpoint of an interrupted run),
    so a resumed run's log reads as one uninterrupted curve."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by the interruption
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text(path, "".join(kept))  # atomically: an interrupt here must not cut the log it is trimming


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The global generators a model draws from while training: torch's (dropout, CaPE jitter) and
    Python's (HTDemucs's t_sin_random_shift)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:  # absent in states written before it was stored
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@torch.no_grad()
def validate(model: torch.nn.Module, excerpts: list[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, autocast: Any) -> dict[str, float]:
    """Mean uSDR per source over the fixed validation excerpts (and "mean" over sources).

    A source that is silent in an excerpt (a 3-s cut often has no vocals; see `metrics.audible`)
    is left out of that source's mean, or its leak scores would drown the excerpts where there is
    something to separate. A source silent everywhere is NaN and left out of "mean".
    """
    from stemsplit.metrics import audible, usdr

    was_training = model.training
    model.eval()
    scores, heard = [], []
    for mix, ref in excerpts:
        with autocast():
            est = model(mix.to(device))
        scores.append(usdr(ref, est.float().cpu()))  # on the CPU: float64 scoring, which MPS lacks
        heard.append(audible(ref))
    model.train(was_training)
    score, keep = torch.cat(scores), torch.cat(heard)
    per_source = score.where(keep, 0.0).sum(dim=0) / keep.sum(dim=0)  # 0/0 = NaN for a source never heard
    result = {name: float(v) for name, v in zip(model.sources, per_source)}
    result["mean"] = float(per_source.nanmean())
    return result


def train(cfg: TrainConfig, progress: Optional[Progress] = None) -> Path:
    """Run training as configured; return the best checkpoint (or the last, without validation).

    Under torchrun every process calls this; gradients are averaged by DDP and only rank 0 writes.
    """
    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist, device = distributed.setup(cfg.device)
    finished = False
    try:
        best = _train(cfg, progress if dist.main else None, dist, device)
        finished = True
        return best
    finally:
        distributed.teardown(dist, finished)


def _open_run(cfg: TrainConfig, settings: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The state to resume from, checked against this run's `settings` (`cfg` as JSON), or None for
    a new run.

    Checked before the model is built or the data scanned, so that a mistake is reported at once:
    a new run in a folder holding another would overwrite it (its log at once, its checkpoints at
    the first save); a resumed run with other model settings failed on a cryptic state_dict error
    (or silently dropped its EMA), and one with --steps below the step reached did nothing.
    """
    out_dir = Path(cfg.out_dir)
    state_path = out_dir / "state.pt"
    if not cfg.resume:
        found = [name for name in RUN_FILES if (out_dir / name).exists()]
        if found:
            raise ConfigError(f"{out_dir} already holds a training run ({', '.join(found)}): continue it with "
                              "--resume, or give another --out (or delete the folder) to start a new one")
        return None
    state = load_state(state_path)
    missing = [key for key in STATE_KEYS if key not in state]
    if missing or isinstance(state["step"], bool) or not isinstance(state["step"], int):
        raise CheckpointError(f"{state_path}: not a training state written by stemsplit train "
                              f"(missing or malformed: {', '.join(missing) or 'step'})")
    started = state.get("config")  # absent in states written before it was stored
    if isinstance(started, dict):
        changed = []
        for key in FIXED_ON_RESUME:
            old, new = started.get(key), settings[key]
            if isinstance(old, dict) and isinstance(new, dict):  # name the kwargs that differ, not all of them
                changed += [f"{key} {k}: {old.get(k)!r}, now {new.get(k)!r}" for k in sorted({*old, *new})
                            if old.get(k) != new.get(k)]
            elif old != new:
                changed.append(f"{key} {old!r}, now {new!r}")
        if changed:
            raise ConfigError(f"{state_path}: the run was started with other settings ({'; '.join(changed)}); "
                              "resume it with the ones it was started with")
    if state["step"] > cfg.steps:
        raise ConfigError(f"{state_path}: the run is already at step {state['step']}, past --steps {cfg.steps}; "
                          f"give at least {state['step']} to resume it")
    return state


def _train(cfg: TrainConfig, progress: Optional[Progress], dist: distributed.Dist, device: torch.device) -> Path:
    from stemsplit.models.checkpoint import save_checkpoint

    settings = to_jsonable(cfg)  # recorded in config.json, every checkpoint and state
    state = _open_run(cfg, settings)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = build_model(cfg)
    loss_fn = StemLoss(model.sources, cfg.loss, cfg.stft_weight, cfg.stft_ffts, cfg.source_weights)
    segment = float(cfg.segment if cfg.segment is not None else model.segment)
    frames = int(round(segment * model.samplerate))
    if cfg.stft_weight > 0 and frames <= max(cfg.stft_ffts) // 2:  # torch.stft's reflect padding needs more
        raise ConfigError(f"segment of {segment} s ({frames} samples at {model.samplerate} Hz) is too short for "
                          f"the STFT loss of size {max(cfg.stft_ffts)}: use a longer --segment or smaller stft_ffts")
    data = _Data(cfg, model, frames)  # checks every file before anything else happens
    if cfg.schedule == "plateau" and not data.valid:
        raise ConfigError("--schedule plateau needs validation data (a valid/ folder, --valid or synth)")
    if cfg.freeze_encoder:
        freeze_encoder(model)
    model.to(device)
    groups = param_groups(model, cfg.lr, cfg.weight_decay)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    schedule = Schedule(cfg.schedule, cfg.lr, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio,
                        cfg.plateau_factor, cfg.plateau_patience)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    bf16 = cfg.precision == "bf16" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())

    def autocast() -> Any:
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    out_dir = Path(cfg.out_dir)
    state_path, last_path, best_path = out_dir / "state.pt", out_dir / "last.safetensors", out_dir / "best.safetensors"
    start, best = 0, None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if ema is not None:
                ema.load_state_dict(state["ema"] or {})
            _set_rng_state(state["rng"], device)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            detail = one_line(exc)
            raise CheckpointError(f"{state_path}: does not fit this model and configuration ({detail})") from exc
        start, best = state["step"], state["best"]
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            _truncate_log(out_dir / "log.jsonl", start)
        else:  # a new run where one died before its first checkpoint: its log is its own curve
            (out_dir / "log.jsonl").unlink(missing_ok=True)
        write_text(out_dir / "config.json", json.dumps(settings, indent=2))
    log = _Log(out_dir / "log.jsonl" if dist.main else None, progress)

    net: torch.nn.Module = model
    if dist.active:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(
        data.dataset, batch_size=cfg.batch_size, sampler=StepSampler(start, cfg.steps, cfg.batch_size, dist.rank, dist.world),
        collate_fn=data.collate, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
        persistent_workers=False, worker_init_fn=_leave_quietly_on_sigterm,
        # its own generator: starting an iterator draws a seed, which from the global generator would
        # shift every later dropout mask of a resumed run (restored before that draw) by one number
        generator=torch.Generator().manual_seed(cfg.seed))

    def weights() -> Any:
        return ema.swapped(model) if ema is not None else contextlib.nullcontext(model)

    def save(step: int, loss: float, scores: Optional[dict[str, float]]) -> None:
        summary = {"step": step, "steps": cfg.steps, "loss": loss, "valid_usdr": scores, "ema": cfg.ema_decay,
                   "config": settings}
        with weights():
            save_checkpoint(model, last_path, training=summary)
        save_state(state_path, {
            "step": step, "best": best, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "rng": _rng_state(device), "config": settings})
        log({"event": "checkpoint", "step": step, "path": str(last_path)})

    model.train()
    loss_value, scores = float("nan"), None
    tick, rate = time.perf_counter(), 0.0
    samples = cfg.batch_size * dist.world
    try:
        for step, (mix, ref) in enumerate(loader, start=start):
            lr = schedule.apply(optimizer, step)
            mix = mix.to(device, non_blocking=True)
            ref = ref.to(device, non_blocking=True)
            with autocast():
                est = net(mix)
            loss = loss_fn(est, ref)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            done = step + 1
            loss_value = float(distributed.mean(dist, loss.detach()))
            now = time.perf_counter()
            current = samples / max(now - tick, 1e-9)
            rate, tick = (current if rate == 0 else 0.9 * rate + 0.1 * current), now
            log({"event": "step", "step": done, "steps": cfg.steps, "loss": loss_value, "lr": lr,
                 "samples_per_s": rate})
            if data.valid and (done % cfg.valid_every == 0 or done == cfg.steps):
                scores = None
                if dist.main:
                    with weights():
                        scores = validate(model, data.valid, device, autocast)
                scores = distributed.from_main(dist, scores)
                schedule.observe(scores["mean"])
                # a NaN mean (non-finite output) is never best: as `best` it would beat nothing after it
                improved = math.isfinite(scores["mean"]) and (best is None or scores["mean"] > best)
                if improved:
                    best = scores["mean"]
                log({"event": "valid", "step": done, "usdr": scores, "best": best})
                if improved and dist.main:
                    with weights():
                        save_checkpoint(model, best_path, training={"step": done, "valid_usdr": scores,
                                                                    "config": settings})
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                if dist.main:
                    save(done, loss_value, scores)
                distributed.barrier(dist)
    finally:
        log.close()
    return best_path if best is not None else last_path
