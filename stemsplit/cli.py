"""The command line: parse, call the API, report. Nothing else lives here.

`stemsplit FILE...` is short for `stemsplit separate FILE...`. Heavy imports (torch, soundfile)
happen inside the command functions so that `--help` and `--version` stay instant.
Exit codes: 0 all inputs done or skipped, 1 some inputs failed, 2 usage error.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional

import typer
import typer.core

from stemsplit import __version__
from stemsplit.constants import DEFAULT_MODEL, DEFAULT_TEMPLATE, MP3_BITRATES


class _DefaultToSeparate(typer.core.TyperGroup):
    """A command group where an unknown first word means `separate` (so `stemsplit song.mp3` works)."""

    def parse_args(self, ctx: typer.Context, args: List[str]) -> List[str]:
        # Only the first argument can name a command: the group's own options are --help and
        # --version, so any other leading option is separate's, and so is its value (`-o models`).
        if args and args[0] not in self.commands and args[0] not in ("--help", "--version"):
            args = ["separate", *args]
        return super().parse_args(ctx, args)


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


# ---- separate (issue 2) -------------------------------------------------------------------------

import enum  # noqa: E402  (cheap; typer needs these to read the option types)
from pathlib import Path  # noqa: E402

class _Format(str, enum.Enum):
    wav = "wav"
    flac = "flac"
    mp3 = "mp3"


class _BitDepth(str, enum.Enum):
    b16 = "16"
    b24 = "24"
    b32 = "32"


class _Precision(str, enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class _Clip(str, enum.Enum):
    rescale = "rescale"
    clamp = "clamp"
    none = "none"




def _fail(message: object, code: int) -> "typer.Exit":
    """One red line on stderr (see `_error_line`), and the exit code to leave with."""
    _error_line(message)
    return typer.Exit(code)


def _error_line(message: object) -> None:
    """One red line on stderr, the message printed literally, never as markup; for an error the
    command goes on after (one failed track of many) as well as for the one it stops at."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)


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


def _load_with_progress(load_model: Any, name: Optional[str], repo: Optional[Path], show: bool) -> Any:
    """Load a model; a first-use download shows a transient progress bar (see `_download_bars`)."""
    with _download_bars(show, transient=True) as report:
        return load_model(name, repo=repo, progress=report)


class _BatchDisplay:
    """Renders batch events: live bars on a terminal (`fancy`), one line per track on a pipe
    (`plain`), and every failure as a red line on stderr whatever the mode (even --json, -q)."""

    def __init__(self, console: Any, tracks: int, *, fancy: bool, plain: bool, verbose: bool) -> None:
        from rich.console import Console

        self.console, self.errors = console, Console(stderr=True)
        self.plain, self.verbose = plain, verbose
        self.lines = fancy or plain
        self.bar: Any = None
        self.all: Any = None  # the "all tracks" bar's task
        self.task: Any = None  # the bar of the track being separated
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
                self.task = self.bar.add_task(escape(Path(record.input).name), total=None, audio=0.0)
            return
        if event.kind == "progress":
            if self.task is not None:
                audio = (record.duration or 0.0) * event.done / event.total if event.total else 0.0
                self.bar.update(self.task, completed=event.done, total=event.total, audio=audio)
            return
        if event.kind == "failed":
            self.errors.print(f"[red]error:[/red] {escape(event.message)}", highlight=False, soft_wrap=True)
        elif record.status == "skipped":
            if self.plain:
                self.console.print(f"skipped {record.input} (outputs exist; --overwrite to redo)", highlight=False,
                                   soft_wrap=True, markup=False)
        else:
            if self.lines:
                folder = next(iter(record.outputs.values())).parent
                self.console.print(f"ok {record.input} -> {folder} ({record.duration:.1f} s of audio in "
                                   f"{record.seconds:.1f} s)", highlight=False, soft_wrap=True, markup=False)
            if self.verbose and event.scale != 1.0:
                self.console.print(f"  rescaled by {event.scale:.3f} to avoid clipping", highlight=False)
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
            self.bar.advance(self.all)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command("separate")
