"""Who sings: voice types from bass to soprano and the per-singer voice parameters.

Owns the `Singer` record (range, formant scale, breathiness, vibrato, jitter/shimmer, glottal
open quotient, tilt, singer's formant, diction, pitch correction, rasp, vocal model, ...) and how
a random singer is drawn. It must not render audio (voice.py) nor write lines (vocals.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Voice types: comfortable MIDI range and formant scale relative to an adult male tract.
VOICE_TYPES: dict[str, tuple[int, int, float]] = {
    "bass": (40, 62, 0.92), "baritone": (45, 66, 0.97), "tenor": (48, 70, 1.02),
    "alto": (53, 74, 1.12), "mezzo": (57, 78, 1.16), "soprano": (60, 82, 1.2),
}


@dataclass
class Singer:
    """Per-voice parameters: who is singing and how."""

    voice_type: str
    low: int
    high: int
    formant_scale: float
    breathiness: float
    vibrato_rate: float
    vibrato_depth: float      # semitones
    jitter: float             # relative f0 noise
    shimmer: float            # dB of amplitude noise
    open_quotient: float
    tilt: float               # extra spectral slope (dB/octave)
    singer_formant: float     # dB boost near 3 kHz (trained voices)
    scoop: float              # chance a note starts with a scoop from below
    bandwidth_scale: float
    consonant_gain: float = 1.0   # diction: crisp (>1) or soft (<1) consonants
    autotune: bool = False        # hard pitch correction: no scoops, tiny vibrato, instant glides
    rasp: float = 0.0             # rough/growled voice: period-doubling and extra noise
    falloff: float = 0.0          # chance of a pitch fall at the end of a phrase
    whisper: bool = False         # (speech) unvoiced, all breath
    air: float = 15.0             # dB/octave fall of the envelope above 3.5 kHz
    model: str = "stft"           # formant filter: "stft" (frame-wise spectra) or "klatt" (resonator cascade)
    drift: float = 0.1            # slow pitch wander (semitones)
    accent: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)  # this singer's own F1..F5 offsets (ratios)
    seed: int = 0


MODELS = ("stft", "klatt")


MODEL_WEIGHTS = {"stft": 0.7, "klatt": 0.3}  # the cascade costs more CPU, so it is the rarer one


def pick_model(rng: np.random.Generator, exclude: frozenset[str] = frozenset()) -> str:
    """The vocal model (formant filter) of a new singer, never one in `exclude`."""
    allowed = [m for m in MODELS if m not in exclude] or list(MODELS)
    weights = np.array([MODEL_WEIGHTS[m] for m in allowed])
    return str(allowed[int(rng.choice(len(allowed), p=weights / weights.sum()))])


def make_singer(rng: np.random.Generator, voice_type: str | None = None,
                exclude: frozenset[str] = frozenset()) -> Singer:
    """Draw a singer of a given (or random, not excluded) voice type and vocal model."""
    allowed = [v for v in VOICE_TYPES if v not in exclude] or list(VOICE_TYPES)
    vt = voice_type or str(allowed[int(rng.integers(len(allowed)))])
    low, high, scale = VOICE_TYPES[vt]
    return Singer(
        voice_type=vt, low=low, high=high, formant_scale=scale * rng.uniform(0.95, 1.05),
        breathiness=float(rng.uniform(0.02, 0.35)), vibrato_rate=float(rng.uniform(4.5, 6.8)),
        vibrato_depth=float(rng.uniform(0.1, 0.8) if rng.random() < 0.85 else 0.0),
        jitter=float(rng.uniform(0.002, 0.012)), shimmer=float(rng.uniform(0.2, 1.2)),
        open_quotient=float(rng.uniform(0.45, 0.8)), tilt=float(rng.uniform(-3, 2)),
        singer_formant=float(rng.uniform(0, 10) if rng.random() < 0.5 else 0.0),
        scoop=float(rng.uniform(0.0, 0.6)), bandwidth_scale=float(rng.uniform(0.8, 1.5)),
        consonant_gain=float(np.exp(rng.uniform(np.log(0.4), np.log(1.6)))),
        autotune=bool(rng.random() < 0.12), rasp=float(rng.uniform(0.1, 0.5) if rng.random() < 0.12 else 0.0),
        falloff=float(rng.uniform(0, 0.5)), whisper=bool(rng.random() < 0.05), air=float(rng.uniform(8, 20)),
        drift=float(rng.uniform(0.03, 0.2)), model=pick_model(rng, exclude),
        accent=tuple(float(a) for a in rng.uniform(0.92, 1.08, size=5)), seed=int(rng.integers(2**62)),
    )
