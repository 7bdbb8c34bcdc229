"""What every command shares: the one-line error on stderr, the usage-error wording of a library
SettingsError, the download progress bars, the one line saying the default model fell back to the
embedded one, names printed safely, and the option types two commands share (--precision).

It must not import torch, hold a command, or decide a command's exit codes beyond the helpers' own
`code` argument.
"""
from __future__ import annotations

import contextlib
import enum
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from stemsplit.constants import PRECISIONS


def choices(name: str, values: tuple) -> Any:
    """An option type that offers exactly `values` (typer reads choices from a str enum)."""
    return enum.Enum(name, {str(v): str(v) for v in values}, type=str)


Precision = choices("Precision", PRECISIONS)
PRECISION_HELP = ("Network precision. auto: bf16 where the CPU (AVX512-BF16/AMX) or CUDA device runs it natively "
                  "and the model family keeps its quality (stems ~45 dB SNR from fp32), else fp32; fp32: exact; "
                  "bf16; fp16 (CUDA only).")

def _fail(message: object, code: int) -> "typer.Exit":
    """One red line on stderr (see `_error_line`), and the exit code to leave with."""
    _error_line(message)
    return typer.Exit(code)


def _error_line(message: object) -> None:
    """One red line on stderr, the message printed literally, never as markup; for an error the
    command goes on after (one failed track of many) as well as for the one it stops at."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[red]error:[/red] {escape(printable(str(message)))}", highlight=False,
                               soft_wrap=True)


def printable(text: str) -> str:
    """`text` with control characters (a newline or an escape sequence in a file name) written as
    Python escapes, so that one record stays one line and cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _settings_failure(exc: Any) -> "typer.Exit":
    """A SettingsError worded for the command line: the parameter it names becomes its flag."""
    return _fail(f"--{exc.param.replace('_', '-')} {exc.reason}", 2)


def _check_segments(segment: Optional[float], overlap: float) -> None:
    """Usage errors (exit 2) for --segment and --overlap, before any model is loaded."""
    if segment is not None and not segment > 0:  # (NaN too)
        raise _fail(f"--segment must be a positive number of seconds, got {segment}", 2)
    if not 0 <= overlap < 1:
        raise _fail(f"--overlap must be in [0, 1), got {overlap}", 2)


@contextlib.contextmanager
def _download_bars(show: bool, *, transient: bool) -> Iterator[Optional[Callable[[str, int, Optional[int]], None]]]:
    """A download-progress callback drawing one bar per file on stderr, or None (no bars) unless
    `show` and stderr is a terminal: elsewhere a bar cannot redraw itself and would leave a blank
    line in front of any error."""
    from rich.console import Console

    console = Console(stderr=True)
    if not (show and console.is_terminal):
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=transient) as bar:
        tasks: dict = {}

        def report(file: str, done: int, total: Optional[int]) -> None:
            if file not in tasks:
                tasks[file] = bar.add_task(file, total=total)
            bar.update(tasks[file], completed=done, total=total)

        yield report


def _load_with_progress(load_model: Any, name: Optional[str], repo: Optional[Path], show: bool, *,
                        offline: Optional[bool] = None, on_default: Optional[Callable[[Any], None]] = None) -> Any:
    """Load a model; a first-use download shows a transient progress bar (see `_download_bars`).
    With no `name`, `on_default` receives the default's `DefaultChoice`."""
    with _download_bars(show, transient=True) as report:
        return load_model(name, repo=repo, progress=report, offline=offline, on_default=on_default)


def _note_fallback(choice: Any) -> None:
    """The one stderr line of a run whose default model fell back to the embedded one: which
    model, why, and how to get the better one (nothing for any other choice)."""
    if not choice.fallback:
        return
    import sys

    from stemsplit.constants import PREFERRED_MODEL
    from stemsplit.models import registry

    files = ", ".join(file.name for file in registry.get_entry(PREFERRED_MODEL).files)
    sys.stderr.write(printable(
        f"note: using the small embedded model {choice.name}: {choice.reason}; for better stems run "
        f"`stemsplit models download {PREFERRED_MODEL}`, or copy {files} into {registry.cache_dir()}") + "\n")
