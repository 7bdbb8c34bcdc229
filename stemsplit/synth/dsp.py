"""Signal building blocks shared by every synthetic instrument: oscillators, envelopes, filters.

Owns small, vectorised numpy primitives (band-limited oscillators, ADSR envelopes, biquad
designs, a Karplus-Strong string, placing a note into a track). It must not know about songs,
stems or randomness policy: callers pass explicit parameters (and a Generator where noise is
needed), so every primitive is deterministic given its arguments.
"""
from __future__ import annotations

import numpy as np
from scipy import signal

F32 = np.float32


def midi_to_hz(midi: float | np.ndarray) -> float | np.ndarray:
    """Equal temperament, A4 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def hz_to_midi(hz: float | np.ndarray) -> float | np.ndarray:
    """The inverse of `midi_to_hz` (fractional MIDI pitch)."""
    return 69.0 + 12.0 * np.log2(np.asarray(hz, dtype=np.float64) / 440.0)


def db(value: float) -> float:
    """Decibels to linear amplitude."""
    return float(10.0 ** (value / 20.0))


def phase_from_freq(freq: np.ndarray | float, n: int, sr: int, start: float = 0.0) -> np.ndarray:
    """Running phase in cycles (float64 so long notes keep their tuning) for a frequency track."""
    if np.ndim(freq) == 0:
        return start + np.arange(n, dtype=np.float64) * (float(freq) / sr)
    inc = np.asarray(freq, dtype=np.float64) / sr
    phase = np.cumsum(inc)
    phase -= inc[0]
    return phase + start


def _poly_blep(t: np.ndarray, dt: np.ndarray | float) -> np.ndarray:
    """PolyBLEP residual that removes most aliasing from a unit step at phase 0."""
    out = np.zeros_like(t)
    dt = np.broadcast_to(np.asarray(dt, dtype=t.dtype), t.shape)
    lo = t < dt
    x = t[lo] / dt[lo]
    out[lo] = x + x - x * x - 1.0
    hi = t > 1.0 - dt
    x = (t[hi] - 1.0) / dt[hi]
    out[hi] = x * x + x + x + 1.0
    return out


def saw(phase: np.ndarray, freq: np.ndarray | float, sr: int) -> np.ndarray:
    """Band-limited (PolyBLEP) sawtooth in [-1, 1] from a running phase."""
    t = (phase % 1.0).astype(F32)
    dt = np.minimum(np.asarray(freq, dtype=F32) / sr, 0.5)
    return (2.0 * t - 1.0 - _poly_blep(t, dt)).astype(F32)


def square(phase: np.ndarray, freq: np.ndarray | float, sr: int, width: float = 0.5) -> np.ndarray:
    """Band-limited pulse wave with the given duty cycle."""
    t = (phase % 1.0).astype(F32)
    dt = np.minimum(np.asarray(freq, dtype=F32) / sr, 0.5)
    out = np.where(t < width, 1.0, -1.0).astype(F32)
    out += _poly_blep(t, dt)
    out -= _poly_blep(((t - width) % 1.0).astype(F32), dt)
    return out


def sine(phase: np.ndarray) -> np.ndarray:
    """Sine from a running phase in cycles."""
    return np.sin(((phase % 1.0) * (2.0 * np.pi)).astype(F32))


def triangle(phase: np.ndarray) -> np.ndarray:
    """Naive triangle (its harmonics fall fast enough that aliasing is negligible)."""
    t = (phase % 1.0).astype(F32)
    return (4.0 * np.abs(t - 0.5) - 1.0).astype(F32)


def decaying_sines(freqs: list[float], taus: list[float], amps: list[float], n: int, sr: int) -> np.ndarray:
    """Sum of A sin(2 pi f t) exp(-t / tau): each partial is the impulse response of a two-pole
    resonator, one C-level recursion per partial instead of computing phases, sines and decays."""
    impulse = np.zeros(n, dtype=np.float64)
    impulse[0] = 1.0
    out = np.zeros(n, dtype=np.float64)
    for f, tau, amp in zip(freqs, taus, amps):
        w = 2.0 * np.pi * f / sr
        r = np.exp(-1.0 / (max(tau, 1e-4) * sr))
        out += signal.lfilter([0.0, amp * r * np.sin(w)], [1.0, -2.0 * r * np.cos(w), r * r], impulse)
    return out.astype(F32)


def wavetable(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Read one stored period (with its first sample repeated at the end) at a running phase,
    interpolating linearly: a static spectrum costs the same whatever its number of partials."""
    x = (phase % 1.0) * (table.shape[0] - 1)
    i = x.astype(np.int64)
    frac = (x - i).astype(F32)
    return table[i] + (table[i + 1] - table[i]) * frac


def harmonic_table(amps: dict[int, float], size: int = 2048) -> np.ndarray:
    """One period of a sum of harmonics {k: amplitude}, ready for `wavetable`."""
    x = np.arange(size + 1) / size
    return sum(a * np.sin(2 * np.pi * k * x) for k, a in amps.items()).astype(F32)


