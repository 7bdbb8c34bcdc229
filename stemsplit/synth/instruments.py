"""The "other" stem: pitched accompaniment instruments and the parts they play.

Owns the instrument voices (piano, electric piano, organ, strings, pad, pluck, brass, lead,
acoustic/clean/distorted guitars, mallets, bells, harp, and flute/sax/violin/accordion solo
voices) with a per-song note cache (a sampler plays the same sample for the same key, and it
keeps rendering fast), and the part writers (sustained chords, rhythmic comping, arpeggios,
guitar strums, power chords, counter-melodies). It must not apply stem-level production
(effects.py) nor choose the harmony (compose.py).
"""
from __future__ import annotations

import numpy as np

from stemsplit.synth import dsp
from stemsplit.synth.compose import Note, Plan, humanize, pick

F32 = np.float32
KINDS = ("piano", "epiano", "organ", "strings", "pad", "pluck", "brass", "lead", "acoustic_guitar",
         "clean_guitar", "dist_guitar", "mallet", "bells", "harp", "flute", "sax", "violin", "accordion")
ROLES = ("chords", "comp", "arp", "strum", "power", "counter")

_KIND_ROLES = {
    "piano": ("chords", "comp", "arp"), "epiano": ("chords", "comp"), "organ": ("chords", "comp"),
    "strings": ("chords", "counter"), "pad": ("chords",), "pluck": ("arp", "comp", "counter"),
    "brass": ("comp", "counter", "chords"), "lead": ("counter", "arp"),
    "acoustic_guitar": ("strum", "arp"), "clean_guitar": ("strum", "comp", "arp"),
    "dist_guitar": ("power", "strum"), "mallet": ("arp", "counter"), "bells": ("arp", "counter"),
    "harp": ("arp",), "flute": ("counter",), "sax": ("counter", "comp"), "violin": ("counter",),
    "accordion": ("chords", "comp"),
}
_STYLE_KINDS = {
    "rock": ("dist_guitar", "clean_guitar", "piano", "organ"),
    "pop": ("piano", "pad", "acoustic_guitar", "pluck", "strings", "clean_guitar", "bells"),
    "funk": ("clean_guitar", "epiano", "brass", "organ", "sax"),
    "hiphop": ("epiano", "piano", "strings", "pluck", "pad", "flute"),
    "electronic": ("pad", "pluck", "lead", "strings", "bells"),
    "trap": ("pluck", "pad", "mallet", "piano", "lead", "bells", "flute"),
    "jazz": ("piano", "epiano", "brass", "clean_guitar", "organ", "sax"),
    "ballad": ("piano", "strings", "pad", "acoustic_guitar", "violin", "harp"),
    "reggae": ("clean_guitar", "organ", "piano", "brass", "sax"),
    "folk": ("acoustic_guitar", "mallet", "strings", "piano", "violin", "accordion", "harp", "flute"),
    "metal": ("dist_guitar", "dist_guitar", "strings", "lead"),
}


