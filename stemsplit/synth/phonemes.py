"""The phoneme inventory of the synthetic singer: vowels, diphthongs, consonants, syllables.

Owns the formant targets of vowels, how each consonant sounds (voicing, formant target, noise
band, plosive closure, aspiration), the onset/coda clusters and random pronounceable syllables.
It must not render audio (voice.py) nor decide what is sung (vocals.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Adult male vowel formants (Hz) F1..F3 (F4, F5 are fixed; a voice type scales them all).
VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (280, 2250, 2900), "I": (400, 1950, 2550), "e": (480, 2000, 2650), "E": (550, 1770, 2490),
    "ae": (680, 1650, 2400), "a": (750, 1150, 2500), "o": (500, 850, 2450), "O": (600, 950, 2450),
    "U": (450, 1050, 2300), "u": (310, 850, 2250), "A": (640, 1200, 2400), "@": (500, 1450, 2450),
    "er": (480, 1350, 1650),
}
DIPHTHONGS: dict[str, tuple[str, str]] = {
    "ai": ("a", "I"), "ei": ("e", "I"), "ou": ("o", "U"), "au": ("a", "U"), "oi": ("O", "I"),
}
SUNG_VOWELS = ("a", "a", "e", "E", "i", "o", "O", "u", "U", "A", "ae", "ai", "ei", "ou", "au", "@", "I", "er")


@dataclass(frozen=True)
class Consonant:
    """How a consonant sounds: voicing, formant target, noise band, plosive closure."""

    voicing: float            # glottal amplitude during it (0 = voiceless)
    formants: tuple[float, float, float] | None  # own target, or None to follow the vowel
    noise: tuple[float, float, float] | None     # frication band low, high (Hz), level
    dur: float                # typical duration (s)
    closure: bool = False     # plosive: silence then a burst
    aspiration: float = 0.0   # breathy noise through the vowel formants


CONSONANTS: dict[str, Consonant] = {
    "s": Consonant(0.0, None, (4500, 10000, 0.35), 0.11),
    "sh": Consonant(0.0, None, (2000, 6500, 0.35), 0.11),
    "f": Consonant(0.0, None, (1500, 9000, 0.12), 0.09),
    "th": Consonant(0.0, None, (2500, 9000, 0.08), 0.08),
    "h": Consonant(0.0, None, None, 0.08, aspiration=0.6),
    "z": Consonant(0.35, (250, 1600, 2600), (4000, 9000, 0.2), 0.09),
    "v": Consonant(0.4, (250, 1200, 2300), (1500, 7000, 0.06), 0.07),
    "p": Consonant(0.0, None, (500, 3000, 0.5), 0.07, closure=True, aspiration=0.4),
    "t": Consonant(0.0, None, (3000, 9000, 0.6), 0.07, closure=True, aspiration=0.4),
    "k": Consonant(0.0, None, (1500, 4500, 0.55), 0.08, closure=True, aspiration=0.4),
    "b": Consonant(0.15, (250, 900, 2200), (400, 2500, 0.3), 0.06, closure=True),
    "d": Consonant(0.15, (250, 1700, 2600), (2500, 7000, 0.3), 0.06, closure=True),
    "g": Consonant(0.15, (250, 1800, 2300), (1200, 4000, 0.3), 0.06, closure=True),
    "ch": Consonant(0.0, None, (2000, 7000, 0.4), 0.1, closure=True),
    "j": Consonant(0.2, (250, 1800, 2500), (2000, 6000, 0.25), 0.09, closure=True),
    "m": Consonant(0.55, (250, 1100, 2200), None, 0.07),
    "n": Consonant(0.55, (250, 1600, 2600), None, 0.07),
    "ng": Consonant(0.5, (250, 2000, 2600), None, 0.07),
    "l": Consonant(0.75, (360, 1300, 2800), None, 0.06),
    "r": Consonant(0.75, (350, 1100, 1500), None, 0.06),
    "w": Consonant(0.7, (300, 700, 2200), None, 0.05),
    "y": Consonant(0.7, (280, 2200, 3000), None, 0.05),
}
ONSETS = ("", "", "m", "n", "l", "r", "s", "t", "d", "k", "b", "p", "g", "f", "h", "w", "y", "sh", "ch",
          "j", "v", "z", "th", "st", "tr", "bl", "kr", "pl", "sw", "gr", "fl")
CODAS = ("", "", "", "", "n", "m", "t", "s", "l", "r", "k", "d", "ng", "z", "st", "nd", "ts")
_CLUSTERS = {"st": ("s", "t"), "tr": ("t", "r"), "bl": ("b", "l"), "kr": ("k", "r"), "pl": ("p", "l"),
             "sw": ("s", "w"), "gr": ("g", "r"), "fl": ("f", "l"), "nd": ("n", "d"), "ts": ("t", "s")}


@dataclass(frozen=True)
class Syllable:
    """A syllable as onset consonants, a vowel (or diphthong) and coda consonants."""

    onset: tuple[str, ...]
    vowel: str
    coda: tuple[str, ...]


def random_syllable(rng: np.random.Generator, speech: bool = False) -> Syllable:
    """A pronounceable nonsense syllable (consonant-heavier for speech and rap)."""
    onset = str(rng.choice(ONSETS))
    coda = str(rng.choice(CODAS)) if (speech or rng.random() < 0.5) else ""
    vowel = str(rng.choice(SUNG_VOWELS))
    parts = lambda s: _CLUSTERS.get(s, (s,) if s else ())  # noqa: E731
    return Syllable(parts(onset), vowel, parts(coda))


def vowel_formants(vowel: str, scale: float) -> np.ndarray:
    """F1..F5 (Hz) of a vowel for a voice whose vocal tract scales formants by `scale`."""
    f1, f2, f3 = VOWELS[vowel]
    return np.array([f1, f2, f3, 3500.0, 4500.0]) * scale
