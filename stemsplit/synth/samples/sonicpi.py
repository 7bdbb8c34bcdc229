"""The one-shots of sonic-pi-samples arranged as two recorded drum kits (acoustic and electronic).

Owns which Sonic Pi sample file plays which drum piece at which velocities (the acoustic hits
come as soft and hard recordings: two velocity layers), in the instrument structure the Hydrogen
kits use, so the same player (hydrogen.KitPlayer) plays them. It must not read audio or play hits.
"""
from __future__ import annotations

from pathlib import Path

from stemsplit.synth.samples.hydrogen import CORE, Instrument, Layer

FOLDER = "usr/share/sonic-pi/samples"
SOFT, HARD = (0.0, 0.6), (0.6, 1.0)
# piece -> alternatives (one is chosen per song), each a list of (file stem, velocity range)
KITS: dict[str, dict[str, list[list[tuple[str, tuple[float, float]]]]]] = {
    "acoustic": {
        "kick": [[("drum_bass_soft", SOFT), ("drum_bass_hard", HARD)], [("drum_heavy_kick", (0.0, 1.0))]],
        "snare": [[("drum_snare_soft", SOFT), ("drum_snare_hard", HARD)]],
        "hat_closed": [[("drum_cymbal_closed", (0.0, 1.0))]],
        "hat_pedal": [[("drum_cymbal_pedal", (0.0, 1.0))]],
        "hat_open": [[("drum_cymbal_open", (0.0, 1.0))]],
        "crash": [[("drum_cymbal_soft", SOFT), ("drum_cymbal_hard", HARD)],
                  [("drum_splash_soft", SOFT), ("drum_splash_hard", HARD)]],
        "tom_hi": [[("drum_tom_hi_soft", SOFT), ("drum_tom_hi_hard", HARD)]],
        "tom_mid": [[("drum_tom_mid_soft", SOFT), ("drum_tom_mid_hard", HARD)]],
        "tom_lo": [[("drum_tom_lo_soft", SOFT), ("drum_tom_lo_hard", HARD)]],
        "cowbell": [[("drum_cowbell", (0.0, 1.0))]],
    },
    "electronic": {
        "kick": [[(name, (0.0, 1.0))] for name in ("bd_808", "bd_ada", "bd_boom", "bd_fat", "bd_haus", "bd_klub",
                                                   "bd_pure", "bd_tek", "bd_zum", "elec_soft_kick", "elec_hollow_kick")],
        "snare": [[(name, (0.0, 1.0))] for name in ("sn_dolf", "sn_dub", "sn_generic", "sn_zome", "elec_snare",
                                                    "elec_hi_snare", "elec_lo_snare", "elec_mid_snare", "elec_filt_snare")],
        "clap": [[("perc_snap", (0.0, 1.0))], [("perc_snap2", (0.0, 1.0))]],
        "hat_closed": [[("elec_tick", (0.0, 1.0))]],
        "crash": [[("elec_cymbal", (0.0, 1.0))]],
        "tom_mid": [[("elec_fuzz_tom", (0.0, 1.0))]],
        "clave": [[("elec_wood", (0.0, 1.0))]],
        "conga": [[("tabla_na", (0.0, 1.0))], [("tabla_te1", (0.0, 1.0))]],
        "bongo": [[("tabla_ke1", (0.0, 1.0))]],
    },
}


def load_kit(folder: Path, kit: str) -> dict[str, tuple[Instrument, ...]]:
    """The instruments of Sonic Pi kit `kit` whose files are in `folder` ({} without kick and snare)."""
    pieces: dict[str, tuple[Instrument, ...]] = {}
    for piece, alternatives in KITS[kit].items():
        found = []
        for alt in alternatives:
            layers = tuple(Layer(folder / f"{stem}.flac", lo, hi, 1.0, 0.0) for stem, (lo, hi) in alt
                           if (folder / f"{stem}.flac").is_file())
            if layers:
                found.append(Instrument(alt[0][0], piece, 1.0, layers))
        if found:
            pieces[piece] = tuple(found)
    return pieces if all(p in pieces for p in CORE) else {}