class Instrument:
    """One accompaniment voice with per-song timbre parameters and a note cache."""

    def __init__(self, rng: np.random.Generator, kind: str, sr: int):
        self.kind, self.sr, self.rng = kind, sr, rng
        self.cache: dict[tuple[int, int], np.ndarray] = {}
        self.release = {"pad": rng.uniform(0.3, 1.2), "strings": rng.uniform(0.15, 0.5), "organ": 0.03,
                        "brass": 0.08, "lead": 0.06, "flute": 0.08, "sax": 0.06, "violin": 0.12,
                        "accordion": 0.05, "harp": 0.6, "bells": 0.8}.get(kind, rng.uniform(0.05, 0.3))
        self.attack = {"pad": rng.uniform(0.1, 0.8), "strings": rng.uniform(0.05, 0.3),
                       "brass": rng.uniform(0.02, 0.06), "lead": 0.01, "flute": rng.uniform(0.03, 0.08),
                       "sax": rng.uniform(0.01, 0.04), "violin": rng.uniform(0.04, 0.12),
                       "accordion": 0.02}.get(kind, 0.003)
        self.detune = rng.uniform(0.002, 0.012)
        self.cutoff = rng.uniform(1200, 6000)
        self.drawbars = rng.uniform(0, 1, size=9) * (rng.random(9) < 0.6)
        self.drawbars[1] = max(self.drawbars[1], 0.7)
        self.inharm = rng.uniform(0.00005, 0.0004)
        self.hardness = rng.uniform(1.0, 2.2)
        self.fm_index = rng.uniform(0.8, 3.0)
        self.drive = rng.uniform(4, 20)
        self.vibrato = rng.uniform(0.0, 0.25)
        self.pick_hardness = rng.uniform(8, 40)

    def note(self, pitch: float, dur: float, vel: float) -> np.ndarray:
        """A mono note of `dur` seconds plus its release tail, cached per key and length."""
        bucket = int(round(np.log(max(dur, 0.03)) / np.log(1.12)))  # lengths within ~6% share a sample
        key = (int(round(pitch * 4)), bucket)
        if key not in self.cache:
            self.cache[key] = self._render(float(pitch), float(1.12 ** bucket))
        return self.cache[key] * F32(vel ** 1.3)

    def _render(self, pitch: float, dur: float) -> np.ndarray:
        sr, kind = self.sr, self.kind
        freq = float(dsp.midi_to_hz(pitch))
        n = int((dur + self.release * 3 + 0.01) * sr)
        if kind == "piano":
            count = int(np.clip(7000.0 / freq, 4, 16))  # low notes ring with many partials
            out = self._partials(freq, n, [float(k) for k in range(1, count + 1)], decay_base=3.0 * (440 / freq) ** 0.4)
            thump = dsp.lowpass(self.rng.standard_normal(min(n, int(0.02 * sr))).astype(F32), 600, sr)
            out[: thump.shape[0]] += thump * dsp.exp_decay(thump.shape[0], sr, 0.005) * F32(0.3)
        elif kind == "mallet":
            out = self._partials(freq, n, [1.0, 3.93, 9.54], decay_base=0.8 * (440 / freq) ** 0.3, stretch=False)
        elif kind == "epiano":
            ph = dsp.phase_from_freq(freq, n, sr)
            index = dsp.exp_decay(n, sr, 0.4) * F32(self.fm_index)
            out = np.sin(2 * np.pi * (ph % 1.0) + index * np.sin(2 * np.pi * (ph % 1.0))).astype(F32)
            tine = dsp.sine(ph * 14.0) * dsp.exp_decay(n, sr, 0.02) * F32(0.2)
            out = (out + tine) * dsp.exp_decay(n, sr, 1.5 * (440 / freq) ** 0.3)
        elif kind == "organ":
            sub = freq * 0.5  # drawbars 16' ... 1' are harmonics 1..16 of the sub-octave
            drawbars = {k: float(level) for level, k in zip(self.drawbars, (1, 2, 3, 4, 6, 8, 10, 12, 16))
                        if level > 0 and sub * k < 0.45 * sr}
            if self.vibrato > 0.1:  # a touch of rotary-speaker vibrato
                t = np.arange(n, dtype=np.float64) / sr
                ph = dsp.phase_from_freq(sub * (1.0 + 0.003 * np.sin(2 * np.pi * 6.5 * t)), n, sr)
            else:
                ph = dsp.phase_from_freq(sub, n, sr)
            out = dsp.wavetable(dsp.harmonic_table(drawbars), ph)
            out[: int(0.004 * sr)] += self.rng.standard_normal(int(0.004 * sr)).astype(F32) * F32(0.1)
        elif kind == "bells":
            out = self._partials(freq, n, [1.0, 2.76, 5.40, 8.93], decay_base=1.5 * (440 / freq) ** 0.3, stretch=False)
        elif kind == "harp":
            out = self._guitar(freq, n)
        elif kind in ("flute", "sax", "violin", "accordion"):
            out = self._solo(freq, n, np.arange(n, dtype=np.float64) / sr)
        elif kind in ("strings", "pad", "brass", "lead", "pluck"):
            out = self._analog(freq, n, np.arange(n, dtype=np.float64) / sr)
        else:
            out = self._guitar(freq, n)
        env = dsp.adsr(n, sr, self.attack, 10.0, 1.0, self.release, dur)
        out = out * env
        peak = float(np.max(np.abs(out))) or 1.0
        return dsp.fade(out / F32(peak), sr, 0.001, 0.01)

    def _partials(self, freq: float, n: int, ratios: list[float], decay_base: float,
                  stretch: bool = True) -> np.ndarray:
        freqs, taus, amps = [], [], []
        for k, r in enumerate(ratios, start=1):
            f = freq * r * (np.sqrt(1 + self.inharm * r * r) if stretch else 1.0)
            if f > 0.45 * self.sr:
                break
            amp = 1.0 / k ** self.hardness
            tau = decay_base / (1.0 + 0.4 * (k - 1))
            freqs.append(f), taus.append(tau), amps.append(amp)
            if k <= 2:  # a second, slightly detuned string makes the beating of a real piano
                freqs.append(f * (1 + self.detune * 0.1)), taus.append(tau * 1.3), amps.append(amp * 0.5)
        return dsp.decaying_sines(freqs, taus, amps, n, self.sr)

    def _analog(self, freq: float, n: int, t: np.ndarray) -> np.ndarray:
        sr, kind = self.sr, self.kind
        vib = 1.0 + self.vibrato * 0.02 * np.sin(2 * np.pi * 5.5 * t) * np.clip(t / 0.4 - 0.5, 0, 1)
        if kind == "brass":
            vib = vib * (1.0 - 0.01 * np.exp(-t / 0.03))  # a small scoop up into the note
        voices = 3 if kind in ("strings", "pad") else 1
        out = np.zeros(n, dtype=F32)
        for v in range(voices):
            f = freq * (1.0 + self.detune * (v - (voices - 1) / 2)) * vib
            ph = dsp.phase_from_freq(f, n, sr, self.rng.random())
            if kind == "lead" and self.hardness > 1.6:
                out += dsp.square(ph, f, sr, 0.5)
            elif kind == "lead" and self.hardness < 1.3:
                out += dsp.triangle(ph)  # a soft, flute-like synth lead
            else:
                out += dsp.saw(ph, f, sr)
        if kind == "pluck":
            dark = dsp.lowpass(out, 400, sr)
            bright = dsp.lowpass(out, self.cutoff * 1.5, sr)
            return (dark + (bright - dark) * dsp.exp_decay(n, sr, 0.06)) * dsp.exp_decay(n, sr, 0.4)
        if kind == "brass":
            dark = dsp.lowpass(out, 500, sr)
            bright = dsp.lowpass(out, self.cutoff, sr)
            swell = np.clip(t / 0.08, 0, 1).astype(F32)
            return dark + (bright - dark) * swell * F32(0.8)
        cut = {"strings": self.cutoff * 0.7, "pad": self.cutoff * 0.4, "lead": self.cutoff}[kind]
        return dsp.lowpass(out, cut, sr, 2)

    def _solo(self, freq: float, n: int, t: np.ndarray) -> np.ndarray:
        """Wind, bowed and reed solo voices: vibrato, breath/bow noise and body resonances.

        They carry vibrato and formant-like resonances as voices do, which is the point: a
        separator must learn that these belong to "other", not to "vocals"."""
        sr, kind, rng = self.sr, self.kind, self.rng
        ramp = np.clip(t / 0.3 - 0.3, 0, 1)
        depth = {"flute": 0.004, "sax": 0.006, "violin": 0.01, "accordion": 0.0}[kind] * (0.5 + self.vibrato * 4)
        vib = 1.0 + depth * ramp * np.sin(2 * np.pi * rng.uniform(4.8, 6.5) * t + rng.random() * 6.3)
        ph = dsp.phase_from_freq(freq * vib, n, sr, rng.random())
        noise = rng.standard_normal(n).astype(F32)
        if kind == "flute":
            tone = dsp.sine(ph) + F32(0.25) * dsp.sine(ph * 2) + F32(0.06) * dsp.sine(ph * 3)
            return tone + dsp.bandpass(noise, 1500, 8000, sr) * F32(0.08)
        if kind == "sax":
            tone = dsp.lowpass(dsp.square(ph, freq, sr, 0.42), self.cutoff * 0.7, sr)
            body = (dsp.resonator(tone, rng.uniform(400, 700), 2.5, sr)
                    + dsp.resonator(tone, rng.uniform(1200, 1800), 3, sr))
            return tone * F32(0.5) + body + dsp.bandpass(noise, 1000, 5000, sr) * F32(0.03)
        if kind == "violin":
            tone = dsp.saw(ph, freq, sr)
            body = (dsp.resonator(tone, 280, 3, sr) + dsp.resonator(tone, 450, 3, sr) * F32(0.8)
                    + dsp.resonator(tone, 2800, 2, sr) * F32(0.6))
            return dsp.lowpass(tone * F32(0.3) + body, 7000, sr) + dsp.highpass(noise, 3000, sr) * F32(0.02)
        reeds = dsp.square(ph, freq, sr, 0.3) + dsp.square(ph * 1.004, freq * 1.004, sr, 0.3)
        tremolo = 1.0 + 0.15 * np.sin(2 * np.pi * 5.0 * t).astype(F32)
        return dsp.lowpass(reeds, self.cutoff * 0.6, sr) * tremolo.astype(F32)

    def _guitar(self, freq: float, n: int) -> np.ndarray:
        sr, kind = self.sr, self.kind
        period = max(int(sr / freq), 2)
        exc = dsp.pluck_excitation(self.rng, period, self.rng.uniform(0.08, 0.3), 0.15)
        exc = dsp.lowpass(np.tile(exc, 3), freq * self.pick_hardness, sr, 2)[-period:]
        decay = {"acoustic_guitar": 2.5, "clean_guitar": 3.0, "dist_guitar": 4.0, "harp": 3.5}[kind]
        out = dsp.karplus_strong(exc, freq, n, sr, decay, 0.3 if kind in ("acoustic_guitar", "harp") else 0.15)
        if kind == "acoustic_guitar":
            body = dsp.resonator(out, 110, 2, sr) + dsp.resonator(out, 220, 3, sr) * F32(0.6)
            out = out + body * F32(0.4)
        elif kind == "dist_guitar":
            out = out / F32(float(np.max(np.abs(out))) + 1e-9)
            out = dsp.soft_clip(out * F32(self.drive), 1.0)
            out = dsp.lowpass(dsp.highpass(out, 90, sr), self.rng.uniform(2500, 5000), sr, 4)
        return out


