"""`stemsplit evaluate` (hidden): score a model on a MUSDB-style folder and print the tables.

It must not separate or score itself: `stemsplit.evaluate` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from stemsplit.cli.app import app
from stemsplit.cli.common import (PRECISION_HELP, Precision, _check_segments, _error_line, _fail, _note_fallback,
                                  _settings_failure)

@app.command(hidden=True)
def evaluate(
    folder: str = typer.Argument(..., help="Folder of track folders, each with mixture + one file per source."),
    model: Optional[str] = typer.Option(None, "--model", "-n", "-m", help="Model name (default: htdemucs if cached or "
                                         "downloadable, else the embedded model)."),
    offline: bool = typer.Option(False, "--offline", help="Never touch the network (also STEMSPLIT_OFFLINE=1)."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="Checkpoint file to evaluate."),
    tracks: List[str] = typer.Option([], "--tracks", help="Only these track folders (repeatable or comma-separated)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write all scores to this JSON file."),
    csv_out: Optional[str] = typer.Option(None, "--csv", help="Write all scores to this CSV file."),
    bss: bool = typer.Option(True, "--bss/--no-bss", help="Also compute BSSEval v4 SDR/ISR/SIR/SAR (slower)."),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda, cuda:1, mps."),
    segment: Optional[float] = typer.Option(None, "--segment", help="Seconds per segment (default: the model's)."),
    overlap: float = typer.Option(0.25, "--overlap", help="Overlap between segments, in [0, 1)."),
    shifts: int = typer.Option(0, "--shifts", min=0),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    precision: Precision = typer.Option(Precision("auto"), "--precision", help=PRECISION_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch CPU threads."),
) -> None:
    """Score a model on a MUSDB-style folder (hidden; see the README's advanced section).

    A track that cannot be read is reported as one red line and skipped; the exit code is then 1,
    and the JSON file lists it under "failed". Nothing is written when no track could be scored.
    """
    from rich.console import Console
    from rich.table import Table

    import torch

    from stemsplit.models.resolve import load_model
    from stemsplit.errors import SettingsError, StemsplitError
    from stemsplit.evaluate import evaluate as run_evaluation

    if model is not None and model_path is not None:
        raise _fail("give --model or --model-path, not both", 2)
    _check_segments(segment, overlap)
    for option, target in (("--json", json_out), ("--csv", csv_out)):
        if target and Path(target).is_dir():  # found now, not after the whole evaluation
            raise _fail(f"{option} {target}: is a folder; give a file name", 2)
    if json_out and csv_out and Path(json_out).resolve() == Path(csv_out).resolve():
        raise _fail(f"--json and --csv name the same file {json_out}: the CSV would replace the JSON", 2)
    if threads:
        torch.set_num_threads(threads)
    console = Console()
    names = [n for item in tracks for n in item.split(",") if n] or None

    status = console.status("")

    def show(record: dict) -> None:
        if record["event"] == "failed":
            status.stop()
            _error_line(record["error"])
            return
        if record["event"] == "track":
            status.update(f"{record['index'] + 1}/{record['total']} {record['name']}: separating and scoring")
            status.start()
            return
        status.stop()
        table = Table(title=f"{record['index'] + 1}/{record['total']} {record['name']}", title_justify="left")
        table.add_column("source")
        for metric in result_metrics:
            table.add_column(metric, justify="right")
        for source, scores in record["scores"].items():
            table.add_row(source, *(_score_cell(scores[m]) for m in result_metrics))
        console.print(_explain_undefined(table, [v for scores in record["scores"].values() for v in scores.values()]))

    result_metrics = ("usdr", "si_sdr", "sdr", "isr", "sir", "sar") if bss else ("usdr", "si_sdr")
    try:
        chosen = load_model(model_path if model_path is not None else model, offline=True if offline else None,
                            on_default=_note_fallback)
        result = run_evaluation(chosen, folder, tracks=names, bss=bss, progress=show, device=device, segment=segment,
                                overlap=overlap, shifts=shifts, batch_size=batch_size,
                                precision=precision.value)
    except SettingsError as exc:
        raise _settings_failure(exc) from None
    except StemsplitError as exc:
        raise _fail(exc, 1) from None
    finally:
        status.stop()
    if not result.tracks:
        hint = f"; for a MUSDB-style root give its test folder, {Path(folder) / 'test'}" if "test" in result.failed else ""
        raise _fail(f"{folder}: no track could be scored ({len(result.failed)} failed){hint}", 1)
    auto = " (auto)" if precision.value == "auto" else ""
    console.print(f"the network ran in {result.precision}{auto}", highlight=False, markup=False)
    failed = f", {len(result.failed)} failed" if result.failed else ""
    table = Table(title=f"aggregate over {len(result.tracks)} track(s){failed} (dB)", title_justify="left")
    table.add_column("source")
    table.add_column("")
    for metric in result.metrics:
        table.add_column(metric, justify="right")
    aggregate = result.aggregate()
    for source, per_metric in aggregate.items():
        for stat in ("mean", "median"):
            table.add_row(source if stat == "mean" else "", stat,
                          *(_score_cell(per_metric[m][stat]) for m in result.metrics))
    values = [v for per_metric in aggregate.values() for stats in per_metric.values() for v in stats.values()]
    console.print(_explain_undefined(table, values))  # before the files: an unwritable file must not hide the scores
    try:
        if json_out:
            result.write_json(json_out)
        if csv_out:
            result.write_csv(csv_out)
    except StemsplitError as exc:
        raise _fail(exc, 1) from None
    if result.failed:
        raise typer.Exit(1)


def _score_cell(value: float) -> str:
    """A score for a table: 2 decimals, '-' when undefined (silent reference), 'inf' for perfect."""
    return "-" if value != value else f"{value:.2f}"


def _explain_undefined(table: Any, values: List[float]) -> Any:
    """`table` with a caption saying what '-' means when one of its `values` is undefined: one
    silent reference leaves every source of its track without a BSSEval score, which looks like a
    bug unless said."""
    if any(value != value for value in values):
        table.caption = "-: undefined: a reference or estimate is silent in every 1 s frame (skipped, as museval)"
        table.caption_justify = "left"
    return table