def separate(
    inputs: List[str] = typer.Argument(..., metavar="INPUTS...",
                                       help="Audio files, folders (searched recursively) or glob patterns."),
    model: Optional[str] = typer.Option(None, "-n", "--model", help="Model name (see `stemsplit models`); "
                                        "default: the embedded model."),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help="Load the model from this checkpoint file.",
                                              dir_okay=False),
    repo: Optional[Path] = typer.Option(None, "--repo", help="Folder of model files to look -n names up in "
                                        "(nothing is downloaded); not with --model-path.", file_okay=False),
    out: Path = typer.Option(Path("separated"), "-o", "--out", help="Output folder."),
    filename: str = typer.Option(DEFAULT_TEMPLATE, "--filename", help="Output path template inside --out, with "
                                 "{model} {track} {stem} {ext}."),
    stems: Optional[str] = typer.Option(None, "--stems", help="Write only these stems, comma separated "
                                        "(e.g. drums,vocals)."),
    two_stems: Optional[str] = typer.Option(None, "--two-stems", metavar="STEM", help="Write STEM and no_STEM "
                                            "(the mixture minus STEM)."),
    fmt: _Format = typer.Option(_Format.wav, "--format", help="Output format."),
    bit_depth: _BitDepth = typer.Option(_BitDepth.b16, "--bit-depth",
                                        help="Bits per sample for wav/flac; 32 = float (wav only)."),
    mp3_bitrate: int = typer.Option(320, "--mp3-bitrate", metavar="KBPS",
                                    help="Constant MP3 bitrate in kbps: 32, 40, 48, 56, 64, 80, 96, 112, 128, "
                                         "160, 192, 224, 256 or 320 (exact at 32/44.1/48 kHz)."),
    clip: _Clip = typer.Option(_Clip.rescale, "--clip", help="Avoid clipping: rescale all stems of a track by one factor, clamp each "
                                  "sample, or none."),
    keep_samplerate: bool = typer.Option(True, "--keep-samplerate/--model-samplerate",
                                         help="Write stems at the input's sample rate, or at the model's."),
    device: str = typer.Option("auto", "-d", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, "
                               "cuda:N or mps."),
    segment: Optional[float] = typer.Option(None, "--segment", metavar="SECONDS",
                                            help="Segment length in seconds (default: the model's). Longer than "
                                                 "the track is fine: memory follows the track's length."),
    overlap: float = typer.Option(0.25, "--overlap", help="Overlap between segments, in [0, 1)."),
    shifts: int = typer.Option(0, "--shifts", min=0, help="Average N randomly shifted passes (slower, "
                               "slightly better; deterministic, see --seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random shifts."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Segments per forward pass."),
    precision: _Precision = typer.Option(_Precision.fp32, "--precision",
                                         help="Network precision: fp32; bf16, about 2x faster on CPUs with "
                                              "AVX512-BF16/AMX and on CUDA; or fp16 (CUDA only). bf16/fp16 stems "
                                              "differ from fp32 by ~40-50 dB SNR."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo tracks whose outputs already exist "
                                   "(default: skip them)."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Print model and settings details."),
) -> None:
    """Separate songs into stems: `stemsplit separate song.mp3` (or just `stemsplit song.mp3`)."""
    if model is not None and model_path is not None:
        raise _fail("use either -n/--model or --model-path, not both", 2)
    if repo is not None and model_path is not None:  # --repo looks names up; a file needs no lookup
        raise _fail("use either --repo (with -n/--model) or --model-path, not both", 2)
    if repo is not None and model is None:  # the embedded default would silently ignore it
        raise _fail("--repo looks up the model named by -n/--model: give -n NAME too", 2)
    if quiet and verbose:
        raise _fail("use either -q/--quiet or -v/--verbose, not both", 2)
    if stems is not None and two_stems is not None:
        raise _fail("use either --stems or --two-stems, not both", 2)
    fmt, bit_depth, clip = fmt.value, bit_depth.value, clip.value  # type: ignore[assignment]
    _check_segments(segment, overlap)
    if mp3_bitrate not in MP3_BITRATES:
        raise _fail(f"--mp3-bitrate {mp3_bitrate} is not an MP3 bitrate "
                    f"(use one of {', '.join(map(str, MP3_BITRATES))})", 2)
    if fmt == "flac" and bit_depth == "32":
        raise _fail("flac cannot store 32-bit float; use --bit-depth 16 or 24, or --format wav", 2)

    from stemsplit.batch import check_template, expand_inputs, model_label, separate_batch
    from stemsplit.errors import ModelError, SettingsError, StemsplitError, TemplateError

    try:
        check_template(filename)
    except TemplateError as exc:
        raise _fail(f"--filename {exc.template!r} {exc.reason}", 2) from None
    wanted = [s.strip() for s in stems.split(",") if s.strip()] if stems is not None else None
    if stems is not None and not wanted:
        raise _fail("--stems needs at least one stem name", 2)

    from rich.console import Console

    from stemsplit.models.resolve import load_model
    from stemsplit.engine.separator import Separator
    from stemsplit.pipeline import OutputOptions, output_stems

    console = Console()
    tracks = expand_inputs(inputs, out)
    label = model_label(model_path if model_path is not None else model)
    try:
        net = _load_with_progress(load_model, str(model_path) if model_path is not None else model, repo,
                                  show=not (as_json or quiet))
    except StemsplitError as exc:
        raise _cannot_start(exc, tracks, label, out, as_json) from None
    try:
        output_stems(list(net.sources), wanted, two_stems)  # unknown stems are a usage error, refused early
    except ModelError as exc:
        raise _fail(exc, 2) from None
    try:
        separator = Separator(net, device=device, segment=segment, overlap=overlap, shifts=shifts, seed=seed,
                              batch_size=batch_size, precision=precision.value)
    except SettingsError as exc:  # (a --segment or --overlap this model cannot run with)
        raise _settings_failure(exc) from None
    except StemsplitError as exc:
        raise _cannot_start(exc, tracks, label, out, as_json) from None
    options = OutputOptions(fmt=fmt, bit_depth=int(bit_depth), mp3_bitrate=int(mp3_bitrate), clip=clip,
                            keep_samplerate=keep_samplerate)
    if verbose and not as_json:
        console.print(f"model {label}: sources {', '.join(net.sources)}, {net.samplerate} Hz, "
                      f"{net.audio_channels} channels; device {separator.device}; segment "
                      f"{segment or float(getattr(net, 'segment', 0)):.2f} s, overlap {overlap}, shifts {shifts}, "
                      f"batch size {batch_size}, precision {precision.value}", highlight=False, markup=False)

    display = _BatchDisplay(console, len(tracks), fancy=console.is_terminal and not as_json and not quiet,
                            plain=not console.is_terminal and not as_json and not quiet,
                            verbose=verbose and not as_json)
    try:
        records = separate_batch(tracks, separator, out, model=label, template=filename, stems=wanted,
                                 two_stems=two_stems, options=options, overwrite=overwrite, on_event=display)
    finally:
        display.close()
    if as_json:
        _print_summary(label, out, records)
    if any(r.status == "failed" for r in records):
        raise typer.Exit(1)


def _print_summary(label: str, out: Path, records: list, error: Optional[str] = None) -> None:
    """The --json document on stdout: counts, one record per track, and `error` for a run that
    could not start, so that a script reading stdout gets a document whatever happened."""
    import json
    import sys

    summary = {
        "model": label, "out": str(out),
        "ok": sum(r.status == "ok" for r in records),
        "skipped": sum(r.status == "skipped" for r in records),
        "failed": sum(r.status == "failed" for r in records),
        "tracks": [r.as_dict() for r in records],
    }
    if error is not None:
        summary["error"] = error
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


def _cannot_start(error: Exception, tracks: list, label: str, out: Path, as_json: bool) -> "typer.Exit":
    """Report a run that failed before any track (the model or the device): every track failed."""
    if as_json:
        from stemsplit.batch import TrackRecord

        _print_summary(label, out, [TrackRecord(t.input, error=t.error or str(error)) for t in tracks], str(error))
    return _fail(error, 1)


# ---- models (issue 3) ---------------------------------------------------------------------------

_MODELS_ACTIONS = ("list", "info", "download", "path")


def _size_text(size: Optional[int]) -> str:
    return "?" if size is None else f"{size / 1e6:.0f} MB"


def _models_list(as_json: bool) -> None:
    import dataclasses
    import json

    from rich.console import Console
    from rich.table import Table

    from stemsplit.models.registry import list_models

    infos = list_models()
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(info) for info in infos], indent=2))
        return
    table = Table(title="stemsplit models")
    for column in ("name", "sources", "size", "cached", "SDR (dB)", "description"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(
            f"{info.name} [bold](default)[/bold]" if info.default else info.name,
            ", ".join(info.sources),
            _size_text(info.size_bytes),
            "[green]yes[/green]" if info.cached else "no",
            "-" if info.sdr is None else f"{info.sdr:.1f}",
            info.description,
        )
    Console().print(table)


def _models_info(name: str, as_json: bool) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    from stemsplit.models import registry

    if name == DEFAULT_MODEL:
        path = registry.default_model_path()
        info = {"name": name, "default": True, "path": None if path is None else str(path), "cached": path is not None}
        files: list = []
    else:
        entry = registry.get_entry(name)
        files = [
            {"file": file.name, "url": file.url(), "sha256": file.sha256, "size_bytes": file.size,
             "cached_path": str(registry.cached_path(file)), "cached": registry.cached_path(file).is_file()}
            for file in entry.files
        ]
        info = {
            "name": entry.name, "default": False, "description": entry.description, "sources": list(entry.sources),
            "size_bytes": entry.size_bytes, "sdr": entry.sdr, "segment": entry.segment,
            "weights": None if entry.weights is None else [list(row) for row in entry.weights],
            "cached": registry.is_cached(entry), "files": files,
        }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    console = Console()
    for key, value in info.items():
        if key != "files":
            console.print(f"[bold]{key}[/bold]: {value}", highlight=False, soft_wrap=True)
    if files:
        table = Table(title="files")
        for column in ("file", "size", "sha256", "cached", "url"):
            table.add_column(column, overflow="fold")
        for file in files:
            table.add_row(file["file"], _size_text(file["size_bytes"]), file["sha256"],
                          "[green]yes[/green]" if file["cached"] else "no", file["url"])
        console.print(table)


def _models_download(name: str, as_json: bool) -> None:
    import json

    from stemsplit.models.download import download_model

    with _download_bars(True, transient=as_json) as report:
        paths = download_model(name, progress=report)
    if as_json:
        typer.echo(json.dumps([str(path) for path in paths], indent=2))
    else:
        for path in paths:
            typer.echo(str(path))


def _models_path(name: Optional[str], as_json: bool) -> None:
    import json

    from stemsplit.models import registry

    if name is None:
        paths = [str(registry.cache_dir())]
    elif name == DEFAULT_MODEL:
        paths = [str(registry.require_default_path())]
    else:
        paths = [str(registry.cached_path(file)) for file in registry.get_entry(name).files]
    typer.echo(json.dumps(paths if name else paths[0]) if as_json else "\n".join(paths))


@app.command("models")
def models(
    action: str = typer.Argument(
        "list", metavar="[list|info|download|path]",
        help="list: all models; info NAME: details and files; download NAME: fetch into the cache; "
             "path [NAME]: the cache folder, or where NAME's files live.",
    ),
    name: Optional[str] = typer.Argument(None, help="Model name, for info, download and path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """List, inspect and download the pretrained models."""
    from stemsplit.errors import StemsplitError

    if action not in _MODELS_ACTIONS:
        raise _fail(f"unknown action {action!r}; use one of {', '.join(_MODELS_ACTIONS)}", 2)
    if action in ("info", "download") and name is None:
        raise _fail(f"`stemsplit models {action}` needs a model name (see `stemsplit models list`)", 2)
    if action == "list" and name is not None:
        raise _fail("`stemsplit models list` takes no model name", 2)
    try:
        if action == "list":
            _models_list(as_json)
        elif action == "info":
            _models_info(name, as_json)  # type: ignore[arg-type]
        elif action == "download":
            _models_download(name, as_json)  # type: ignore[arg-type]
        else:
            _models_path(name, as_json)
    except StemsplitError as exc:
        raise _fail(exc, 1) from None

# ---- synth (issue 4, hidden) ----------------------------------------------------------------------


@app.command(hidden=True)
def synth(
    out_dir: str = typer.Argument(..., help="Folder to write song_00000/{mixture,drums,bass,other,vocals}.wav into."),
    songs: int = typer.Option(10, "--songs", min=1, help="Number of songs."),
    seconds: float = typer.Option(30.0, "--seconds", min=0.5, help="Length of each song in seconds."),
    seed: int = typer.Option(0, "--seed", help="Seed of the set; the same seed gives the same audio."),
    samplerate: int = typer.Option(44100, "--samplerate", min=8000, help="Sample rate in Hz."),
    channels: int = typer.Option(2, "--channels", min=1, max=2, help="1 (mono) or 2 (stereo)."),
    bit_depth: str = typer.Option("float", "--bit-depth", help="float (exact mixture = sum), 16 or 24."),
    style: Optional[List[str]] = typer.Option(None, "--style", help="Only these style families (repeatable)."),
    vocal_mode: Optional[List[str]] = typer.Option(None, "--vocal-mode", help="Only sing / rap / spoken (repeatable)."),
    exclude: Optional[List[str]] = typer.Option(
        None, "--exclude", help="Hold out a kit, bass voice, instrument, voice type or vocal model (repeatable)."),
    soundfont: Optional[str] = typer.Option(None, "--soundfont",
                                            help="General MIDI .sf2/.sf3 (or 'auto') for sample-based stems."),
    soundfont_share: float = typer.Option(0.5, "--soundfont-share", min=0.0, max=1.0,
                                          help="Chance that each stem uses the soundfont."),
    dry: bool = typer.Option(False, "--dry", help="No production effects (EQ, compression, reverb, ...)."),
    excerpt: bool = typer.Option(False, "--excerpt", help="Start each song inside a random section, not at bar 1."),
) -> None:
    """Write a MUSDB-style folder of synthetic songs (for training and testing)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from stemsplit.errors import StemsplitError
    from stemsplit.synth import write_dataset

    err = Console(stderr=True)
    options: dict = {"production": not dry, "excerpt": excerpt}
    if style:
        options["styles"] = style
    if vocal_mode:
        options["vocal_modes"] = vocal_mode
    if exclude:
        options["exclude"] = exclude
    if soundfont:
        options.update(soundfont=soundfont, soundfont_share=soundfont_share)
    try:  # errors are reported after the bar has stopped, so that the error is the last line
        with Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=err) as bar:
            task = bar.add_task("songs", total=songs)
            folders = write_dataset(out_dir, songs, seconds, seed, samplerate, channels=channels,
                                    bit_depth=bit_depth, progress=lambda done, total: bar.update(task, completed=done),
                                    **options)
    except ValueError as exc:  # options the generator cannot honour, refused before any file is written
        raise _fail(exc, 2) from None
    except StemsplitError as exc:
        raise _fail(exc, 1) from None
    Console().print(f"wrote {len(folders)} songs of {seconds:g} s to {out_dir}", highlight=False)


# ---- train / evaluate (issue 5, hidden) --------------------------------------------------------


@app.command(hidden=True)
def train(
    config: Optional[str] = typer.Option(None, "--config", help="YAML file with any TrainConfig keys; flags override it."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run folder: checkpoints, state.pt, log.jsonl."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Demucs, HDemucs or HTDemucs."),
    kw: List[str] = typer.Option([], "--kw", help="Model kwarg KEY=VALUE (YAML value), repeatable: --kw channels=32."),
    init: Optional[str] = typer.Option(None, "--init", help="Fine-tune from this model (name or file)."),
    freeze_encoder: Optional[bool] = typer.Option(None, "--freeze-encoder/--no-freeze-encoder"),
    musdb: Optional[str] = typer.Option(None, "--musdb", help="MUSDB-style root (train/, valid/) or a folder of tracks."),
    valid: Optional[str] = typer.Option(None, "--valid", help="Validation folder of tracks."),
    musdb_weight: Optional[float] = typer.Option(None, "--musdb-weight"),
    synth_weight: Optional[float] = typer.Option(None, "--synth-weight", help="Weight of on-the-fly synthetic songs."),
    segment: Optional[float] = typer.Option(None, "--segment", help="Excerpt seconds (default: the model's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes (0: main process)."),
    valid_excerpts: Optional[int] = typer.Option(None, "--valid-excerpts"),
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
            "out_dir": out, "architecture": arch, "init": init, "freeze_encoder": freeze_encoder, "musdb": musdb,
            "valid": valid, "musdb_weight": musdb_weight, "synth_weight": synth_weight, "segment": segment,
            "batch_size": batch_size, "num_workers": workers, "valid_excerpts": valid_excerpts, "steps": steps,
            "lr": lr, "weight_decay": weight_decay, "schedule": schedule, "warmup_steps": warmup,
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

    try:
        best = run_training(cfg, progress=_TrainProgress())
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    except StemsplitError as exc:
        raise _fail(exc, 1) from None
    except OSError as exc:  # the run folder cannot be written (config, log, states): say where, not a traceback
        raise _fail(f"{exc.filename or cfg.out_dir}: {exc.strerror or exc}", 1) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        from rich.console import Console

        Console().print(f"best checkpoint: {best}", highlight=False)


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


@app.command(hidden=True)
def evaluate(
    folder: str = typer.Argument(..., help="Folder of track folders, each with mixture + one file per source."),
    model: Optional[str] = typer.Option(None, "--model", "-n", "-m", help="Model name (default: the embedded model)."),
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
        chosen = load_model(model_path if model_path is not None else model)
        result = run_evaluation(chosen, folder, tracks=names, bss=bss, progress=show, device=device, segment=segment,
                                overlap=overlap, shifts=shifts, batch_size=batch_size)
    except SettingsError as exc:
        raise _settings_failure(exc) from None
    except StemsplitError as exc:
        raise _fail(exc, 1) from None
    finally:
        status.stop()
    if not result.tracks:
        hint = f"; for a MUSDB-style root give its test folder, {Path(folder) / 'test'}" if "test" in result.failed else ""
        raise _fail(f"{folder}: no track could be scored ({len(result.failed)} failed){hint}", 1)
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