# ---- parts --------------------------------------------------------------------------------------

def voicing(chord_pcs: list[int], center: float, size: int) -> list[int]:
    """A close voicing of the chord around `center` (keeps movement between chords small)."""
    pitches = []
    for pc in chord_pcs[:size]:
        base = int(round(center)) - 6
        pitches.append(base + (pc - base) % 12)
    return sorted(pitches)


def _strum_shape(chord_pcs: list[int], root_pc: int) -> list[int]:
    """Six guitar-like strings: root low, then chord tones stacked across two octaves."""
    low = 40 + (root_pc - 40) % 12
    shape = [low]
    p = low
    while len(shape) < 6:
        p += 1
        if p % 12 in chord_pcs:
            shape.append(p)
    return shape


def write_part(rng: np.random.Generator, plan: Plan, role: str, center: float) -> list[Note]:
    """Notes for one accompaniment part over the song."""
    notes: list[Note] = []
    steps = plan.steps_per_bar
    pattern = [s for s in range(steps) if rng.random() < (0.6 if s % 4 == 0 else 0.3 if s % 2 == 0 else 0.12)] or [0]
    if plan.style == "reggae" and role == "comp":
        pattern = [4, 12] if steps == 16 else [4, 8]
    strum_rate = int(rng.choice([1, 2, 2]))
    strum = [(s, "down" if s % 4 == 0 or rng.random() < 0.5 else "up") for s in range(0, steps, strum_rate)
             if s % 4 == 0 or rng.random() < 0.55]
    arp_rate = int(rng.choice([1, 2, 2, 3])) if steps == 12 else int(rng.choice([1, 2, 2, 4]))
    arp_order = str(rng.choice(["up", "down", "updown", "random"]))
    melody_pitch = int(center) + 7
    left_hand = role == "chords" and rng.random() < 0.3  # a low root under the chord, as a pianist plays
    for bar in range(len(plan.bars)):
        sec = plan.section(bar)
        if not sec.active["other"]:
            continue
        vel_scale = 0.7 + 0.35 * sec.intensity
        for ci, (cstep, chord) in enumerate(plan.bars[bar]):
            cend = plan.bars[bar][ci + 1][0] if ci + 1 < len(plan.bars[bar]) else steps
            pcs = chord.pitch_classes()
            if role == "chords":
                t0 = humanize(rng, plan, plan.time(bar, cstep))
                dur = (cend - cstep) * plan.step_seconds
                for k, p in enumerate(voicing(pcs, center, 4)):
                    notes.append(Note(t0 + k * rng.uniform(0, 0.01), dur * 0.98, p, 0.7 * vel_scale))
                if left_hand:
                    notes.append(Note(t0, dur * 0.98, voicing([chord.root], center - 17, 1)[0], 0.65 * vel_scale))
            elif role == "comp":
                for s in [s for s in pattern if cstep <= s < cend]:
                    t0 = humanize(rng, plan, plan.time(bar, s))
                    dur = plan.step_seconds * rng.uniform(0.6, 1.8)
                    for p in voicing(pcs, center, 4):
                        notes.append(Note(t0, dur, p, (0.8 if s % 4 == 0 else 0.6) * vel_scale))
            elif role == "arp":
                tones = sorted(voicing(pcs, center, 4) + [voicing(pcs, center, 4)[0] + 12])
                if arp_order == "down":
                    tones = tones[::-1]
                elif arp_order == "updown":
                    tones = tones + tones[-2:0:-1]
                for i, s in enumerate(range(cstep, cend, arp_rate)):
                    p = tones[i % len(tones)] if arp_order != "random" else int(rng.choice(tones))
                    t0 = humanize(rng, plan, plan.time(bar, s))
                    vel = (0.75 if i % 2 == 0 else 0.6) * vel_scale
                    notes.append(Note(t0, arp_rate * plan.step_seconds * 0.9, p, vel))
            elif role in ("strum", "power"):
                shape = _strum_shape(pcs, chord.root)
                if role == "power":
                    shape = [shape[0], shape[0] + 7, shape[0] + 12]
                hits = strum if role == "strum" else [(s, "down") for s in range(0, steps, 2)]
                for s, direction in [h for h in hits if cstep <= h[0] < cend]:
                    t0 = humanize(rng, plan, plan.time(bar, s))
                    strings = shape if direction == "down" else shape[::-1][: int(rng.integers(3, 6))]
                    spread = rng.uniform(0.006, 0.02) if role == "strum" else 0.003
                    dur = plan.step_seconds * (2.0 if role == "strum" else 1.7)
                    v = (0.85 if direction == "down" else 0.55) * vel_scale
                    for k, p in enumerate(strings):
                        notes.append(Note(t0 + k * spread, dur, p, v * rng.uniform(0.8, 1.0)))
            else:  # counter-melody: a slow line of chord and scale tones above the chords
                for s in range(cstep, cend, int(rng.choice([2, 4, 4, 8]))):
                    if rng.random() < 0.3:
                        continue
                    tones = chord.tones_in(center + 2, center + 16) if s % 4 == 0 else \
                        [p for p in range(int(center) + 2, int(center) + 17) if plan.in_scale(p)]
                    near = [p for p in tones if abs(p - melody_pitch) <= 4] or tones
                    melody_pitch = int(rng.choice(near))
                    t0 = humanize(rng, plan, plan.time(bar, s))
                    notes.append(Note(t0, plan.step_seconds * rng.uniform(1.5, 4.0), melody_pitch, 0.7 * vel_scale))
    return notes