def adsr(n: int, sr: int, attack: float, decay: float, sustain: float, release: float,
         gate: float) -> np.ndarray:
    """Linear-attack, exponential-decay/release envelope over n samples; the note is held for `gate` s."""
    t = np.arange(n, dtype=F32) / sr
    a = max(attack, 1e-4)
    env = np.empty(n, dtype=F32)
    rising = t < a
    env[rising] = t[rising] / a
    held = ~rising
    d = max(decay, 1e-4)
    env[held] = sustain + (1.0 - sustain) * np.exp(-(t[held] - a) / d)
    gate_i = int(gate * sr)
    if gate_i < n:
        level = env[max(gate_i - 1, 0)] if gate_i > 0 else 0.0
        r = max(release, 1e-4)
        env[gate_i:] = level * np.exp(-(t[gate_i:] - t[gate_i]) / r)
    return env


def exp_decay(n: int, sr: int, tau: float) -> np.ndarray:
    """exp(-t / tau) over n samples."""
    return np.exp(-np.arange(n, dtype=F32) / F32(sr * max(tau, 1e-5))).astype(F32)


def fade(x: np.ndarray, sr: int, fade_in: float = 0.002, fade_out: float = 0.005) -> np.ndarray:
    """Short raised-cosine fades at both ends so clipped notes never click."""
    n = x.shape[-1]
    a = min(int(fade_in * sr), n // 2)
    b = min(int(fade_out * sr), n // 2)
    if a > 1:
        x[..., :a] *= (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, a, dtype=F32)))
    if b > 1:
        x[..., n - b:] *= (0.5 + 0.5 * np.cos(np.linspace(0, np.pi, b, dtype=F32)))
    return x


# ---- filters (second-order sections; scipy does the per-sample work in C) ----------------------

def _clip_freq(freq: float, sr: int) -> float:
    return float(min(max(freq, 10.0), 0.45 * sr))


def _rbj(freq: float, q: float, sr: int, high: bool) -> np.ndarray:
    """RBJ low/high-pass biquad as one second-order section (cheaper to design than scipy's)."""
    w = 2.0 * np.pi * _clip_freq(freq, sr) / sr
    cw, alpha = np.cos(w), np.sin(w) / (2.0 * q)
    a0 = 1.0 + alpha
    if high:
        b = ((1 + cw) / 2, -(1 + cw), (1 + cw) / 2)
    else:
        b = ((1 - cw) / 2, 1 - cw, (1 - cw) / 2)
    return np.array([[b[0] / a0, b[1] / a0, b[2] / a0, 1.0, -2 * cw / a0, (1 - alpha) / a0]])


# Butterworth section Qs for orders 2 and 4 (order 1 is a one-pole).
_BUTTER_Q = {2: (0.7071,), 4: (0.5412, 1.3066)}


def butter_sos(freq: float, sr: int, order: int, high: bool) -> np.ndarray:
    """Butterworth low/high-pass of order 1, 2 or 4 as second-order sections."""
    if order == 1:
        k = np.tan(np.pi * _clip_freq(freq, sr) / sr)
        a1 = (k - 1) / (k + 1)
        b = (1 / (1 + k), -1 / (1 + k)) if high else (k / (1 + k), k / (1 + k))
        return np.array([[b[0], b[1], 0.0, 1.0, a1, 0.0]])
    return np.concatenate([_rbj(freq, q, sr, high) for q in _BUTTER_Q[order]])


def lowpass(x: np.ndarray, freq: float, sr: int, order: int = 2) -> np.ndarray:
    """Butterworth low-pass along the last axis."""
    return signal.sosfilt(butter_sos(freq, sr, order, False), x, axis=-1).astype(F32)


def highpass(x: np.ndarray, freq: float, sr: int, order: int = 2) -> np.ndarray:
    """Butterworth high-pass along the last axis."""
    return signal.sosfilt(butter_sos(freq, sr, order, True), x, axis=-1).astype(F32)


def bandpass(x: np.ndarray, low: float, high: float, sr: int, order: int = 2) -> np.ndarray:
    """Band-pass as a high-pass at `low` cascaded with a low-pass at `high`."""
    sos = np.concatenate([butter_sos(low, sr, order, True), butter_sos(max(high, low * 1.05), sr, order, False)])
    return signal.sosfilt(sos, x, axis=-1).astype(F32)


