"""Which recorded material one song uses: a drum kit, a voice and a soundfont, drawn per song.

Owns the per-song draws (each kind with probability `share`, only from the song's split) and
skipping material that turns out unusable, so a song falls back to procedural sound instead of
failing. It must not render audio nor decide the split (library.py owns that rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemsplit.errors import DataError
from stemsplit.synth import patches
from stemsplit.synth.samples import hydrogen, library, sf2kit, sonicpi


@dataclass
class Picked:
    kit: dict | None = None          # hydrogen.load_kit(...) of the chosen kit
    voice: object | None = None      # a voices.RecordedVoice
    soundfont: Path | None = None


def load_kit(kit: library.Kit) -> dict:
    """The playable instruments of a kit by piece ({} when unusable)."""
    if kit.name.startswith("sonic-pi/"):
        return sonicpi.load_kit(kit.path, kit.name.split("/", 1)[1])
    if kit.name.startswith("sf2/"):
        return sf2kit.load_kit(kit.path)
    return hydrogen.load_kit(kit.path)


def _fluidsynth_ok() -> bool:
    from stemsplit.synth import soundfont

    try:
        soundfont._lib()
    except DataError:
        return False
    return True


def pick(rng: np.random.Generator, samples: str | Path, split: str, share: float, sr: int,
         want_soundfont: bool) -> Picked:
    """Draw one song's material. The same number of draws is made whatever is installed, so the
    rest of a song does not depend on which packages happen to be there."""
    lib = library.find_library(samples, split)
    use_kit, use_voice = (rng.random() < share for _ in range(2))
    k_kit, k_voice, k_font = (int(rng.integers(2**31)) for _ in range(3))
    voice_seed = int(rng.integers(2**62))
    out = Picked()
    kits = [k for k in lib.kits if load_kit(k)]
    if use_kit and kits:
        out.kit = load_kit(kits[k_kit % len(kits)])
    if use_voice and lib.voices:
        from stemsplit.synth.samples.voices import RecordedVoice

        voice = RecordedVoice.make(lib.voices[k_voice % len(lib.voices)], sr, voice_seed)
        out.voice = voice if voice.units else None
    # Each stem then goes through the soundfont with chance `share` (song.py): no second draw here.
    if want_soundfont and lib.soundfonts:
        font = lib.soundfonts[k_font % len(lib.soundfonts)]
        # A freepats folder needs no libfluidsynth.
        out.soundfont = font if patches.is_patch_set(font) or _fluidsynth_ok() else None
    return out
