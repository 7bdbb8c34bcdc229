"""MUSDB-style track folders: finding them, checking them, reading excerpts.

Owns the layout `root/<track>/{mixture,drums,bass,other,vocals}.wav|.flac` (and `train/`/`valid/`
splits), the checks that every stem is there and alike (rate, length, channels) with a DataError
naming the file, and seeking reads of excerpts. Used by training and by evaluation alike.
Must not: build or load models, separate, augment or print; it imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from stemsplit.errors import DataError

STEM_SUFFIXES = (".wav", ".flac")


@dataclass(frozen=True)
class Track:
    """One checked track folder: a file per source, all with the same rate, length and channels."""

    name: str
    files: dict[str, Path]
    frames: int
    samplerate: int
    channels: int


def _stem_file(folder: Path, stem: str) -> Path:
    for suffix in STEM_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / stem}.wav: missing stem '{stem}' in track {folder.name!r} (no .wav or .flac)")


def check_track(folder: Path, stems: Sequence[str], samplerate: Optional[int] = None) -> Track:
    """Check that `folder` holds a readable file per stem, all alike; optionally at `samplerate`."""
    import soundfile as sf

    files = {stem: _stem_file(folder, stem) for stem in stems}
    first: Optional[tuple[Path, object]] = None
    for path in files.values():
        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError) as exc:  # soundfile raises LibsndfileError (a RuntimeError)
            raise DataError(f"{path}: unreadable audio file ({exc})") from exc
        if info.frames <= 0:
            raise DataError(f"{path}: empty audio file")
        if samplerate is not None and info.samplerate != samplerate:
            raise DataError(f"{path}: sample rate {info.samplerate} Hz, but the model needs {samplerate} Hz")
        if first is None:
            first = (path, info)
            continue
        ref_path, ref = first
        for what in ("samplerate", "frames", "channels"):
            if getattr(info, what) != getattr(ref, what):
                raise DataError(
                    f"{path}: {what} {getattr(info, what)} differs from {ref_path.name} ({getattr(ref, what)})"
                )
    assert first is not None
    info = first[1]
    return Track(folder.name, files, info.frames, info.samplerate, info.channels)  # type: ignore[attr-defined]


def scan_folder(root: Path, stems: Sequence[str], samplerate: Optional[int] = None,
                names: Optional[Sequence[str]] = None) -> list[Track]:
    """Check every track folder under `root` (or only `names`); raise DataError on the first problem."""
    return [check_track(folder, stems, samplerate) for folder in track_folders(root, names)]


def track_folders(root: Path, names: Optional[Sequence[str]] = None) -> list[Path]:
    """The track folders under `root` (or those named), unchecked; DataError if there are none or a
    named one is missing. Apart from `scan_folder` so that evaluation can check each on its own."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of tracks")
    # hidden folders (.ipynb_checkpoints, .git) and macOS zip debris are not tracks
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    if names is not None:
        by_name = {p.name: p for p in folders}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DataError(f"{root / missing[0]}: no such track folder")
        folders = [by_name[n] for n in dict.fromkeys(names)]  # a track named twice is still one track
    if not folders:
        raise DataError(f"{root}: no track folders found")
    return folders


def split_roots(root: Path) -> tuple[Path, Optional[Path]]:
    """A MUSDB-style root has train/ (and maybe valid/); a plain folder of tracks is all training."""
    root = Path(root)
    if (root / "train").is_dir():
        valid = root / "valid"
        return root / "train", valid if valid.is_dir() else None
    return root, None


def read_excerpt(path: Path, start: int, frames: int, channels: int) -> np.ndarray:
    """Read `frames` frames from `start` (zero-padded past the end) as (channels, frames) float32."""
    import soundfile as sf

    try:
        data = sf.read(str(path), frames=frames, start=start, dtype="float32", always_2d=True, fill_value=0.0)[0]
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{path}: cannot read frames {start}..{start + frames} ({exc})") from exc
    data = data.T
    if data.shape[0] != channels:  # mono file for a stereo model: duplicate (FolderSource allows only 1 or C)
        data = np.repeat(data[:1], channels, axis=0)
    return np.ascontiguousarray(data)
