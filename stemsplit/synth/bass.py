"""The bass stem: bass lines that follow the harmony and the bass sounds that play them.

Owns the line writer (roots, root-fifth, octaves, driving eighths, syncopated, walking, funk
sixteenths, arpeggios, pedal) and the bass voices (saw/square/sine/FM synth basses through a
swept low-pass, an 808 with glide, and plucked-string finger/pick/slap/upright basses). It must
not apply stem-level production (effects.py) nor choose chords (compose.py).
"""
from __future__ import annotations

import numpy as np

from stemsplit.synth import dsp
from stemsplit.synth.compose import Chord, Note, Plan, humanize, pick

F32 = np.float32
VOICES = ("saw", "square", "sine", "fm", "808", "finger", "pick", "slap", "upright")
LINES = ("root", "root_fifth", "octave", "eighths", "syncopated", "walking", "funk", "arp", "pedal")

_STYLE_LINES = {
    "rock": ("eighths", "root_fifth", "root", "syncopated"),
    "pop": ("root", "syncopated", "eighths", "octave", "arp"),
    "funk": ("funk", "syncopated", "octave"),
    "hiphop": ("syncopated", "root", "pedal"),
    "electronic": ("octave", "syncopated", "eighths", "pedal"),
    "trap": ("pedal", "syncopated"),
    "jazz": ("walking", "walking", "root_fifth"),
    "ballad": ("root", "root_fifth", "arp"),
    "reggae": ("syncopated", "root_fifth"),
    "folk": ("root_fifth", "root"),
    "metal": ("eighths", "eighths", "root"),
}
_STYLE_VOICES = {
    "rock": ("pick", "finger", "square"), "pop": ("finger", "saw", "sine", "fm", "pick"),
    "funk": ("slap", "finger", "fm"), "hiphop": ("sine", "808", "finger", "fm"),
    "electronic": ("saw", "square", "fm", "sine"), "trap": ("808",),
    "jazz": ("upright", "finger"), "ballad": ("finger", "upright", "sine"),
    "reggae": ("finger", "sine"), "folk": ("upright", "finger", "pick"), "metal": ("pick", "saw"),
}


def _nearest(pc: int, center: float) -> int:
    """The MIDI pitch of pitch class `pc` closest to `center`."""
    base = int(round(center)) - 6
    return base + (pc - base) % 12


