"""`stemsplit train` (hidden): turn flags and a YAML file into a TrainConfig, run it, render progress.

It must not train or validate settings itself: `stemsplit.train` does.
"""
from __future__ import annotations

from typing import Any, List, Optional

import typer

from stemsplit.cli.app import app
from stemsplit.cli.common import _fail

@app.command(hidden=True)
def train(
    config: Optional[str] = typer.Option(None, "--config", help="YAML file with any TrainConfig keys; flags override it."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run folder: checkpoints, state.pt, log.jsonl."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Demucs, HDemucs or HTDemucs."),
    kw: List[str] = typer.Option([], "--kw", help="Model kwarg KEY=VALUE (YAML value), repeatable: --kw channels=32."),
    init: Optional[str] = typer.Option(None, "--init", help="Fine-tune from this model (name or file)."),
    widen: Optional[int] = typer.Option(None, "--widen", help="Start from --init (an HDemucs) widened to this many channels."),
    freeze_encoder: Optional[bool] = typer.Option(None, "--freeze-encoder/--no-freeze-encoder"),
    musdb: Optional[str] = typer.Option(None, "--musdb", help="MUSDB-style root (train/, valid/) or a folder of tracks."),
    valid: Optional[str] = typer.Option(None, "--valid", help="Validation folder of tracks."),
    musdb_weight: Optional[float] = typer.Option(None, "--musdb-weight"),
    synth_weight: Optional[float] = typer.Option(None, "--synth-weight", help="Weight of on-the-fly synthetic songs."),
    synth_samples: Optional[str] = typer.Option(
        None, "--synth-samples", help="Recorded material for synthetic songs ('auto' or a folder): train split "
        "for training, valid split for validation."),
    synth_sample_share: Optional[float] = typer.Option(None, "--synth-sample-share",
                                                       help="Chance that each synthetic stem uses recorded material."),
    segment: Optional[float] = typer.Option(None, "--segment", help="Excerpt seconds (default: the model's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes (0: main process)."),
    valid_excerpts: Optional[int] = typer.Option(None, "--valid-excerpts"),
    valid_synth: Optional[bool] = typer.Option(
        None, "--valid-synth/--no-valid-synth", help="With --synth-weight: also validate on on-the-fly songs "
        "(default), or on the validation folder alone."),
    steps: Optional[int] = typer.Option(None, "--steps"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine, plateau or constant."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Linear warmup steps."),
    clip_grad: Optional[float] = typer.Option(None, "--clip-grad", help="Max gradient norm (0: off)."),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of weights (0: off), e.g. 0.999."),
    loss: Optional[str] = typer.Option(None, "--loss", help="l1 or mse."),
    stft_weight: Optional[float] = typer.Option(None, "--stft-weight", help="Weight of the multi-resolution STFT loss."),
    source_weight: List[str] = typer.Option([], "--source-weight", help="SOURCE=WEIGHT, repeatable."),
    remix: Optional[bool] = typer.Option(None, "--remix/--no-remix"),
    gain: Optional[bool] = typer.Option(None, "--gain/--no-gain"),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip"),
    swap: Optional[bool] = typer.Option(None, "--swap/--no-swap"),
    shift: Optional[float] = typer.Option(None, "--shift", help="Max per-source time shift in seconds (0: off)."),
    pitch: Optional[int] = typer.Option(None, "--pitch", help="Max pitch shift in semitones (0: off)."),
    tempo: Optional[float] = typer.Option(None, "--tempo", help="Max relative tempo change, e.g. 0.1 (0: off)."),
    noise: Optional[bool] = typer.Option(None, "--noise/--no-noise", help="Add noise to the 'other' stem."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1..."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto (bf16 on CUDA), bf16 or fp32."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch CPU threads."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every"),
    valid_every: Optional[int] = typer.Option(None, "--valid-every"),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue from <out>/state.pt."),
) -> None:
    """Train a separation model (hidden; see the README's advanced section)."""
    from stemsplit.errors import StemsplitError
    from stemsplit.errors import ConfigError
    from stemsplit.train.config import load_yaml, make_config, parse_assignments

    try:
        values = load_yaml(config) if config else {}

        def mapping(key: str) -> dict:
            """The config file's `key` section, for flags to add to; anything but a mapping is refused."""
            found = values.get(key) or {}
            if not isinstance(found, dict):
                raise ConfigError(f"{config}: {key!r} must be a mapping")
            return dict(found)

        aug = mapping("augment")
        flags = {
            "out_dir": out, "architecture": arch, "init": init, "widen": widen, "freeze_encoder": freeze_encoder, "musdb": musdb,
            "valid": valid, "musdb_weight": musdb_weight, "synth_weight": synth_weight, "segment": segment,
            "synth_samples": synth_samples, "synth_sample_share": synth_sample_share,
            "batch_size": batch_size, "num_workers": workers, "valid_excerpts": valid_excerpts, "valid_synth": valid_synth,
            "steps": steps, "lr": lr, "weight_decay": weight_decay, "schedule": schedule, "warmup_steps": warmup,
            "clip_grad": clip_grad, "ema_decay": ema, "loss": loss, "stft_weight": stft_weight, "device": device,
            "precision": precision, "threads": threads, "seed": seed, "checkpoint_every": checkpoint_every,
            "valid_every": valid_every, "resume": resume,
        }
        values.update({k: v for k, v in flags.items() if v is not None})
        aug_flags = {"remix": remix, "gain": gain, "flip": flip, "swap": swap, "shift": shift, "pitch": pitch,
                     "tempo": tempo, "noise": noise}
        aug.update({k: v for k, v in aug_flags.items() if v is not None})
        values["augment"] = aug
        if kw:
            values["model_kwargs"] = {**mapping("model_kwargs"), **parse_assignments(kw, "--kw")}
        if source_weight:
            values["source_weights"] = {**mapping("source_weights"),
                                        **parse_assignments(source_weight, "--source-weight")}
        cfg = make_config(values, config or "flags")
    except ConfigError as exc:
        raise _fail(exc, 2) from None

    import os

    from stemsplit.train.trainer import train as run_training

    reports = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if reports and cfg.precision == "bf16" and _bf16_emulated(cfg.device):
        typer.echo("warning: --precision bf16 on a CPU without AVX512-BF16 or AMX: torch emulates bf16 there, "
                   "so training runs several times slower than with --precision fp32", err=True)

    try:
        best = run_training(cfg, progress=_TrainProgress())
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    except StemsplitError as exc:
        raise _fail(exc, 1) from None
    except OSError as exc:  # the run folder cannot be written (config, log, states): say where, not a traceback
        raise _fail(f"{exc.filename or cfg.out_dir}: {exc.strerror or exc}", 1) from None
    if reports:
        from rich.console import Console

        Console().print(f"best checkpoint: {best}", highlight=False)


def _bf16_emulated(device: str) -> bool:
    """True when `device` resolves to a CPU that has no bf16 instructions (an unusable device is the
    trainer's error to word, not this check's)."""
    from stemsplit.engine.separator import native_bf16, resolve_device
    from stemsplit.errors import StemsplitError

    try:
        resolved = resolve_device(device)
        return resolved.type == "cpu" and not native_bf16(resolved)
    except StemsplitError:
        return False


class _TrainProgress:
    """Renders trainer events: a live bar with loss and throughput, one line per validation."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, record: dict) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        event = record["event"]
        if event == "step":
            if self.bar is None:
                self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.fields[info]}"), console=self.console)
                self.bar.start()
                self.task = self.bar.add_task("train", total=record["steps"], completed=record["step"] - 1, info="")
            info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['samples_per_s']:.1f} samples/s"
            self.bar.update(self.task, completed=record["step"], info=info)
            if record["step"] >= record["steps"]:
                self.bar.stop()
        elif event == "valid":
            scores = "  ".join(f"{k} {v:.2f}" for k, v in record["usdr"].items())
            self.console.print(f"step {record['step']} valid uSDR (dB): {scores}", highlight=False)
