"""Hydrogen drum kits (drumkit.xml + recorded one-shots) played as the generator's drum pieces.

Owns parsing drumkit.xml (instruments, their multi-velocity layers, gains and pitches, in the old
and the component formats), mapping instrument names onto the pieces the groove writer uses
(kick, snare, hats, toms, cymbals, hand percussion) and choosing a recorded hit for a piece and a
velocity (velocity layer, round-robin between equal layers). It must not write grooves nor place
hits in a track (drums.py does both).
"""
from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemsplit.synth.reserved import is_reserved
from stemsplit.synth.samples import audio

F32 = np.float32
MAX_XML_BYTES = 2 << 20        # a drumkit.xml is tens of kB; anything far larger is not one
MAX_HIT_SECONDS = 6.0          # a crash rings out within this; longer files are cut
CORE = ("kick", "snare")       # a kit without these is a percussion set, not a drum kit

# (pattern on the lower-case instrument name, piece); the first match wins. Rolls, chokes and
# effects have no place in the groove writer and map to nothing.
_RULES: tuple[tuple[str, str | None], ...] = (
    (r"roll|choke|swish|flink|zap|fx", None),
    (r"side ?stick|\bstick\b|rim ?click|\brim\b(?!shot)", "rim"),
    (r"clap|snap", "clap"),
    (r"(hat|hh).*(pedal|\bpd\b)|pedal.*(hat|hh)", "hat_pedal"),
    (r"(hat|hh).*(open|\bop\b|semi|free)|open.*(hat|hh)", "hat_open"),
    (r"hat|hh", "hat_closed"),
    (r"ride", "ride"),
    (r"crash|splash|cymbal", "crash"),
    (r"^(?=.*tom)(?=.*(floor|low|\blo\b))|floor", "tom_lo"),
    (r"^(?=.*tom)(?=.*(\bhi\b|high))", "tom_hi"),
    (r"tom", "tom_mid"),
    (r"snare", "snare"),
    (r"kick|bass ?drum|\bbd\b", "kick"),
    (r"cowbell|bell", "cowbell"),
    (r"tambourine", "tambourine"),
    (r"shaker|maraca", "shaker"),
    (r"conga|djembe|cajon", "conga"),
    (r"bongo", "bongo"),
    (r"clave|woodblock", "clave"),
)
# A piece the kit lacks is played on a close relative when it has one.
_STAND_INS = {"hat_pedal": "hat_closed", "hat_open": "hat_closed", "ride": "hat_open", "crash": "ride",
              "clap": "snare", "rim": "snare", "tom_hi": "tom_mid", "tom_mid": "tom_lo", "tom_lo": "tom_mid"}


def piece_of(name: str) -> str | None:
    """The groove writer's piece an instrument name stands for (None: unused)."""
    low = name.lower()
    for pattern, piece in _RULES:
        if re.search(pattern, low):
            return piece
    return None


@dataclass(frozen=True)
class Layer:
    path: Path
    low: float        # velocity range [low, high] in 0..1
    high: float
    gain: float
    pitch: float      # semitones
    # A hit rendered from the soundfont at `path` (bank, preset, piece, velocity), not a file.
    hit: tuple | None = None


@dataclass(frozen=True)
class Instrument:
    name: str
    piece: str
    gain: float
    layers: tuple[Layer, ...]


def _number(node: ET.Element, tag: str, default: float) -> float:
    try:
        value = float(node.findtext(tag, default=str(default)))
    except ValueError:
        return default
    return value if np.isfinite(value) else default


def _strip_namespaces(root: ET.Element) -> None:
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            node.tag = node.tag.split("}", 1)[1]


