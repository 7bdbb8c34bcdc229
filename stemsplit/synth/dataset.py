"""SynthDataset: an endless-ish torch Dataset of synthetic song excerpts for training.

Owns the mapping index -> rendered excerpt as a (4, channels, T) float32 tensor in source order
drums, bass, other, vocals. It is cheap to construct and to pickle (it holds only its settings),
so DataLoader workers render items in parallel. The only synth module that imports torch.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from stemsplit.synth.song import SOURCES, render_song, song_seed


class SynthDataset(Dataset):
    """`length` excerpts of `seconds_per_item` seconds; item i is the same for a given seed.

    Each item is an excerpt starting inside a random section of its own song (with reverb and
    note tails from before the excerpt present). Extra `options` go to `render_song`.
    The mixture of an item is `item.sum(0)`.
    """

    sources = list(SOURCES)

    def __init__(self, seconds_per_item: float, length: int, seed: int, samplerate: int = 44100,
                 channels: int = 2, **options):
        if seconds_per_item <= 0 or length < 0:
            raise ValueError("seconds_per_item must be positive and length non-negative")
        self.seconds_per_item = float(seconds_per_item)
        self.length = int(length)
        self.seed = int(seed)
        self.samplerate = int(samplerate)
        self.channels = int(channels)
        self.options = {"excerpt": True, **options}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        index %= self.length
        stems = render_song(song_seed(self.seed, index), self.seconds_per_item, self.samplerate,
                            self.channels, **self.options)
        target = int(round(self.seconds_per_item * self.samplerate))
        return torch.stack([torch.from_numpy(stems[name][:, :target]) for name in SOURCES])
