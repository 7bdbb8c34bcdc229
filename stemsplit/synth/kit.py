"""Drum kit one-shots: synthesized electronic, acoustic-like, sampled/lo-fi, 808 and brush kits.

Owns how each kit piece sounds (kick, snare, brush, clap, hats, ride, crash, toms, percussion),
rendered once per song in two round-robin variants, as a sampled kit plays them. It must not
write patterns or place hits (drums.py).
"""
from __future__ import annotations

import numpy as np

from stemsplit.synth import dsp

F32 = np.float32
KIT_KINDS = ("electronic", "acoustic", "sampled", "808", "brushes")
PERCUSSION = ("shaker", "tambourine", "cowbell", "conga", "bongo", "rim", "clave")
PIECES = ("kick", "snare", "clap", "hat_closed", "hat_pedal", "hat_open", "ride", "crash", "tom_hi", "tom_mid",
          "tom_lo", *PERCUSSION)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n).astype(F32)


def _kick(rng: np.random.Generator, sr: int, kind: str) -> np.ndarray:
    dur = rng.uniform(0.25, 0.7) if kind != "808" else rng.uniform(0.6, 1.4)
    n = int(dur * sr)
    f_end = rng.uniform(38, 62)
    f_start = f_end * rng.uniform(2.0, 5.0)
    sweep = rng.uniform(0.015, 0.06)
    t = np.arange(n, dtype=np.float64) / sr
    freq = f_end + (f_start - f_end) * np.exp(-t / sweep)
    body = dsp.sine(dsp.phase_from_freq(freq, n, sr)) * dsp.exp_decay(n, sr, dur / rng.uniform(2.5, 5))
    click_n = int(0.006 * sr)
    click = dsp.highpass(_noise(rng, click_n), rng.uniform(1500, 5000), sr) * dsp.exp_decay(click_n, sr, 0.0015)
    body[:click_n] += click * F32(rng.uniform(0.1, 0.6))
    if kind == "acoustic":
        beater = dsp.bandpass(_noise(rng, n), 80, 900, sr) * dsp.exp_decay(n, sr, 0.03)
        body += beater * F32(rng.uniform(0.2, 0.5))
    if kind in ("808", "sampled") and rng.random() < 0.6:
        body = dsp.soft_clip(body, rng.uniform(1.5, 4.0))
    return body


def _snare(rng: np.random.Generator, sr: int, kind: str) -> np.ndarray:
    n = int(rng.uniform(0.18, 0.45) * sr)
    f1 = rng.uniform(160, 250)
    tone = (dsp.sine(dsp.phase_from_freq(f1, n, sr)) + 0.6 * dsp.sine(dsp.phase_from_freq(f1 * 1.59, n, sr)))
    tone *= dsp.exp_decay(n, sr, rng.uniform(0.03, 0.09))
    lo, hi = rng.uniform(800, 2500), rng.uniform(6000, 12000)
    wires = dsp.bandpass(_noise(rng, n), lo, hi, sr) * dsp.exp_decay(n, sr, rng.uniform(0.05, 0.16))
    mix = tone * F32(rng.uniform(0.3, 0.8)) + wires * F32(rng.uniform(0.6, 1.2))
    if kind == "acoustic":
        mix = mix + dsp.resonator(_noise(rng, n), rng.uniform(300, 600), 8, sr) * dsp.exp_decay(n, sr, 0.12) * 0.3
    return mix


