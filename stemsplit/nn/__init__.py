"""Demucs-family networks, written for stemsplit.

Owns: the public model classes and `ARCHITECTURES`, the name -> class table checkpoints use.
Must not: import the `demucs` package (it is a test oracle only) or read files.
"""

from stemsplit.nn.demucs import Demucs
from stemsplit.nn.hdemucs import HDemucs
from stemsplit.nn.htdemucs import HTDemucs

ARCHITECTURES: dict[str, type] = {"Demucs": Demucs, "HDemucs": HDemucs, "HTDemucs": HTDemucs}

__all__ = ["ARCHITECTURES", "Demucs", "HDemucs", "HTDemucs"]
