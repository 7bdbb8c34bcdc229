"""The command-line application: the command group, `--version`, and the console-script entry point.

`stemsplit FILE...` is short for `stemsplit separate FILE...`. Each command lives in its own module
of this package and registers itself on `app`; this module must not import torch (so that `--help`
and `--version` stay instant) nor hold any command's logic.
Exit codes: 0 all inputs done or skipped, 1 some inputs failed, 2 usage error.
"""
from __future__ import annotations

from typing import Any, List, Optional

import typer
import typer.core

from stemsplit import __version__

class _DefaultToSeparate(typer.core.TyperGroup):
    """A command group where an unknown first word means `separate` (so `stemsplit song.mp3` works)."""

    def parse_args(self, ctx: typer.Context, args: List[str]) -> List[str]:
        # Only the first argument can name a command: the group's own options are --help and
        # --version, so any other leading option is separate's, and so is its value (`-o models`).
        if args and args[0] not in self.commands and args[0] not in ("--help", "--version"):
            args = ["separate", *args]
        if args and args[0] == "separate":
            _refuse_dashed_files(self.commands["separate"], args[1:])
        return super().parse_args(ctx, args)


def _refuse_dashed_files(command: Any, args: List[str]) -> None:
    """A file whose name starts with '-' (`-dash.wav`) would be read as options (`-d ash.wav`):
    refuse it with the fix, `--` before file names, instead of a puzzling option error."""
    import os

    # options are the params with an `is_flag` (arguments have none); typer may bring its own click
    takes_value = {name for param in command.params if getattr(param, "is_flag", True) is False
                   for name in param.opts}
    previous = ""
    for arg in args:
        if arg == "--":
            return
        if arg.startswith("-") and len(arg) > 1 and previous not in takes_value and os.path.isfile(arg):
            from stemsplit.cli.common import _fail

            # (raised while the group parses, before click's own usage-error handling)
            raise SystemExit(_fail(f"{arg!r} is a file, but a name starting with '-' reads as options: put "
                                   f"-- before the file names (stemsplit -- {arg})", 2).exit_code)
        previous = arg


app = typer.Typer(
    cls=_DefaultToSeparate,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Split songs into stems (drums, bass, other, vocals). `stemsplit song.mp3` is all it takes.",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"stemsplit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Split songs into stems (drums, bass, other, vocals)."""
    from stemsplit.runtime import keep_freed_memory

    keep_freed_memory()  # the command line owns its process, so it may tune the allocator for every command


def main() -> Any:
    """Console-script entry point.

    SIGTERM (`timeout`, a batch scheduler's preemption, `docker stop`, torchrun stopping its
    workers) stops every command as Ctrl-C does, through the atomic writers' cleanup: its default
    action killed the process outright and left hidden .part files (stems half written, a
    state-sized checkpoint) in the output folders.
    """
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return app()
