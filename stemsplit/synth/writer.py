"""write_dataset: a MUSDB-style folder of synthetic songs on disk.

Owns the folder layout (`out_dir/<song>/{mixture,drums,bass,other,vocals}.wav`), the per-song
seeds and writing whole songs as groups through the stem writer (`stemsplit.audio.encode`). It must
not render audio itself (song.py does) and must not import torch.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np

from stemsplit.errors import AudioError
from stemsplit.synth.song import SOURCES, check_options, render_song, song_seed, soundfont_split

BIT_DEPTHS = {"float": 32, "16": 16, "24": 24}  # --bit-depth -> the stem writer's (32 is float)


def _write_song(folder: Path, stems: dict[str, np.ndarray], samplerate: int, bit_depth: int) -> None:
    """Write the five files of one song as a group, with the stem writer: all of them take their
    names, or none does.

    Written one by one, a song interrupted (Ctrl-C, a full disk) part way would keep some files
    of an earlier song of that name next to new ones, a complete-looking folder whose mixture is
    not the sum of its stems, or a folder missing stems that a training run then stops on. A song
    folder this call created is removed again when it fails.
    """
    from stemsplit.audio.encode import AudioWriter, commit_together

    created = not folder.exists()
    writers: list[AudioWriter] = []
    try:
        for name in ("mixture", *SOURCES):
            audio = stems[name]
            writers.append(AudioWriter(folder / f"{name}.wav", samplerate, audio.shape[0], bit_depth=bit_depth,
                                       fmt="wav", frames=audio.shape[-1]))
            writers[-1].write(audio)
        commit_together(writers)
    except BaseException:
        for writer in writers:
            writer.abort()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def write_dataset(out_dir: str | Path, songs: int, seconds: float, seed: int, samplerate: int = 44100,
                  *, channels: int = 2, bit_depth: str = "float",
                  progress: Callable[[int, int], None] | None = None, **options) -> list[Path]:
    """Render `songs` songs of `seconds` seconds into `out_dir/song_00000/...`.

    Each song folder holds mixture.wav, drums.wav, bass.wav, other.wav and vocals.wav. With
    `bit_depth="float"` (default) files are 32-bit float WAV and mixture.wav is exactly the sum
    of the four stems; "16" or "24" write PCM, where rounding breaks exactness by one LSB.
    Song i uses seed `song_seed(seed, i)`, so a folder can be regenerated or extended. Extra
    `options` go to `render_song` (styles, vocal_modes, soundfont, production, ...).
    Returns the song folders. `progress(done, total)` is called after each song.
    """
    if songs < 0:
        raise ValueError(f"songs must be >= 0, got {songs}")
    if seed < 0:  # numpy's own message ("expected non-negative integer") names no option
        raise ValueError(f"seed must be >= 0, got {seed}")
    if bit_depth not in BIT_DEPTHS:
        raise ValueError(f"bit_depth must be one of {', '.join(BIT_DEPTHS)}, got {bit_depth!r}")
    check_options(seconds, samplerate, channels, options.get("styles"), options.get("vocal_modes"),
                  options.get("exclude", ()), options.get("split", "train"), options.get("sample_share", 0.7))
    if options.get("samples") is not None:  # a missing folder fails now, not after some songs
        from stemsplit.synth.samples.library import find_library

        find_library(options["samples"], options.get("split", "train"))
    if options.get("soundfont") is not None:
        from stemsplit.synth import soundfont

        soundfont.check(options["soundfont"], soundfont_split(options.get("samples"), options.get("split", "train")))
    root = Path(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AudioError(f"{root}: cannot create the output folder ({exc})") from exc
    folders = []
    for i in range(songs):
        stems = render_song(song_seed(seed, i), seconds, samplerate, channels, **options)
        folder = root / f"song_{i:05d}"
        _write_song(folder, stems, samplerate, BIT_DEPTHS[bit_depth])
        folders.append(folder)
        if progress is not None:
            progress(i + 1, songs)
    return folders