@functools.lru_cache(maxsize=64)
def load_kit(xml_path: Path) -> dict[str, tuple[Instrument, ...]]:
    """The playable instruments of a kit by piece; {} when the kit is unusable (unreadable XML,
    no kick or snare, reserved, or files outside its folder)."""
    folder = xml_path.parent
    try:
        if is_reserved(xml_path) or xml_path.stat().st_size > MAX_XML_BYTES:
            return {}
        root = ET.fromstring(xml_path.read_bytes())
    except (OSError, ET.ParseError, ValueError):
        return {}
    _strip_namespaces(root)
    pieces: dict[str, list[Instrument]] = {}
    for node in root.iter("instrument"):
        piece = piece_of(node.findtext("name", default=""))
        if piece is None:
            continue
        layers = []
        sources = list(node.iter("layer")) or [node]  # old kits: one <filename> on the instrument
        for layer in sources:
            name = (layer.findtext("filename") or "").strip()
            path = (folder / name).resolve() if name else None
            # Only files inside the kit's own folder: a kit cannot point the reader elsewhere.
            if path is None or folder.resolve() not in path.parents or not path.is_file():
                continue
            layers.append(Layer(path, _number(layer, "min", 0.0), _number(layer, "max", 1.0),
                                _number(layer, "gain", 1.0), _number(layer, "pitch", 0.0)))
        if layers:
            gain = _number(node, "volume", 1.0) * _number(node, "gain", 1.0)
            pieces.setdefault(piece, []).append(Instrument(node.findtext("name", ""), piece, gain, tuple(layers)))
    if not all(p in pieces for p in CORE):
        return {}
    return {p: tuple(v) for p, v in pieces.items()}


class KitPlayer:
    """One song's drummer on a recorded kit: one instrument per piece, hits chosen per velocity."""

    def __init__(self, rng: np.random.Generator, kit: dict[str, tuple[Instrument, ...]], sr: int):
        self.sr = sr
        self.rng = rng
        self.chosen = {p: insts[int(rng.integers(len(insts)))] for p, insts in sorted(kit.items())}
        self._last: dict[str, Layer] = {}

    def piece(self, piece: str) -> str | None:
        """The piece that actually sounds for `piece` (itself or a stand-in; None: not played)."""
        seen = set()
        while piece not in self.chosen and piece in _STAND_INS and piece not in seen:
            seen.add(piece)
            piece = _STAND_INS[piece]
        return piece if piece in self.chosen else None

    def hit(self, piece: str, vel: float) -> tuple[np.ndarray, float] | None:
        """(mono one-shot peak-normalised, gain) for a hit of `vel` in 0..1, or None."""
        played = self.piece(piece)
        if played is None:
            return None
        inst = self.chosen[played]
        fits = [la for la in inst.layers if la.low <= vel <= la.high]
        if not fits:  # between ranges: the nearest layer
            fits = [min(inst.layers, key=lambda la: min(abs(vel - la.low), abs(vel - la.high)))]
        # Round robin: do not repeat the last sample of this piece when another one fits.
        fresh = [la for la in fits if la != self._last.get(played)] or fits
        layer = fresh[int(self.rng.integers(len(fresh)))]
        self._last[played] = layer
        if layer.hit is None:
            sample = audio.read(layer.path, self.sr, MAX_HIT_SECONDS)
        else:
            sample = _rendered(layer, self.sr)
        if sample is None:
            return None
        if layer.pitch:
            sample = _repitch(sample, layer.pitch)
        peak = float(np.max(np.abs(sample))) or 1.0
        return sample, inst.gain * layer.gain / peak


def _rendered(layer: Layer, sr: int) -> np.ndarray | None:
    from stemsplit.synth import soundfont

    bank, preset, piece, vel = layer.hit
    return soundfont.render_hit(layer.path, bank, preset, piece, vel, sr, MAX_HIT_SECONDS)


def _repitch(x: np.ndarray, semitones: float) -> np.ndarray:
    """Play a one-shot faster or slower (as a sampler's pitch knob does)."""
    rate = 2.0 ** (semitones / 12.0)
    pos = np.arange(0, x.shape[0] - 1, rate)
    return np.interp(pos, np.arange(x.shape[0]), x).astype(F32)
