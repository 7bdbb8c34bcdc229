"""Training data: MUSDB-style folders and the synthetic generator, served as random stem excerpts.

Owns: drawing excerpts from track folders (checked and read by `stemsplit.data.musdb`) and from
the generator, with weights, and making every excerpt a pure function of (seed, index) so
DataLoader workers and resumed runs see the same data.
Must not: find or check track folders (data.musdb does), augment (augment.py), mix stems into a mixture (the trainer sums stems after
augmentation), build models or print.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Protocol, Sequence

import numpy as np
import torch

from stemsplit.data.musdb import Track, read_excerpt
from stemsplit.errors import DataError


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
    so the two never share a song. `options` go to `render_song` (e.g. samples and split).
    """

    VALID_FIRST_SONG = 2**30

    def __init__(self, stems: Sequence[str], samplerate: int, channels: int, frames: int, seed: int, **options):
        from stemsplit.synth import SynthDataset

        missing = [s for s in stems if s not in SynthDataset.sources]
        if missing:
            raise DataError(f"synthetic generator: it has no stem {missing[0]!r} (it makes {SynthDataset.sources})")
        self._songs = SynthDataset(frames / samplerate, 2**31 - 1, seed, samplerate, channels, **options)
        self._order = [SynthDataset.sources.index(s) for s in stems]
        self.frames = frames

    def excerpt(self, rng: np.random.Generator, frames: int) -> np.ndarray:
        return self.song(int(rng.integers(0, self.VALID_FIRST_SONG)), frames)

    def song(self, index: int, frames: int) -> np.ndarray:
        if frames != self.frames:
            raise ValueError(f"this synthetic source renders {self.frames} frames per excerpt, not {frames}")
        return self._songs[index][self._order].numpy()


def synth_options(samples: Optional[str], share: float, split: str) -> dict:
    """`render_song` options for synthetic songs on recorded material of one split ({} without
    samples); a missing sample folder is a DataError now rather than in a loader worker."""
    if samples is None:
        return {}
    from stemsplit.synth.samples.library import find_library

    find_library(samples, split)
    return {"samples": samples, "split": split, "sample_share": share}


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
