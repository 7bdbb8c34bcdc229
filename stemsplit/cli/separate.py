"""`stemsplit separate` (the default command): parse the flags, load the model, run the batch,
render its events and the `--json` summary.

It must not separate, name files or decide what a track's failure is: `batch` and `pipeline` do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from stemsplit.cli.app import app
from stemsplit.cli.common import (PRECISION_HELP, Precision, _check_segments, _fail, _load_with_progress, _note_fallback,
                                  _settings_failure, choices)
from stemsplit.cli.display import BatchDisplay, cannot_start, print_summary
from stemsplit.constants import (BIT_DEPTHS, CLIP_MODES, DEFAULT_MODEL, DEFAULT_TEMPLATE, MP3_BITRATES, OUTPUT_FORMATS,
                                 PREFERRED_MODEL)


_Format = choices("Format", OUTPUT_FORMATS)
_BitDepth = choices("BitDepth", BIT_DEPTHS)
_Clip = choices("Clip", CLIP_MODES)


@app.command("separate")
def separate(
    inputs: List[str] = typer.Argument(..., metavar="INPUTS...",
                                       help="Audio files, folders (searched recursively) or glob patterns; - reads "
                                            "one track from stdin."),
    model: Optional[str] = typer.Option(None, "-n", "--model", help="Model name (see `stemsplit models`); "
                                        f"default: {PREFERRED_MODEL} (downloaded once), or the embedded "
                                        f"{DEFAULT_MODEL} when it cannot be downloaded."),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help="Load the model from this checkpoint file.",
                                              dir_okay=False),
    repo: Optional[Path] = typer.Option(None, "--repo", help="Folder of model files to look -n names up in "
                                        "(nothing is downloaded); not with --model-path.", file_okay=False),
    offline: bool = typer.Option(False, "--offline", help="Never touch the network (also STEMSPLIT_OFFLINE=1): "
                                 "models must be cached or local; the default is then the embedded model unless "
                                 f"{PREFERRED_MODEL} is cached."),
    out: Path = typer.Option(Path("separated"), "-o", "--out", help="Output folder; - streams ONE stem (--stems X, "
                             "or --two-stems X --stems X|no_X) of one track to stdout as wav or flac."),
    track_name: Optional[str] = typer.Option(None, "--name", help="Track name ({track}) of the input read from stdin "
                                             "(default: stdin)."),
    filename: str = typer.Option(DEFAULT_TEMPLATE, "--filename", help="Output path template inside --out, with "
                                 "{model} {track} {stem} {ext}."),
    stems: Optional[str] = typer.Option(None, "--stems", help="Write only these stems, comma separated "
                                        "(e.g. drums,vocals)."),
    two_stems: Optional[str] = typer.Option(None, "--two-stems", metavar="STEM", help="Write STEM and no_STEM "
                                            "(the mixture minus STEM)."),
    fmt: _Format = typer.Option(_Format("wav"), "--format", help="Output format."),
    bit_depth: _BitDepth = typer.Option(_BitDepth("16"), "--bit-depth",
                                        help="Bits per sample for wav/flac; 32 = float (wav only)."),
    mp3_bitrate: int = typer.Option(320, "--mp3-bitrate", metavar="KBPS",
                                    help="Constant MP3 bitrate in kbps: 32, 40, 48, 56, 64, 80, 96, 112, 128, "
                                         "160, 192, 224, 256 or 320 (exact at 32/44.1/48 kHz)."),
    clip: _Clip = typer.Option(_Clip("rescale"), "--clip", help="Avoid clipping: rescale all stems of a track by one factor, clamp each "
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
    precision: Precision = typer.Option(Precision("auto"), "--precision", help=PRECISION_HELP),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N",
                                        help="Keep shard K of N (1-based) of the inputs, by a stable hash of each "
                                             "path; auto/N takes K from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX."),
    use_ray: bool = typer.Option(False, "--ray", help="Run the batch on a Ray cluster (RAY_ADDRESS, else a local "
                                 "Ray); needs `pip install \"stemsplit[ray]\"` and --out on a filesystem every node "
                                 "shares."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1, help="Actors (default: one per GPU, "
                                              "else cluster CPUs / CPUs per actor)."),
    ray_cpus: Optional[float] = typer.Option(None, "--ray-cpus-per-worker", min=0.01,
                                             help="CPUs (torch threads) per actor (default: up to 4)."),
    ray_gpus: Optional[float] = typer.Option(None, "--ray-gpus-per-worker", min=0.0,
                                             help="GPUs per actor (default: 1 on GPU clusters, else 0)."),
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
    to_stdout = str(out) == "-"
    if stems is not None and two_stems is not None and not to_stdout:
        raise _fail("use either --stems or --two-stems, not both", 2)
    if to_stdout:
        _check_stdout_use(inputs, stems, two_stems, fmt.value, as_json, use_ray)
    if inputs.count("-") > 1:
        raise _fail("- (stdin) can be read once", 2)
    if track_name is not None and "-" not in inputs:
        raise _fail("--name names the track read from stdin: give - as an input", 2)
    fmt, bit_depth, clip = fmt.value, bit_depth.value, clip.value  # type: ignore[assignment]
    _check_segments(segment, overlap)
    if mp3_bitrate not in MP3_BITRATES:
        raise _fail(f"--mp3-bitrate {mp3_bitrate} is not an MP3 bitrate "
                    f"(use one of {', '.join(map(str, MP3_BITRATES))})", 2)
    if fmt == "flac" and bit_depth == "32":
        raise _fail("flac cannot store 32-bit float; use --bit-depth 16 or 24, or --format wav", 2)

    from stemsplit.batch import check_template, expand_inputs, model_label, separate_batch
    from stemsplit.shard import parse_shard, select_shard
    from stemsplit.errors import ModelError, SettingsError, StemsplitError, TemplateError

    try:
        check_template(filename)
        shard_of = parse_shard(shard) if shard is not None else None
    except TemplateError as exc:
        raise _fail(f"--filename {exc.template!r} {exc.reason}", 2) from None
    except SettingsError as exc:
        raise _settings_failure(exc) from None
    wanted = [s.strip() for s in stems.split(",") if s.strip()] if stems is not None and not to_stdout else None
    if stems is not None and not to_stdout and not wanted:
        raise _fail("--stems needs at least one stem name", 2)

    from rich.console import Console

    from stemsplit.models.resolve import load_model
    from stemsplit.engine.separator import Separator, resolve_device
    from stemsplit.pipeline import OutputOptions, output_stems

    try:  # a device this machine lacks is the run's failure (exit 1); a misspelt one a usage error
        resolve_device(device)
    except SettingsError as exc:
        raise _settings_failure(exc) from None
    except StemsplitError:
        pass
    if model is not None and repo is None:
        _check_model_name(model)
    console = Console(stderr=to_stdout)  # (with -o -, stdout carries the audio and nothing else)
    tracks = expand_inputs(inputs, out, stdin=_stdin_track(track_name) if "-" in inputs else None)
    if shard_of is not None:
        tracks = select_shard(tracks, *shard_of)
    default = model is None and model_path is None
    label = PREFERRED_MODEL if default else model_label(model_path if model_path is not None else model)
    chosen: list = []  # the default's DefaultChoice, once resolved
    options = OutputOptions(fmt=fmt, bit_depth=int(bit_depth), mp3_bitrate=int(mp3_bitrate), clip=clip,
                            keep_samplerate=keep_samplerate)

    def display() -> BatchDisplay:  # (made when the batch starts: its live bars hold the terminal)
        return BatchDisplay(console, len(tracks), fancy=console.is_terminal and not as_json and not quiet,
                             plain=not console.is_terminal and not as_json and not quiet,
                             verbose=verbose and not as_json)

    if use_ray:
        settings = dict(model=str(model_path) if model_path is not None else model, repo=repo, device=device,
                        segment=segment, overlap=overlap, shifts=shifts, seed=seed, batch_size=batch_size,
                        precision=precision.value, template=filename, stems=wanted, two_stems=two_stems,
                        options=options, overwrite=overwrite, workers=ray_workers, cpus_per_worker=ray_cpus,
                        gpus_per_worker=ray_gpus)
        if offline:  # (the driver resolves the default model; the environment says offline to it)
            import os

            os.environ["STEMSPLIT_OFFLINE"] = "1"
        return _separate_on_ray(tracks, out, label, settings, display(), as_json)
    try:
        net = _load_with_progress(load_model, str(model_path) if model_path is not None else model, repo,
                                  show=not (as_json or quiet), offline=True if offline else None,
                                  on_default=chosen.append)
    except StemsplitError as exc:
        raise cannot_start(exc, tracks, label, out, as_json) from None
    if chosen:
        label = chosen[0].name
        if not quiet:
            _note_fallback(chosen[0])
    try:
        output_stems(list(net.sources), [stems] if to_stdout and two_stems is None else wanted, two_stems)
    except ModelError as exc:
        raise _fail(exc, 2) from None
    try:
        separator = Separator(net, device=device, segment=segment, overlap=overlap, shifts=shifts, seed=seed,
                              batch_size=batch_size, precision=precision.value)

    except SettingsError as exc:  # (a --segment or --overlap this model cannot run with)
        raise _settings_failure(exc) from None
    except StemsplitError as exc:
        raise cannot_start(exc, tracks, label, out, as_json) from None
    if verbose and not as_json:
        if chosen:
            console.print(f"default model {label}: {chosen[0].reason}", highlight=False, markup=False)
        console.print(f"model {label}: sources {', '.join(net.sources)}, {net.samplerate} Hz, "
                      f"{net.audio_channels} channels; device {separator.device}; segment "
                      f"{segment or float(getattr(net, 'segment', 0)):.2f} s, overlap {overlap}, shifts {shifts}, "
                      f"batch size {batch_size}, precision {separator.precision}"
                      f"{' (auto)' if precision.value == 'auto' else ''}", highlight=False, markup=False)
    if to_stdout:
        return _separate_to_stdout(tracks[0], separator, stems or two_stems, options, two_stems)  # type: ignore[arg-type]
    shown = display()
    try:
        records = separate_batch(tracks, separator, out, model=label, template=filename, stems=wanted,
                                 two_stems=two_stems, options=options, overwrite=overwrite, on_event=shown)
    finally:
        shown.close()
    if as_json:
        print_summary(label, out, records, settings={"device": str(separator.device),
                                                       "precision": separator.precision})
    if any(r.status == "failed" for r in records):
        raise typer.Exit(1)


def _check_stdout_use(inputs: List[str], stems: Optional[str], two_stems: Optional[str], fmt: str, as_json: bool,
                      use_ray: bool) -> None:
    """Usage errors of `-o -`: one track, one stem, a streamable format, stdout for audio only."""
    if len(inputs) != 1:
        raise _fail("-o - streams the stem of ONE track: give one input", 2)
    if as_json or use_ray:
        raise _fail(f"-o - writes audio to stdout, so {'--json' if as_json else '--ray'} cannot be used with it", 2)
    if fmt not in ("wav", "flac"):
        raise _fail(f"-o - streams wav or flac, not {fmt}", 2)
    if stems is None or "," in stems or (two_stems is not None and stems not in (two_stems, f"no_{two_stems}")):
        raise _fail("-o - streams one stem: give --stems X, or --two-stems X --stems X (or no_X)", 2)


def _stdin_track(name: Optional[str]) -> Any:
    """The input `-`: standard input spooled into a temporary file (removed at exit)."""
    import atexit
    import contextlib
    import os
    import sys

    from stemsplit.audio.pipe import spool_stdin
    from stemsplit.batch import Track
    from stemsplit.errors import AudioError

    try:
        path = spool_stdin(sys.stdin.buffer)
    except AudioError as exc:
        raise _fail(exc, 1) from None

    def remove() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    atexit.register(remove)
    return Track("-", path, name=name or "stdin")


def _separate_to_stdout(track: Any, separator: Any, stem: str, options: Any, two_stems: Optional[str]) -> None:
    """One stem of one track, streamed to stdout; a failure after bytes went out still exits 1."""
    import sys

    from stemsplit.errors import SettingsError, StemsplitError
    from stemsplit.pipeline import separate_to_stream

    if track.path is None:
        raise _fail(track.error, 1)
    try:
        separate_to_stream(track.path, separator, sys.stdout.buffer, stem, options, two_stems)
    except SettingsError as exc:
        raise _settings_failure(exc) from None
    except StemsplitError as exc:
        raise _fail(f"{track.input}: {exc}" if track.input not in str(exc) and str(track.path) not in str(exc)
                    else exc, 1) from None
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say, but not a success
        raise SystemExit(1) from None


def _separate_on_ray(tracks: list, out: Path, label: str, settings: dict, display: Any, as_json: bool) -> None:
    """The batch on Ray's actors (`batch_ray`): the same events, records, summary and exit codes."""
    from stemsplit.errors import SettingsError, StemsplitError, TemplateError

    try:
        from stemsplit.batch_ray import separate_batch_ray

        records = separate_batch_ray(tracks, out, on_event=display, **settings)
    except ImportError as exc:
        raise _fail(f"--ray needs Ray: pip install \"stemsplit[ray]\" ({exc})", 2) from None
    except SettingsError as exc:
        raise _settings_failure(exc) from None
    except TemplateError as exc:
        raise _fail(f"--filename {exc.template!r} {exc.reason}", 2) from None
    except StemsplitError as exc:  # (the model could not load on any actor, a device it lacks)
        raise cannot_start(exc, tracks, label, out, as_json) from None
    finally:
        display.close()
    if as_json:
        print_summary(label, out, records, settings={"device": settings["device"], "precision": settings["precision"],
                                                      "runner": "ray"})
    if any(r.status == "failed" for r in records):
        raise typer.Exit(1)


def _check_model_name(name: str) -> None:
    """A name that is neither a catalog model nor a file is a usage error (exit 2), refused before
    any input is read; loading words every other problem with a model."""
    import os

    from stemsplit.models.registry import get_entry
    from stemsplit.errors import ModelError

    if name == DEFAULT_MODEL or os.path.exists(name) or "/" in name or os.sep in name or "." in name:
        return
    try:
        get_entry(name)
    except ModelError as exc:
        raise _fail(f"-n/--model: {exc}", 2) from None
