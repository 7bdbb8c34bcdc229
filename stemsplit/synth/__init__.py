"""Procedural multitrack songs (drums, bass, other, vocals) for training and testing separators.

`render_song` renders one song; `write_dataset` writes a MUSDB-style folder; `SynthDataset` is
a torch Dataset of on-the-fly excerpts. The torch-based dataset is imported lazily so that the
generator itself needs only numpy and scipy.
"""
from typing import TYPE_CHECKING, Any

from stemsplit.synth.song import SOURCES, render_song
from stemsplit.synth.writer import write_dataset

__all__ = ["SOURCES", "SynthDataset", "render_song", "write_dataset"]

if TYPE_CHECKING:  # pragma: no cover
    from stemsplit.synth.dataset import SynthDataset


def __getattr__(name: str) -> Any:
    """Import torch only when the Dataset is first used."""
    if name == "SynthDataset":
        from stemsplit.synth.dataset import SynthDataset

        return SynthDataset
    raise AttributeError(f"module 'stemsplit.synth' has no attribute {name!r}")
