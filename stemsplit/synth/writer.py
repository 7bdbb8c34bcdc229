"""write_dataset: a MUSDB-style folder of synthetic songs on disk.

Owns the folder layout (`out_dir/<song>/{mixture,drums,bass,other,vocals}.wav`), the per-song
seeds and atomic file writes. It must not render audio itself (song.py does) and must not
import torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from stemsplit.atomic import atomic_path
from stemsplit.errors import AudioError
from stemsplit.synth.song import SOURCES, check_options, render_song, song_seed

SUBTYPES = {"float": "FLOAT", "16": "PCM_16", "24": "PCM_24"}


def _write_wav(path: Path, audio: np.ndarray, samplerate: int, subtype: str) -> None:
    """Write (channels, time) audio to `path` through a temporary file and a rename."""
    import soundfile

    try:
        with atomic_path(path) as tmp:
            soundfile.write(str(tmp), audio.T, samplerate, subtype=subtype, format="WAV")
    except (OSError, RuntimeError, soundfile.SoundFileError) as exc:
        raise AudioError(f"{path}: cannot write ({exc})") from exc


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
    if bit_depth not in SUBTYPES:
        raise ValueError(f"bit_depth must be one of {', '.join(SUBTYPES)}, got {bit_depth!r}")
    check_options(seconds, samplerate, channels, options.get("styles"), options.get("vocal_modes"),
                  options.get("exclude", ()))
    root = Path(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AudioError(f"{root}: cannot create the output folder ({exc})") from exc
    folders = []
    for i in range(songs):
        stems = render_song(song_seed(seed, i), seconds, samplerate, channels, **options)
        folder = root / f"song_{i:05d}"
        folder.mkdir(exist_ok=True)
        for name in ("mixture", *SOURCES):
            _write_wav(folder / f"{name}.wav", stems[name], samplerate, SUBTYPES[bit_depth])
        folders.append(folder)
        if progress is not None:
            progress(i + 1, songs)
    return folders
