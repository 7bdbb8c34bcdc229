"""The benchmarks' test track: music-like stereo audio (not silence), generated block by block.

Shared by vs_demucs.py and stream_memory.py so that both measure the same kind of signal and a
60-minute track never has to be held in memory while it is written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLERATE = 44100


def write_track(path: Path, seconds: float, seed: int = 0) -> Path:
    """Stereo 16-bit wav: chords with vibrato, a bass line, noise bursts on the beat.

    An existing file is reused (same name, same content: the signal depends only on the seed).
    """
    if path.exists():
        return path
    import soundfile as sf

    total = int(seconds * SAMPLERATE)
    block = SAMPLERATE * 10
    tmp = path.with_suffix(".part.wav")
    with sf.SoundFile(str(tmp), "w", SAMPLERATE, 2, subtype="PCM_16") as out:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / SAMPLERATE
            rng = np.random.default_rng([seed, start])
            bar = np.floor(t / 2.0)
            root = 110.0 * 2 ** ((bar * 5 % 12) / 12)
            chord = sum(np.sin(2 * np.pi * root * r * t + 0.3 * np.sin(2 * np.pi * 5 * t)) for r in (2, 2.52, 3))
            bass = np.sign(np.sin(2 * np.pi * root / 2 * t)) * 0.5
            beat = np.exp(-30 * ((t * 2) % 1.0))
            noise = rng.standard_normal((2, n)) * beat
            left = 0.12 * chord + 0.15 * bass + 0.25 * noise[0]
            right = 0.10 * chord + 0.15 * bass + 0.25 * noise[1]
            out.write((0.5 * np.stack([left, right], 1)).astype(np.float32))
    tmp.replace(path)
    return path