def _line_bar(rng: np.random.Generator, plan: Plan, bar: int, kind: str,
              center: float) -> list[tuple[float, float, int, float]]:
    """One bar of (step, length in steps, pitch, velocity)."""
    steps = plan.steps_per_bar
    out: list[tuple[float, float, int, float]] = []

    def chord(step: float) -> Chord:
        return plan.chord_at(bar, step)

    def root(step: float) -> int:
        return _nearest(chord(step).root, center)

    def fifth(step: float) -> int:
        c = chord(step)
        return root(step) + (c.intervals[2] if len(c.intervals) > 2 else 7)

    if kind in ("root", "pedal"):
        ticks = [0] if kind == "pedal" or rng.random() < 0.5 else [0, steps // 2]
        changes = [s for s, _ in plan.bars[bar]]
        ticks = sorted(set(ticks) | set(changes))
        for i, s in enumerate(ticks):
            end = ticks[i + 1] if i + 1 < len(ticks) else steps
            out.append((s, end - s, root(s), 0.9))
    elif kind == "root_fifth":
        beats = plan.beat_steps if plan.meter != "6/8" else [0, 6]
        for i, s in enumerate(beats):
            length = (beats[i + 1] if i + 1 < len(beats) else steps) - s
            out.append((s, length * 0.9, root(s) if i % 2 == 0 else fifth(s) - 12 * (rng.random() < 0.5), 0.85))
    elif kind in ("eighths", "octave"):
        for s in range(0, steps, 2):
            p = root(s)
            if kind == "octave" and (s // 2) % 2 == 1:
                p += 12
            out.append((s, 1.6, p, 0.9 if s % 4 == 0 else 0.75))
    elif kind == "syncopated":
        if rng.random() < 0.6:  # lock to the accents the kick drum may also play
            grid = sorted(set(plan.accents) | {0})
        else:
            grid = [s for s in range(steps) if rng.random() < (0.7 if s % 4 == 0 else 0.25 if s % 2 == 0 else 0.15)]
            grid = sorted(set(grid) | {0})
        for i, s in enumerate(grid):
            nxt = grid[i + 1] if i + 1 < len(grid) else steps
            p = root(s) if rng.random() < 0.75 else fifth(s) - 12 * (rng.random() < 0.5)
            out.append((s, max(nxt - s - 0.3, 0.5), p, 0.95 if s % 4 == 0 else 0.75))
    elif kind == "walking":
        beats = list(range(0, steps, 4)) if plan.meter != "6/8" else [0, 3, 6, 9]
        next_root = _nearest(plan.chord_at(min(bar + 1, len(plan.bars) - 1)).root, center)
        p = root(0)
        for i, s in enumerate(beats):
            if i == 0:
                p = root(s)
            elif i == len(beats) - 1:
                p = next_root + int(rng.choice([-1, 1, -2, 2]))
            else:
                tones = chord(s).tones_in(center - 8, center + 10)
                scale_tones = [t for t in range(int(center) - 8, int(center) + 10) if plan.in_scale(t)]
                pool = tones if rng.random() < 0.6 else scale_tones
                near = [t for t in pool if 0 < abs(t - p) <= 5] or pool
                p = int(rng.choice(near))
            out.append((s, 3.6 if plan.meter != "6/8" else 2.7, p, 0.85 if i % 2 == 0 else 0.75))
    elif kind == "funk":
        for s in range(steps):
            r = rng.random()
            if s % 4 == 0 or r < 0.35:
                p = root(s)
                if rng.random() < 0.2:
                    p += 12
                elif rng.random() < 0.1:
                    p = fifth(s)
                ghost = rng.random() < 0.25 and s % 4 != 0
                out.append((s, 0.6 if ghost else 0.9, p, 0.35 if ghost else 0.9))
    else:  # arp
        rate = 2 if rng.random() < 0.7 else 4
        for i, s in enumerate(range(0, steps, rate)):
            tones = chord(s).tones_in(center - 5, center + 12)
            p = tones[i % len(tones)] if tones else root(s)
            out.append((s, rate * 0.9, p, 0.85 if i % 2 == 0 else 0.7))
    return out


def write_part(rng: np.random.Generator, plan: Plan, kind: str, center: float) -> list[Note]:
    """The bass notes of the whole song."""
    notes: list[Note] = []
    for bar in range(len(plan.bars)):
        sec = plan.section(bar)
        if not sec.active["bass"]:
            continue
        for step, length, pitch, vel in _line_bar(rng, plan, bar, kind, center):
            start = humanize(rng, plan, plan.time(bar, step), 0.6)
            dur = max(length * plan.step_seconds * rng.uniform(0.85, 1.0), 0.05)
            v = float(np.clip(vel * rng.normal(1.0, 0.06) * (0.8 + 0.3 * sec.intensity), 0.1, 1.0))
            notes.append(Note(start=start, dur=dur, pitch=float(pitch), vel=v))
    return notes


# ---- voices ------------------------------------------------------------------------------------

class BassVoice:
    """One bass sound with its per-song parameters; renders a note to a mono array."""

    def __init__(self, rng: np.random.Generator, kind: str, sr: int):
        self.kind = kind
        self.sr = sr
        self.cut_lo = rng.uniform(150, 500)
        self.cut_hi = self.cut_lo * rng.uniform(3, 12)
        self.env_time = rng.uniform(0.04, 0.3)
        self.fm_ratio = float(rng.choice([1.0, 2.0, 0.5, 3.0]))
        self.fm_index = rng.uniform(0.5, 3.0)
        self.decay = rng.uniform(1.0, 4.0)
        self.bright = rng.uniform(0.0, 0.6)
        self.release = rng.uniform(0.02, 0.08)
        self.drive = rng.uniform(1.0, 3.0) if rng.random() < 0.4 else 0.0
        self.glide_time = rng.uniform(0.02, 0.08)
        self.rng = rng

    def note(self, pitch: float, dur: float, vel: float, glide_from: float | None = None) -> np.ndarray:
        """A mono note; synth voices slide in from `glide_from` (MIDI) when given (808 glides)."""
        sr = self.sr
        freq = float(dsp.midi_to_hz(pitch))
        n = int((dur + self.release * 4) * sr)
        if self.kind in ("finger", "pick", "slap", "upright"):
            out = self._string(freq, n, vel)
        else:
            start = float(dsp.midi_to_hz(glide_from)) if glide_from is not None else None
            out = self._synth(freq, n, dur, vel, start)
        env = dsp.adsr(n, sr, 0.003, 10.0, 1.0, self.release, dur)
        out = out * env
        if self.drive:
            out = dsp.soft_clip(out * F32(self.drive), 1.0)
        return dsp.fade(out, sr, 0.001, 0.005)

    def _synth(self, freq: float, n: int, dur: float, vel: float, start_freq: float | None) -> np.ndarray:
        sr = self.sr
        if start_freq is not None:
            t = np.arange(n, dtype=np.float64) / sr
            glide = np.exp(np.log(start_freq / freq) * np.exp(-t / self.glide_time))  # log-frequency slide
            freq_track: np.ndarray | float = freq * glide
        else:
            freq_track = freq
        if self.kind == "808":
            t = np.arange(n, dtype=np.float64) / sr
            f = freq_track * (1.0 + 0.5 * np.exp(-t / 0.03) * (start_freq is None))
            tone = dsp.sine(dsp.phase_from_freq(f, n, sr)) * dsp.exp_decay(n, sr, max(dur, 0.3) * 1.2)
            return dsp.soft_clip(tone * F32(1.5), 1.2)
        phase = dsp.phase_from_freq(freq_track, n, sr)
        if self.kind == "sine":
            tone = dsp.sine(phase) + F32(0.15) * dsp.sine(phase * 2)
            return tone
        if self.kind == "fm":
            mod_env = dsp.exp_decay(n, sr, self.env_time * 2)
            mod = np.sin(2 * np.pi * (phase * self.fm_ratio % 1.0)).astype(F32) * mod_env * F32(self.fm_index)
            return np.sin(2 * np.pi * (phase % 1.0) + mod).astype(F32)
        raw = dsp.saw(phase, freq_track, sr) if self.kind == "saw" else dsp.square(phase, freq_track, sr, 0.5)
        dark = dsp.lowpass(raw, self.cut_lo, sr, 2)
        bright = dsp.lowpass(raw, self.cut_hi * (0.6 + 0.4 * vel), sr, 2)
        sweep = dsp.exp_decay(n, sr, self.env_time)
        return dark + (bright - dark) * sweep

    def _string(self, freq: float, n: int, vel: float) -> np.ndarray:
        sr = self.sr
        period = max(int(sr / freq), 2)
        # Plucking position (a comb) and finger/pick hardness (a low-pass relative to the pitch).
        pluck_pos = {"finger": 0.25, "pick": 0.1, "slap": 0.06, "upright": 0.3}[self.kind]
        hardness = {"finger": 14.0, "pick": 30.0, "slap": 45.0, "upright": 9.0}[self.kind]
        tone = {"finger": 14.0, "pick": 30.0, "slap": 50.0, "upright": 10.0}[self.kind] * (0.7 + 0.6 * self.bright)
        exc = dsp.pluck_excitation(self.rng, period, pluck_pos * self.rng.uniform(0.8, 1.2), 0.1)
        exc = np.tile(exc, 3)
        exc = dsp.lowpass(exc, freq * hardness * (0.6 + 0.8 * vel), sr, 2)[-period:]  # harder = brighter
        decay = {"upright": 0.7, "slap": 1.5}.get(self.kind, self.decay)
        out = dsp.karplus_strong(exc, freq, n, sr, decay, 0.1)
        if self.kind == "slap":
            click_n = min(int(0.008 * sr), n)
            click = dsp.bandpass(self.rng.standard_normal(click_n).astype(F32), 800, 4000, sr)
            out[:click_n] += click * dsp.exp_decay(click_n, sr, 0.002) * F32(0.3)
        if self.kind == "upright":
            out = out + dsp.resonator(out, self.rng.uniform(90, 140), 3, sr) * F32(0.5)
        out = dsp.lowpass(out, min(max(freq * tone, 250.0), 5000.0), sr, 2)
        peak = float(np.max(np.abs(out[: min(n, period * 4)]))) or 1.0
        return out / F32(peak)


def render(rng: np.random.Generator, plan: Plan, sr: int, length: int,
           exclude: frozenset[str] = frozenset()) -> np.ndarray:
    """Render the bass stem (2, length) before stem-level production; `exclude` holds out voices."""
    line = _STYLE_LINES[plan.style]
    kind = str(rng.choice(line)) if rng.random() < 0.85 else str(rng.choice(LINES))
    voices = _STYLE_VOICES[plan.style]
    preferred = pick(rng, voices, exclude) if rng.random() < 0.75 else None
    voice_kind = preferred or pick(rng, VOICES, exclude) or "sine"
    center = rng.uniform(33, 45) if voice_kind != "808" else rng.uniform(30, 38)
    notes = write_part(rng, plan, kind, center)
    voice = BassVoice(rng, voice_kind, sr)
    glides = voice_kind in ("808", "saw", "square", "sine") and rng.random() < (0.6 if voice_kind == "808" else 0.2)
    mono = np.zeros(length, dtype=F32)
    prev: Note | None = None
    for note in [n for n in notes if n.start < length / sr and n.start + n.dur + 0.5 > 0]:
        legato = prev is not None and note.start - (prev.start + prev.dur) < 0.03 and prev.pitch != note.pitch
        glide_from = prev.pitch if (glides and legato and rng.random() < 0.5) else None
        audio = voice.note(note.pitch, note.dur, note.vel, glide_from) * F32(note.vel)
        dsp.add_at(mono, audio, int(round(note.start * sr)))
        prev = note
    return dsp.to_stereo(mono, float(rng.normal(0, 0.05)))