def _brush(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A brush on the snare: a soft swish with a slow attack instead of a crack."""
    n = int(rng.uniform(0.15, 0.35) * sr)
    t = np.arange(n, dtype=F32) / F32(sr)
    attack = F32(rng.uniform(0.005, 0.03))
    env = np.minimum(t / attack, 1.0) * np.exp(-np.maximum(t - attack, 0) / F32(rng.uniform(0.05, 0.12)))
    return dsp.bandpass(_noise(rng, n), rng.uniform(1500, 3000), rng.uniform(6000, 11000), sr) * env.astype(F32)


def _clap(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(rng.uniform(0.2, 0.4) * sr)
    env = np.zeros(n, dtype=F32)
    gap = rng.uniform(0.007, 0.013)
    for k in range(int(rng.integers(3, 5))):
        s = int(k * gap * sr)
        env[s:] += dsp.exp_decay(n - s, sr, 0.004 if k < 3 else rng.uniform(0.04, 0.1))
    return dsp.bandpass(_noise(rng, n), rng.uniform(700, 1300), rng.uniform(2500, 6000), sr) * env


def _metal(rng: np.random.Generator, n: int, sr: int, base: float) -> np.ndarray:
    """The classic six detuned square waves, the metallic core of hats and cymbals."""
    ratios = np.array([1.0, 1.4829, 1.8003, 2.5461, 2.6303, 3.8966]) * base
    ratios *= rng.uniform(0.97, 1.03, size=6)
    t = np.arange(n, dtype=np.float64) / sr
    out = np.zeros(n, dtype=F32)
    for f in ratios:
        out += ((t * f + rng.random()) % 1.0 < 0.5).astype(F32)
    return (out - F32(3.0)) / F32(3.0)


def _slice(rng: np.random.Generator, source: np.ndarray, n: int) -> np.ndarray:
    """n samples of a kit-wide oscillator bank from a random point (round-robin variants differ)."""
    if n >= source.shape[0]:
        return np.resize(source, n)
    start = int(rng.integers(source.shape[0] - n + 1))
    return source[start:start + n]


def _hat(rng: np.random.Generator, sr: int, decay: float, kind: str, bank: np.ndarray) -> np.ndarray:
    n = int(max(decay * 5, 0.05) * sr)
    metal = _slice(rng, bank, n)
    src = metal * F32(rng.uniform(0.3, 1.0)) + _noise(rng, n) * F32(rng.uniform(0.3, 1.0))
    out = dsp.highpass(src, rng.uniform(6000, 9000) if kind != "sampled" else rng.uniform(4000, 7000), sr, 4)
    return out * dsp.exp_decay(n, sr, decay)


def _cymbal(rng: np.random.Generator, sr: int, decay: float, bell: bool, bank: np.ndarray) -> np.ndarray:
    n = int(min(decay * 3.5, 2.5) * sr)
    src = _slice(rng, bank, n) * F32(0.8) + _noise(rng, n)
    out = dsp.highpass(src, rng.uniform(3000, 6000), sr, 2)
    out *= dsp.exp_decay(n, sr, decay)
    if bell:
        ping = sum(dsp.sine(dsp.phase_from_freq(f, n, sr)) for f in rng.uniform(700, 3000, size=3))
        out += ping * dsp.exp_decay(n, sr, decay * 0.5) * F32(0.25)
    attack = int(0.002 * sr)
    out[:attack] *= np.linspace(0, 1, attack, dtype=F32)
    return out


def _tom(rng: np.random.Generator, sr: int, freq: float) -> np.ndarray:
    n = int(rng.uniform(0.3, 0.7) * sr)
    t = np.arange(n, dtype=np.float64) / sr
    f = freq * (1.0 + 0.4 * np.exp(-t / 0.02))
    body = dsp.sine(dsp.phase_from_freq(f, n, sr)) + 0.3 * dsp.sine(dsp.phase_from_freq(f * 1.5, n, sr))
    body *= dsp.exp_decay(n, sr, rng.uniform(0.12, 0.3))
    hit = dsp.bandpass(_noise(rng, n), 200, 3000, sr) * dsp.exp_decay(n, sr, 0.01)
    return body + hit * F32(0.4)


def _perc(rng: np.random.Generator, sr: int, piece: str, bank: np.ndarray) -> np.ndarray:
    if piece == "shaker":
        n = int(0.09 * sr)
        env = np.sin(np.linspace(0, np.pi, n, dtype=F32)) ** 2
        return dsp.highpass(_noise(rng, n), rng.uniform(5000, 8000), sr, 2) * env * 0.5
    if piece == "tambourine":
        n = int(0.25 * sr)
        jingle = _slice(rng, bank, n)[::-1] * F32(rng.uniform(0.5, 1.0))  # reversed: a different tone
        return dsp.highpass(jingle + _noise(rng, n) * 0.5, 6000, sr) * dsp.exp_decay(n, sr, 0.06)
    if piece == "cowbell":
        n = int(0.3 * sr)
        f = rng.uniform(520, 600)
        tone = sum(np.sign(dsp.sine(dsp.phase_from_freq(g, n, sr))) for g in (f, f * 1.48))
        return dsp.bandpass(tone.astype(F32), 400, 3000, sr) * dsp.exp_decay(n, sr, 0.07) * 0.5
    if piece in ("conga", "bongo"):
        n = int(0.25 * sr)
        f = rng.uniform(180, 260) if piece == "conga" else rng.uniform(300, 450)
        t = np.arange(n, dtype=np.float64) / sr
        return dsp.sine(dsp.phase_from_freq(f * (1 + 0.15 * np.exp(-t / 0.01)), n, sr)) * dsp.exp_decay(n, sr, 0.06)
    if piece == "rim":
        n = int(0.06 * sr)
        return (dsp.resonator(_noise(rng, n), rng.uniform(1500, 2500), 12, sr) * 3
                + dsp.sine(dsp.phase_from_freq(rng.uniform(400, 900), n, sr)) * 0.5) * dsp.exp_decay(n, sr, 0.01)
    n = int(0.08 * sr)  # clave / woodblock
    return dsp.sine(dsp.phase_from_freq(rng.uniform(1800, 2600), n, sr)) * dsp.exp_decay(n, sr, 0.015)




class _Bank:
    """A kit-wide metallic oscillator bank, computed on first use (many songs never need it)."""

    def __init__(self, rng: np.random.Generator, sr: int, low: float, high: float):
        self.seed, self.sr, self.base = int(rng.integers(2**62)), sr, float(rng.uniform(low, high))
        self.audio: np.ndarray | None = None

    def get(self) -> np.ndarray:
        if self.audio is None:
            self.audio = _metal(np.random.default_rng(self.seed), int(1.2 * self.sr), self.sr, self.base)
        return self.audio


def make_kit(rng: np.random.Generator, sr: int, kind: str,
             pieces: set[str] | None = None) -> dict[str, list[np.ndarray]]:
    """A drum kit: each piece as two slightly different one-shots (round-robin samples).

    Only `pieces` are rendered (default all); the kit's sound does not depend on which."""
    toms = sorted(rng.uniform(80, 260, size=3), reverse=True)
    open_decay = rng.uniform(0.15, 0.5)
    hats = _Bank(rng, sr, 280, 420)
    cymbals = _Bank(rng, sr, 300, 500)
    builders = {
        "kick": lambda r: _kick(r, sr, kind),
        "snare": (lambda r: _brush(r, sr)) if kind == "brushes" else (lambda r: _snare(r, sr, kind)),
        "clap": lambda r: _clap(r, sr),
        "hat_closed": lambda r: _hat(r, sr, r.uniform(0.015, 0.05), kind, hats.get()),
        "hat_pedal": lambda r: _hat(r, sr, 0.02, kind, hats.get()) * 0.6,
        "hat_open": lambda r: _hat(r, sr, open_decay, kind, hats.get()),
        "ride": lambda r: _cymbal(r, sr, r.uniform(0.6, 1.5), True, cymbals.get()),
        "crash": lambda r: _cymbal(r, sr, r.uniform(0.9, 2.2), False, cymbals.get()),
        "tom_hi": lambda r: _tom(r, sr, toms[0]),
        "tom_mid": lambda r: _tom(r, sr, toms[1]),
        "tom_lo": lambda r: _tom(r, sr, toms[2]),
    }
    for p in PERCUSSION:
        builders[p] = lambda r, p=p: _perc(r, sr, p, hats.get())
    kit: dict[str, list[np.ndarray]] = {}
    room_seed = int(rng.integers(2**62))  # one room for the whole kit
    for piece, build in builders.items():
        seed = int(rng.integers(2**62))  # drawn for every piece, so the kit is the same whatever is used
        if pieces is not None and piece not in pieces:
            continue
        variants = []
        for v in range(2):
            sample = build(np.random.default_rng([seed, v]))
            if kind == "sampled":
                sample = _lofi(sample, sr, seed)
            if kind in ("acoustic", "brushes", "sampled"):
                sample = _room(sample, sr, room_seed)
            peak = float(np.max(np.abs(sample))) or 1.0
            variants.append(dsp.fade(sample / F32(peak), sr, 0.0, 0.01))
        kit[piece] = variants
    return kit


def _room(x: np.ndarray, sr: int, seed: int) -> np.ndarray:
    """The room around a miked kit: a few darker early reflections (5-45 ms) baked into a hit."""
    rng = np.random.default_rng(seed)
    taps = rng.uniform(0.005, 0.045, size=5)
    gains = rng.uniform(0.08, 0.3, size=5) * np.where(rng.random(5) < 0.5, -1.0, 1.0)
    dark = dsp.lowpass(x, rng.uniform(2500, 7000), sr, 1)
    out = np.concatenate([x, np.zeros(int(0.05 * sr), dtype=F32)])
    for tap, gain in zip(taps, gains):
        d = int(tap * sr)
        out[d:d + x.shape[0]] += dark * F32(gain)
    return out


def _lofi(x: np.ndarray, sr: int, seed: int) -> np.ndarray:
    """A sampled-from-vinyl character: band-limited, bit-reduced, a little saturated."""
    rng = np.random.default_rng(seed)
    x = dsp.lowpass(x, rng.uniform(5000, 11000), sr)
    steps = F32(2 ** rng.integers(7, 11))
    return dsp.soft_clip(np.round(x * steps) / steps, 1.5)
