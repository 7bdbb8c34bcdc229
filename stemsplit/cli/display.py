"""What a batch shows: live bars or one line per track, failures on stderr, the --json document.

It must not run tracks or decide their outcome (batch does); it renders `BatchEvent`s and records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from stemsplit.cli.common import _fail, printable


class BatchDisplay:
    """Renders batch events: live bars on a terminal (`fancy`), one line per track on a pipe
    (`plain`), and every failure as a red line on stderr whatever the mode (even --json, -q)."""

    def __init__(self, console: Any, tracks: int, *, fancy: bool, plain: bool, verbose: bool) -> None:
        from rich.console import Console

        self.console, self.errors = console, Console(stderr=True)
        self.plain, self.verbose = plain, verbose
        self.lines = fancy or plain
        self.bar: Any = None
        self.all: Any = None  # the "all tracks" bar's task
        self.tasks: dict = {}  # input -> the bar of a track being separated (several run at once on Ray)
        if fancy:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                       TimeRemainingColumn)
            from rich.text import Text

            class _Speed(ProgressColumn):
                """Seconds of audio separated per second of wall time."""

                def render(self, task):  # type: ignore[no-untyped-def]
                    audio = task.fields.get("audio", 0.0)
                    if not task.elapsed or not audio:
                        return Text("")
                    return Text(f"{audio / task.elapsed:.1f}x")

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Speed(),
                                TimeRemainingColumn(), console=console)
            self.bar.start()
            self.all = self.bar.add_task("all tracks", total=tracks)

    def __call__(self, event: Any) -> None:
        from rich.markup import escape

        record = event.record
        if event.kind == "start":
            if self.bar is not None:  # the bar reads its description as markup: "song [live].wav" must stay literal
                self.tasks[record.input] = self.bar.add_task(escape(printable(Path(record.input).name)), total=None,
                                                             audio=0.0)
            return
        if event.kind == "progress":
            if record.input in self.tasks:
                audio = (record.duration or 0.0) * event.done / event.total if event.total else 0.0
                self.bar.update(self.tasks[record.input], completed=event.done, total=event.total, audio=audio)
            return
        if event.kind == "failed":
            self.errors.print(f"[red]error:[/red] {escape(printable(event.message))}", highlight=False, soft_wrap=True)
        elif record.status == "skipped":
            if self.plain:
                self.console.print(f"skipped {printable(record.input)} (outputs exist; --overwrite to redo)", highlight=False,
                                   soft_wrap=True, markup=False)
        else:
            if self.lines:
                folder = next(iter(record.outputs.values())).parent
                self.console.print(f"ok {printable(record.input)} -> {printable(str(folder))} ({record.duration:.1f} s of audio in "
                                   f"{record.seconds:.1f} s)", highlight=False, soft_wrap=True, markup=False)
            if self.verbose and event.scale != 1.0:
                self.console.print(f"  rescaled by {event.scale:.3f} to avoid clipping", highlight=False)
        if self.bar is not None:
            if record.input in self.tasks:
                self.bar.remove_task(self.tasks.pop(record.input))
            self.bar.advance(self.all)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_summary(label: str, out: Path, records: list, error: Optional[str] = None,
                   settings: Optional[dict] = None) -> None:
    """The --json document on stdout: counts, one record per track, and `error` for a run that
    could not start, so that a script reading stdout gets a document whatever happened."""
    import json
    import sys

    summary = {
        "model": label, "out": str(out), **(settings or {"device": None, "precision": None}),
        "ok": sum(r.status == "ok" for r in records),
        "skipped": sum(r.status == "skipped" for r in records),
        "failed": sum(r.status == "failed" for r in records),
        "tracks": [r.as_dict() for r in records],
    }
    if error is not None:
        summary["error"] = error
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


def cannot_start(error: Exception, tracks: list, label: str, out: Path, as_json: bool) -> "typer.Exit":
    """Report a run that failed before any track (the model or the device): every track failed."""
    if as_json:
        from stemsplit.batch import TrackRecord

        print_summary(label, out, [TrackRecord(t.input, error=t.error or str(error)) for t in tracks], str(error))
    return _fail(error, 1)
