"""`stemsplit synth` (hidden): write a MUSDB-style folder of synthetic songs.

It must not compose or render audio itself: `stemsplit.synth` does.
"""
from __future__ import annotations

from typing import List, Optional

import typer

from stemsplit.cli.app import app
from stemsplit.cli.common import _fail

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
                                            help="General MIDI .sf2/.sf3, a freepats folder, or 'auto' for "
                                            "sample-based stems."),
    soundfont_share: float = typer.Option(0.5, "--soundfont-share", min=0.0, max=1.0,
                                          help="Chance that each stem uses the soundfont."),
    samples: Optional[str] = typer.Option(
        None, "--samples", help="Recorded drum kits, voices and soundfonts: 'auto' (installed by "
        "scripts/install_samples.sh) or a folder the packages were unpacked into."),
    split: str = typer.Option("train", "--split", help="Material split the samples (and --soundfont auto) come from: "
                              "train or valid (they share no kit, voice or soundfont)."),
    sample_share: float = typer.Option(0.7, "--sample-share", min=0.0, max=1.0,
                                       help="With --samples: chance that a song's drums, vocals, bass and other "
                                       "each use recorded material."),
    master: Optional[bool] = typer.Option(
        None, "--master/--no-master", help="Mix bus of a record (genre levels, shared room, bus compression, "
        "limiter, applied alike to all stems). Default: on with --samples, off without."),
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
    if master is not None:
        options["master"] = master
    if samples:
        options.update(samples=samples, split=split, sample_share=sample_share)
    elif split != "train":
        raise _fail(ValueError("--split needs --samples"), 2)
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
    if samples:
        from stemsplit.synth.samples.library import find_library

        Console().print(f"samples: {find_library(samples, split).summary()}", highlight=False)
