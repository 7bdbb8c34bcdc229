"""Training data: MUSDB-style folders and the synthetic generator, served as random stem excerpts.

Owns: finding and checking tracks before training starts (missing stem, unreadable file, mismatched
rate/length/channels -> DataError naming the file), reading excerpts by seeking (a whole file is
never decoded for one excerpt), drawing from several data sources with weights, and making every
excerpt a pure function of (seed, index) so DataLoader workers and resumed runs see the same data.
Must not: augment (augment.py), mix stems into a mixture (the trainer sums stems after
augmentation), build models or print.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence

import numpy as np
import torch

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


class ExcerptSource(Protocol):
    """Something that yields (sources, channels, frames) stem excerpts from a random generator."""

    def excerpt(self, rng: np.random.Generator, frames: int) -> np.ndarray: ...


class FolderSource:
    """Random excerpts from checked MUSDB-style tracks; longer tracks are drawn more often."""

    def __init__(self, tracks: Sequence[Track], stems: Sequence[str], channels: int):
        for track in tracks:
            if track.channels not in (1, channels):
                path = next(iter(track.files.values()))
                raise DataError(f"{path}: {track.channels} channels, but the model needs {channels}")
        self.tracks = list(tracks)
        self.stems = list(stems)
        self.channels = channels
        lengths = np.array([t.frames for t in self.tracks], dtype=np.float64)
        self._weights = lengths / lengths.sum()

    def excerpt(self, rng: np.random.Generator, frames: int) -> np.ndarray:
        track = self.tracks[int(rng.choice(len(self.tracks), p=self._weights))]
        start = int(rng.integers(0, max(1, track.frames - frames + 1)))
        return self.fixed_excerpt(track, start, frames)

    def fixed_excerpt(self, track: Track, start: int, frames: int) -> np.ndarray:
        return np.stack([read_excerpt(track.files[s], start, frames, self.channels) for s in self.stems])


class SynthSource:
    """Excerpts rendered on the fly by the synthetic song generator, one new song per excerpt.

    Training draws song indices below VALID_FIRST_SONG; validation uses the songs from there on,
    so the two never share a song.
    """

    VALID_FIRST_SONG = 2**30

    def __init__(self, stems: Sequence[str], samplerate: int, channels: int, frames: int, seed: int):
        from stemsplit.synth import SynthDataset

        missing = [s for s in stems if s not in SynthDataset.sources]
        if missing:
            raise DataError(f"synthetic generator: it has no stem {missing[0]!r} (it makes {SynthDataset.sources})")
        self._songs = SynthDataset(frames / samplerate, 2**31 - 1, seed, samplerate, channels)
        self._order = [SynthDataset.sources.index(s) for s in stems]
        self.frames = frames

    def excerpt(self, rng: np.random.Generator, frames: int) -> np.ndarray:
        return self.song(int(rng.integers(0, self.VALID_FIRST_SONG)), frames)

    def song(self, index: int, frames: int) -> np.ndarray:
        if frames != self.frames:
            raise ValueError(f"this synthetic source renders {self.frames} frames per excerpt, not {frames}")
        return self._songs[index][self._order].numpy()


class ExcerptDataset(torch.utils.data.Dataset):
    """Index i -> (i, stems (S, C, frames)): a weighted draw among sources, deterministic in (seed, i).

    The index space is unbounded in practice (`len` is only a bound for samplers); a run never
    reuses an index, so "epochs" do not exist and resuming at sample n is exact.
    """

    def __init__(self, sources: Sequence[ExcerptSource], weights: Sequence[float], frames: int, seed: int):
        total = float(sum(weights))
        if not sources or total <= 0:
            raise DataError("no training data: every data source has zero weight")
        self.sources = list(sources)
        self.weights = np.asarray(weights, dtype=np.float64) / total
        self.frames = frames
        self.seed = seed

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        rng = np.random.default_rng((self.seed, int(index)))
        source = self.sources[int(rng.choice(len(self.sources), p=self.weights))]
        return int(index), torch.from_numpy(source.excerpt(rng, self.frames))


class StepSampler(torch.utils.data.Sampler):
    """Indices for steps [start, stop): item k of step s on `rank` is sample (s * world + rank) * batch + k."""

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.batch_size, self.rank, self.world = start, stop, batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.stop):
            first = (step * self.world + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)


def validation_set(folder: Optional[FolderSource], synth: Optional[SynthSource], count: int,
                   frames: int) -> list[torch.Tensor]:
    """A fixed list of about `count` stem excerpts (S, C, frames): evenly spread over the valid
    tracks and, if the generator is used, songs training never draws."""
    kinds = [k for k in (folder, synth) if k is not None]
    if not kinds or count <= 0:
        return []
    out: list[torch.Tensor] = []
    per_kind = math.ceil(count / len(kinds))
    if folder is not None:
        tracks = folder.tracks
        for i in range(per_kind):
            track = tracks[i % len(tracks)]
            rounds = math.ceil(per_kind / len(tracks))
            position = (i // len(tracks) + 0.5) / rounds
            start = int(max(0, track.frames - frames) * position)
            out.append(torch.from_numpy(folder.fixed_excerpt(track, start, frames)))
    if synth is not None:
        first = SynthSource.VALID_FIRST_SONG
        out.extend(torch.from_numpy(synth.song(first + i, frames)) for i in range(per_kind))
    return out
