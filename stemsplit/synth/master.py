"""The mix bus of a record: genre levels, guitar drive, one shared room, bus EQ, glue compression
and a mastering limiter.

Owns what happens after each stem's own production (effects.produce): the style's stem levels
(vocals on top, bass and kick loud), distortion and width on the "other" stem, reverb and delay
sends into one room shared by all stems, and the bus processes. Each bus process derives ONE
filter or gain curve from the mix and applies it to every stem alike, so the stems still add up
to the mixture. It must not render parts nor set the final file level (song.py does).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from stemsplit.synth import dsp, effects

F32 = np.float32

# Stem levels in dB (before the song's random spread), by style: vocals on top, bass and drums
# (the kick) loud in beat-driven styles, guitars up front in rock, drums back in jazz and ballads.
LEVELS = {
    "default": {"drums": 0.0, "bass": -0.5, "other": -3.0, "vocals": 1.5},
    "hiphop": {"drums": 0.5, "bass": 1.0, "other": -5.0, "vocals": 2.0},
    "trap": {"drums": 0.5, "bass": 1.5, "other": -5.0, "vocals": 1.5},
    "electronic": {"drums": 0.5, "bass": 0.5, "other": -2.0, "vocals": 0.5},
    "rock": {"drums": 0.0, "bass": -1.0, "other": -1.0, "vocals": 1.0},
    "metal": {"drums": 0.0, "bass": -1.5, "other": 0.0, "vocals": 0.0},
    "jazz": {"drums": -3.0, "bass": -0.5, "other": 0.0, "vocals": 1.5},
    "ballad": {"drums": -3.0, "bass": -1.0, "other": -1.0, "vocals": 2.5},
}
BEAT_STYLES = ("hiphop", "trap", "electronic", "pop", "funk", "reggae")
SPREAD_DB = 1.5   # per-song random spread of each stem level (a record's mix is deliberate)


def levels(style: str) -> dict[str, float]:
    """The stem levels (dB) of a style's records."""
    return LEVELS.get(style, LEVELS["default"])


def limiter_gain(mix: np.ndarray, sr: int, ceiling: float, lookahead: float = 0.0015,
                 release: float = 0.05) -> np.ndarray:
    """Gain per sample (float64) that keeps `mix` (channels, T) under `ceiling`.

    A sliding minimum of the needed gain over lookahead + release, then a moving average over
    the release: every average only takes values that are at or below the gain needed at its
    centre, so the result never lets a peak through, rises back smoothly and starts to fall
    before a peak arrives (no clicks)."""
    peak = np.max(np.abs(mix), axis=0).astype(np.float64)
    need = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    if need.min() >= 1.0:
        return np.ones_like(need)
    avg = max(int(release * sr) | 1, 1)
    span = avg + 2 * int(lookahead * sr) + 1
    floor = ndimage.minimum_filter1d(need, span, mode="nearest")
    return np.minimum(ndimage.uniform_filter1d(floor, avg, mode="nearest"), need)


def apply_gain(stems: dict[str, np.ndarray], gain: np.ndarray) -> dict[str, np.ndarray]:
    g = gain.astype(F32)
    return {k: (v * g).astype(F32) for k, v in stems.items()}


def mix_of(stems: dict[str, np.ndarray]) -> np.ndarray:
    return sum(stems.values(), np.zeros_like(next(iter(stems.values()))))


def limit(stems: dict[str, np.ndarray], sr: int, ceiling: float) -> dict[str, np.ndarray]:
    """The stems with one limiter gain applied to all, their sum peaking at most at `ceiling`."""
    out = apply_gain(stems, limiter_gain(mix_of(stems), sr, ceiling * 0.999))
    peak = float(np.max(np.abs(mix_of(out))))
    if peak > ceiling:  # float32 rounding of the per-stem products: a last hair of headroom
        out = {k: (v * F32(ceiling / peak * 0.9999)).astype(F32) for k, v in out.items()}
    return out


def _colour(rng: np.random.Generator, stems: dict[str, np.ndarray], sr: int, style: str) -> None:
    """Per-stem record colour: kick weight on the drums, driven guitars, wide keys, a centred voice."""
    weight = rng.uniform(2.0, 5.0) if style in BEAT_STYLES else rng.uniform(0.0, 2.5)
    stems["drums"] = signal.sosfilt(dsp.shelf_sos(rng.uniform(60, 110), weight, sr, high=False),
                                    stems["drums"], axis=-1).astype(F32)
    if style in ("rock", "metal") or rng.random() < 0.15:
        drive = rng.uniform(6, 14) if style == "metal" else rng.uniform(2, 8)
        stems["other"] = effects.saturate(stems["other"], drive, rng.uniform(0.4, 0.9))
    stems["other"] = effects.width(stems["other"], rng.uniform(1.0, 1.4))
    stems["vocals"] = effects.width(stems["vocals"], rng.uniform(0.6, 1.0))


def _sends(rng: np.random.Generator, stems: dict[str, np.ndarray], sr: int, bpm: float) -> None:
    """One room (and one tempo delay) that the stems are sent into at their own levels."""
    ir = effects.impulse_response(rng, sr // 2, rng.uniform(0.8, 2.5), rng.uniform(0.01, 0.05), rng.uniform(0.3, 0.8))
    sends = {"drums": rng.uniform(0.03, 0.12), "bass": 0.0, "other": rng.uniform(0.05, 0.2),
             "vocals": rng.uniform(0.08, 0.25)}
    for name, wet in sends.items():
        if wet > 0 and np.any(stems[name]):
            stems[name] = effects.reverb(stems[name], ir, sr, wet)
    if rng.random() < 0.4 and np.any(stems["vocals"]):
        beat = 60.0 / bpm
        stems["vocals"] = effects.delay(stems["vocals"], sr, beat * float(rng.choice([0.5, 0.75])),
                                        rng.uniform(0.15, 0.35), rng.uniform(0.05, 0.15), True, rng)


def master(rng: np.random.Generator, stems: dict[str, np.ndarray], sr: int, style: str,
           bpm: float) -> dict[str, np.ndarray]:
    """The stems (each (2, T) float32) after the mix bus; their sum is the mastered mix."""
    stems = dict(stems)
    _colour(rng, stems, sr, style)
    _sends(rng, stems, sr, bpm)
    bus_eq = np.concatenate([dsp.butter_sos(rng.uniform(20, 35), sr, 2, high=True),
                             dsp.shelf_sos(rng.uniform(8000, 12000), rng.uniform(0.0, 3.0), sr, high=True)])
    stems = {k: signal.sosfilt(bus_eq, v, axis=-1).astype(F32) for k, v in stems.items()}
    mix = mix_of(stems)
    level = float(10 * np.log10(np.mean(mix.astype(np.float64) ** 2) + 1e-12))
    glue = effects.compress_gain(mix, sr, level + rng.uniform(0.0, 4.0), rng.uniform(1.5, 3.0),
                                 rng.uniform(0.01, 0.03), rng.uniform(0.1, 0.4), makeup=False)
    stems = apply_gain(stems, glue)
    # Drive into the limiter as a mastering engineer would: peaks pushed a few dB past the ceiling.
    peak = float(np.max(np.abs(mix_of(stems)))) or 1.0
    drive = rng.uniform(4.0, 10.0) if style in ("metal", "electronic", "trap") else rng.uniform(2.0, 7.0)
    stems = {k: (v * F32(dsp.db(drive) / peak)).astype(F32) for k, v in stems.items()}
    return limit(stems, sr, 1.0)