def peaking_sos(freq: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """RBJ peaking-EQ biquad as one second-order section."""
    a = 10.0 ** (gain_db / 40.0)
    w = 2.0 * np.pi * _clip_freq(freq, sr) / sr
    alpha = np.sin(w) / (2.0 * q)
    b0, b1, b2 = 1 + alpha * a, -2 * np.cos(w), 1 - alpha * a
    a0, a1, a2 = 1 + alpha / a, -2 * np.cos(w), 1 - alpha / a
    return np.array([[b0 / a0, b1 / a0, b2 / a0, 1.0, a1 / a0, a2 / a0]])


def shelf_sos(freq: float, gain_db: float, sr: int, high: bool) -> np.ndarray:
    """RBJ shelving biquad (slope 1) as one second-order section."""
    a = 10.0 ** (gain_db / 40.0)
    w = 2.0 * np.pi * _clip_freq(freq, sr) / sr
    cw, alpha = np.cos(w), np.sin(w) / 2.0 * np.sqrt(2.0)
    sa = 2.0 * np.sqrt(a) * alpha
    if high:
        b0 = a * ((a + 1) + (a - 1) * cw + sa)
        b1 = -2 * a * ((a - 1) + (a + 1) * cw)
        b2 = a * ((a + 1) + (a - 1) * cw - sa)
        a0 = (a + 1) - (a - 1) * cw + sa
        a1 = 2 * ((a - 1) - (a + 1) * cw)
        a2 = (a + 1) - (a - 1) * cw - sa
    else:
        b0 = a * ((a + 1) - (a - 1) * cw + sa)
        b1 = 2 * a * ((a - 1) - (a + 1) * cw)
        b2 = a * ((a + 1) - (a - 1) * cw - sa)
        a0 = (a + 1) + (a - 1) * cw + sa
        a1 = -2 * ((a - 1) + (a + 1) * cw)
        a2 = (a + 1) + (a - 1) * cw - sa
    return np.array([[b0 / a0, b1 / a0, b2 / a0, 1.0, a1 / a0, a2 / a0]])


def resonator(x: np.ndarray, freq: float, q: float, sr: int) -> np.ndarray:
    """Constant-peak band-pass resonance (a struck body mode, a formant-like bump)."""
    b, a = signal.iirpeak(_clip_freq(freq, sr), max(q, 0.3), fs=sr)
    return signal.lfilter(b, a, x, axis=-1).astype(F32)


# ---- physical models ---------------------------------------------------------------------------

def karplus_strong(excitation: np.ndarray, freq: float, n: int, sr: int, decay: float,
                   brightness: float) -> np.ndarray:
    """Plucked string: a delay line of one period with a damped averaging loop filter.

    Vectorised one period at a time (each period only depends on the previous one), so the cost
    is a few numpy calls per period instead of a Python loop per sample. `decay` is the -60 dB
    time in seconds; `brightness` in (0, 1] blends the averaging filter with a pure delay.
    """
    period = max(int(round(sr / freq)), 2)
    loops = n // period + 2
    # Loop gain per period so that amplitude falls 60 dB after `decay` seconds.
    g = F32(10.0 ** (-3.0 / max(decay * freq, 1e-3)))
    b = F32(min(max(brightness, 0.0), 1.0))
    out = np.zeros(loops * period, dtype=F32)
    exc = np.zeros(period, dtype=F32)
    m = min(len(excitation), period)
    exc[:m] = excitation[:m]
    out[:period] = exc
    prev = exc
    for k in range(1, loops):
        shifted = np.empty(period, dtype=F32)
        shifted[0] = out[(k - 1) * period - 1] if k > 1 else 0.0
        shifted[1:] = prev[:-1]
        cur = g * (b * prev + (1.0 - b) * 0.5 * (prev + shifted))
        out[k * period:(k + 1) * period] = cur
        prev = cur
    return out[:n]


def pluck_excitation(rng: np.random.Generator, period: int, position: float, noise: float) -> np.ndarray:
    """Initial string velocity for a pluck at `position` (0..1 along the string).

    The string's shape is a triangle peaking at the plucking point (harmonics falling as 1/k^2
    with notches set by the position); pickups and bodies respond to velocity, one derivative
    up, so the excitation is the triangle's circular difference (harmonics as 1/k). A little
    noise adds the finger/pick scrape. Mean removed (no DC in the loop).
    """
    x = np.arange(period, dtype=F32) / F32(period)
    p = F32(min(max(position, 0.02), 0.98))
    shape = np.where(x < p, x / p, (1.0 - x) / (1.0 - p)).astype(F32)
    velocity = (shape - np.roll(shape, 1)) * F32(period / 4)
    velocity += rng.uniform(-noise, noise, period).astype(F32)
    return velocity - velocity.mean()


def add_at(track: np.ndarray, sound: np.ndarray, start: int) -> None:
    """Mix `sound` (..., n) into `track` (..., T) at sample `start`, clipping to the track."""
    total = track.shape[-1]
    if start >= total or start + sound.shape[-1] <= 0:
        return
    s0 = max(start, 0)
    off = s0 - start
    s1 = min(start + sound.shape[-1], total)
    track[..., s0:s1] += sound[..., off:off + s1 - s0]


def pan_gains(pan: float) -> tuple[float, float]:
    """Constant-power left/right gains for pan in [-1, 1]."""
    angle = (min(max(pan, -1.0), 1.0) + 1.0) * np.pi / 4.0
    return float(np.cos(angle)), float(np.sin(angle))


def to_stereo(mono: np.ndarray, pan: float) -> np.ndarray:
    """Place a mono signal in the stereo field."""
    gl, gr = pan_gains(pan)
    return np.stack([mono * F32(gl), mono * F32(gr)])


def soft_clip(x: np.ndarray, drive: float) -> np.ndarray:
    """tanh saturation with unity small-signal gain."""
    d = F32(max(drive, 1e-3))
    return (np.tanh(x * d) / d).astype(F32)