def render(rng: np.random.Generator, plan: Plan, sr: int, length: int,
           exclude: frozenset[str] = frozenset()) -> np.ndarray:
    """Render the other stem (2, length): one to three instruments, each panned (none of `exclude`)."""
    out = np.zeros((2, length), dtype=F32)
    count = int(rng.choice([1, 2, 2, 3]))
    pool = _STYLE_KINDS[plan.style]
    used: set[tuple[str, str]] = set()
    for i in range(count):
        preferred = pick(rng, pool, exclude) if rng.random() < 0.8 else None
        kind = preferred or pick(rng, KINDS, exclude) or "piano"
        role = str(rng.choice(_KIND_ROLES[kind]))
        if (kind, role) in used:
            continue
        used.add((kind, role))
        center = rng.uniform(55, 68) if role != "counter" else rng.uniform(62, 74)
        notes = write_part(rng, plan, role, center)
        inst = Instrument(rng, kind, sr)
        mono = np.zeros(length, dtype=F32)
        audible = [n for n in notes if n.start < length / sr and n.start + n.dur + 4 * inst.release > 0]
        for note in audible:
            dsp.add_at(mono, inst.note(note.pitch, note.dur, note.vel), int(round(note.start * sr)))
        level = dsp.db(rng.uniform(-6, 0)) * (0.6 if role == "chords" else 1.0)
        pan = float(rng.uniform(-0.6, 0.6)) if i > 0 or rng.random() < 0.5 else 0.0
        out += dsp.to_stereo(mono * F32(level), pan)
    return out
