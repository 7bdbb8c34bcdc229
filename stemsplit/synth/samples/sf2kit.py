"""Drum-only soundfonts (avldrums.lv2-soundfont: multi-velocity recorded acoustic kits) arranged
as recorded drum kits.

Owns which pieces such a kit plays (the General MIDI keys the soundfont answers) and the
velocity layers taken from it, in the instrument structure the Hydrogen kits use, so the same
player (hydrogen.KitPlayer) plays them. It must not talk to libfluidsynth (soundfont.py renders
the hits) nor place hits in a track (drums.py).
"""
from __future__ import annotations

import functools
from pathlib import Path

from stemsplit.errors import DataError
from stemsplit.synth.samples.hydrogen import CORE, MAX_HIT_SECONDS, Instrument, Layer

# (low, high, velocity rendered): three layers, so soft, medium and hard hits use the
# soundfont's own velocity samples rather than one hit scaled.
LAYERS = ((0.0, 0.45, 0.35), (0.45, 0.75, 0.6), (0.75, 1.0, 0.95))
# A drum kit's pieces only: the keys General MIDI gives hand percussion hold other kit sounds
# in these soundfonts (e.g. a long cymbal on the bongo key), which would mislabel the groove.
PIECES = ("kick", "snare", "rim", "hat_closed", "hat_pedal", "hat_open", "ride", "crash", "tom_hi", "tom_mid",
          "tom_lo")
PRESET = (0, 0)  # avldrums: one kit preset per file, bank 0 program 0
PROBE_RATE = 44100  # which pieces sound does not depend on the rate; the player renders at its own


@functools.lru_cache(maxsize=16)
def load_kit(path: Path, preset: tuple[int, int] = PRESET) -> dict[str, tuple[Instrument, ...]]:
    """The playable instruments of the kit in soundfont `path` by piece ({} without kick and snare,
    or when libfluidsynth or the file is unusable). Renders every hit once per process."""
    from stemsplit.synth import soundfont

    pieces: dict[str, tuple[Instrument, ...]] = {}
    try:
        for piece in PIECES:
            sounding = [(lo, hi, vel) for lo, hi, vel in LAYERS
                        if soundfont.render_hit(path, *preset, piece, vel, PROBE_RATE, MAX_HIT_SECONDS) is not None]
            layers = tuple(Layer(path, lo, hi, 1.0, 0.0, hit=(*preset, piece, vel)) for lo, hi, vel in sounding)
            if layers:
                pieces[piece] = (Instrument(f"{path.stem}/{piece}", piece, 1.0, layers),)
    except DataError:
        return {}
    return pieces if all(p in pieces for p in CORE) else {}
