"""Scoring a model over a MUSDB-style folder of tracks.

Owns: finding and checking evaluation tracks (mixture + one reference file per model source),
separating each mixture with a `Separator`, scoring every source with `metrics` (uSDR, SI-SDR and,
unless switched off, BSSEval v4 SDR/ISR/SIR/SAR as per-track frame medians), aggregating over
tracks (mean and median per source, skipping tracks where a score is undefined), and writing the
results as JSON or CSV. A track that cannot be read is recorded as failed, with its one-line
error, and the others are still scored. Scores are computed on CPU in float64, so they do not
depend on the device the model ran on beyond the model's own float32 arithmetic.
Must not: print or render tables (cli.py does), or load models by name (the caller passes one).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from stemsplit.atomic import write_text
from stemsplit.errors import DataError, ModelError, StemsplitError
from stemsplit.data.musdb import Track, check_track, track_folders

FAST_METRICS = ("usdr", "si_sdr")
BSS_METRICS = ("sdr", "isr", "sir", "sar")

Progress = Callable[[dict[str, Any]], None]


@dataclass
class Evaluation:
    """Per-track scores {track: {source: {metric: value}}} (NaN: undefined) and their aggregate,
    and the tracks that could not be scored {track: one-line error}; `precision` is the one the
    network ran in (bf16 scores differ slightly from fp32 ones, so a score file says which)."""

    metrics: tuple[str, ...]
    sources: list[str]
    precision: str = "fp32"
    tracks: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def aggregate(self) -> dict[str, dict[str, dict[str, float]]]:
        """{source: {metric: {"mean": m, "median": md}}} over tracks, ignoring undefined scores."""
        from stemsplit.metrics import nanmedian

        out: dict[str, dict[str, dict[str, float]]] = {}
        for source in self.sources:
            out[source] = {}
            for metric in self.metrics:
                values = torch.tensor([t[source][metric] for t in self.tracks.values()], dtype=torch.float64)
                out[source][metric] = {"mean": float(values.nanmean()), "median": float(nanmedian(values))}
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: undefined scores become null, and so do infinite ones (BSSEval gives +inf
        for an estimate without error), because JSON has no infinity and `Infinity` breaks parsers."""

        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return None if isinstance(value, float) and not math.isfinite(value) else value

        return {"metrics": list(self.metrics), "sources": self.sources, "precision": self.precision,
                "tracks": clean(self.tracks),
                "aggregate": clean(self.aggregate()), "failed": self.failed}

    def write_json(self, path: Path) -> None:
        _atomic_text(Path(path), json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")

    def write_csv(self, path: Path) -> None:
        """One row per (track, source) and one per aggregate statistic; empty cells are undefined."""
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["track", "source", *self.metrics])

        def cell(value: float) -> str:
            return "" if math.isnan(value) else f"{value:.4f}"

        for name, scores in self.tracks.items():
            for source in self.sources:
                writer.writerow([name, source, *(cell(scores[source][m]) for m in self.metrics)])
        for stat in ("mean", "median"):
            for source, per_metric in self.aggregate().items():
                writer.writerow([f"<{stat}>", source, *(cell(per_metric[m][stat]) for m in self.metrics)])
        _atomic_text(Path(path), buffer.getvalue())


def _atomic_text(path: Path, text: str) -> None:
    """Write `text` atomically; a failure is a StemsplitError naming the scores file."""
    try:
        write_text(path, text)
    except OSError as exc:
        raise StemsplitError(f"{path}: cannot write the scores ({exc.strerror or exc})") from exc


def find_tracks(root: Path, sources: Sequence[str],
                names: Optional[Sequence[str]] = None) -> tuple[list[Track], dict[str, DataError]]:
    """Check every track folder (mixture + each source, same rate/length/channels) before any work.

    Returns the good tracks and {track: error} for the others, so that one bad folder does not stop
    the rest. A root that is not a folder of tracks, or a named track that does not exist, still
    raises: nothing can then be evaluated as asked.
    """
    good: list[Track] = []
    bad: dict[str, DataError] = {}
    for folder in track_folders(Path(root), names):
        try:
            good.append(check_track(folder, ["mixture", *sources]))
        except DataError as exc:
            bad[folder.name] = exc
    return good, bad


def score_track(ref: torch.Tensor, est: torch.Tensor, samplerate: int, bss: bool = True) -> dict[str, list[float]]:
    """All metrics for one track: ref, est (S, C, T) -> {metric: [value per source]}."""
    from stemsplit import metrics

    values: dict[str, torch.Tensor] = {"usdr": metrics.usdr(ref, est), "si_sdr": metrics.si_sdr(ref, est)}
    if bss:
        frames = metrics.bss_eval(ref, est, samplerate)
        values.update({name: metrics.nanmedian(v) for name, v in frames.items()})
    return {name: [float(x) for x in v] for name, v in values.items()}


def evaluate(model: torch.nn.Module, root: Path, *, tracks: Optional[Sequence[str]] = None, bss: bool = True,
             progress: Optional[Progress] = None, **separator: Any) -> Evaluation:
    """Separate and score every (or each named) track under `root` with `model`.

    `separator` holds Separator options (device, segment, overlap, shifts, batch_size,
    precision). A track that fails its check, cannot be read, or gets a non-finite estimate lands in
    `Evaluation.failed` (and a "failed" progress event) instead of stopping the run; bad options,
    or a root without tracks, still raise.
    """
    from stemsplit.engine.separator import Separator

    sources = list(model.sources)
    checked, bad = find_tracks(root, sources, tracks)
    runner = Separator(model, **separator)
    result = Evaluation(FAST_METRICS + (BSS_METRICS if bss else ()), sources, precision=runner.precision)

    def fail(name: str, error: StemsplitError) -> None:
        result.failed[name] = str(error)
        if progress is not None:
            progress({"event": "failed", "name": name, "error": str(error)})

    for name, error in bad.items():
        fail(name, error)
    for index, track in enumerate(checked):
        if progress is not None:
            progress({"event": "track", "index": index, "total": len(checked), "name": track.name})
        try:
            per_metric = _separate_and_score(runner, model, track, bss)
        except StemsplitError as exc:
            fail(track.name, exc)
            continue
        result.tracks[track.name] = {
            source: {metric: per_metric[metric][i] for metric in result.metrics} for i, source in enumerate(sources)}
        if progress is not None:
            progress({"event": "scored", "index": index, "total": len(checked), "name": track.name,
                      "scores": result.tracks[track.name]})
    return result


def _separate_and_score(runner: Any, model: torch.nn.Module, track: Track, bss: bool) -> dict[str, list[float]]:
    """Separate one checked track's mixture through the track pipeline at the model's rate and
    channels, and score it against its stems read the same way.

    The separator refuses an estimate with NaN or infinite samples (every metric of it would be
    NaN, which the tables read as "undefined" and skip, so a broken model would pass as one with
    nothing to score); its error gets the file's name here.
    """
    from stemsplit.audio.decode import load_audio
    from stemsplit.pipeline import open_input, separate_audio

    rate, channels = int(model.samplerate), int(model.audio_channels)
    mixture = track.files["mixture"]
    refs = torch.stack([load_audio(track.files[s], rate, channels).wav for s in model.sources])
    try:
        with open_input(mixture, runner) as audio:
            est = separate_audio(audio, runner, keep_samplerate=False, keep_channels=False)
    except ModelError as exc:  # (the separator does not know the file)
        raise ModelError(f"{mixture}: {exc}") from None
    if refs.shape[-1] != est.shape[-1]:
        raise DataError(f"{mixture}: length differs from its stems after resampling")
    return score_track(refs, est, rate, bss)
