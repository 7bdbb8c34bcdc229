"""Bounded reading of sample files: mono float32 at the song's rate, or None when unusable.

Owns the limits every sample read obeys (file size, frames, channels, rates) so that no file,
however large its header claims it is, makes the generator allocate without bound, and a per-
process cache of decoded samples. Unreadable, truncated or non-audio files give None (the caller
skips them). It must not choose or place samples.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from scipy import signal

F32 = np.float32
MAX_BYTES = 64 << 20       # larger files are not sample one-shots or words: skipped unread
MAX_SECONDS = 20.0         # at most this much of a file is decoded
MAX_CHANNELS = 8
RATES = (4000, 192000)


def read(path: str | Path, sr: int, max_seconds: float = MAX_SECONDS) -> np.ndarray | None:
    """The first `max_seconds` of `path` as a read-only mono float32 array at `sr` Hz."""
    return _read(str(path), int(sr), float(max_seconds))


@functools.lru_cache(maxsize=1024)
def _read(path: str, sr: int, max_seconds: float) -> np.ndarray | None:
    import soundfile

    try:
        if not 0 < Path(path).stat().st_size <= MAX_BYTES:
            return None
        with soundfile.SoundFile(path) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            if not (RATES[0] <= rate <= RATES[1] and 1 <= channels <= MAX_CHANNELS):
                return None
            # Never more frames than the cap, whatever the header says the file holds.
            data = f.read(frames=int(max_seconds * rate), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, ValueError, TypeError, soundfile.LibsndfileError):
        return None
    if data.shape[0] < 16:
        return None
    mono = data.mean(axis=1, dtype=np.float64)
    if not np.all(np.isfinite(mono)):
        return None
    if rate != sr:
        g = math.gcd(rate, sr)
        mono = signal.resample_poly(mono, sr // g, rate // g)
    out = mono.astype(F32)
    out.setflags(write=False)  # shared through the cache: callers copy before changing it
    return out
