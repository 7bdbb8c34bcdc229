"""A singing and speaking voice: source-filter synthesis of syllables on pitches.

Owns the singer model (voice types from bass to soprano), the phoneme inventory (vowels and
diphthongs with formant targets; fricatives, plosives, nasals, liquids, glides; breaths) and the
renderer: a band-limited glottal pulse with jitter, shimmer, vibrato, scoops and glides, plus
aspiration noise, shaped by moving formants in the short-time Fourier domain, with consonant
noise bursts added in the time domain. It must not write melodies or lyrics (melody.py) nor
apply stem-level production (effects.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from stemsplit.synth import dsp

F32 = np.float32

# Adult male vowel formants (Hz) F1..F3; F4, F5 and bandwidths are filled in below.
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

# Voice types: comfortable MIDI range and formant scale relative to the table above.
VOICE_TYPES: dict[str, tuple[int, int, float]] = {
    "bass": (40, 62, 0.92), "baritone": (45, 66, 0.97), "tenor": (48, 70, 1.02),
    "alto": (53, 74, 1.12), "mezzo": (57, 78, 1.16), "soprano": (60, 82, 1.2),
}


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
    seed: int = 0
    extra: dict = field(default_factory=dict)


def make_singer(rng: np.random.Generator, voice_type: str | None = None) -> Singer:
    """Draw a singer of a given (or random) voice type."""
    vt = voice_type or str(rng.choice(list(VOICE_TYPES)))
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
        falloff=float(rng.uniform(0, 0.5)), whisper=bool(rng.random() < 0.05), seed=int(rng.integers(2**62)),
    )


@dataclass
class VocalNote:
    """One sung (or spoken) syllable: onset time of its vowel, length, pitch and loudness."""

    start: float
    dur: float
    pitch: float
    vel: float
    syllable: Syllable
    legato: bool = False      # glide into this pitch from the previous note


# ---- the renderer ------------------------------------------------------------------------------

def _glottal_table(open_quotient: float, harmonics: int, size: int = 2048) -> np.ndarray:
    """One period of the glottal flow derivative, band-limited to `harmonics` partials."""
    t = np.arange(size) / size
    tp = open_quotient * 0.65
    te = open_quotient
    flow = np.where(t < tp, 0.5 * (1 - np.cos(np.pi * t / tp)),
                    np.where(t < te, np.cos(0.5 * np.pi * (t - tp) / (te - tp)), 0.0))
    deriv = np.diff(flow, append=flow[:1])
    spec = np.fft.rfft(deriv)
    spec[0] = 0.0
    spec[harmonics + 1:] = 0.0
    table = np.fft.irfft(spec, size)
    table /= np.sqrt(np.mean(table ** 2)) + 1e-12
    return np.append(table, table[0]).astype(F32)


def _vowel_formants(v: str, scale: float) -> np.ndarray:
    f1, f2, f3 = VOWELS[v]
    return np.array([f1, f2, f3, 3500.0, 4500.0]) * scale


def _segments(notes: list[VocalNote], singer: Singer, speech: bool, rng: np.random.Generator):
    """Timeline of (t0, t1, kind, payload): vowels, consonants, breaths; plus noise events."""
    segs: list[tuple[float, float, str, object]] = []
    bursts: list[tuple[float, float, float, float, float, bool]] = []
    for i, note in enumerate(notes):
        prev_end = notes[i - 1].start + notes[i - 1].dur if i else -1e9
        onset = [CONSONANTS[c] for c in note.syllable.onset]
        coda = [CONSONANTS[c] for c in note.syllable.coda]
        t = note.start
        room = max(note.start - prev_end, 0.0) + 0.5 * (notes[i - 1].dur if i else 0.2)
        total = sum(c.dur for c in onset)
        squeeze = min(1.0, room / total) if total > 0 else 1.0
        for c_name, c in zip(reversed(note.syllable.onset), reversed(onset)):
            d = c.dur * squeeze * rng.uniform(0.8, 1.2)
            segs.append((t - d, t, "C", c_name))
            if c.noise is not None:
                lo, hi, level = c.noise
                start = t - (0.015 if c.closure else d)
                bursts.append((start, 0.015 if c.closure else d, lo, hi, level, c.closure))
            t -= d
        v_end = note.start + note.dur
        coda_total = sum(c.dur for c in coda) * (0.7 if speech else 1.0)
        vowel_end = max(note.start + 0.5 * note.dur, v_end - coda_total)
        segs.append((note.start, vowel_end, "V", note.syllable.vowel))
        t = vowel_end
        for c_name, c in zip(note.syllable.coda, coda):
            d = (v_end - vowel_end) * c.dur / max(coda_total, 1e-6) * (0.7 if speech else 1.0)
            segs.append((t, t + d, "C", c_name))
            if c.noise is not None:
                lo, hi, level = c.noise
                bursts.append((t + (d - 0.015 if c.closure else 0.0), 0.015 if c.closure else d, lo, hi,
                               level, c.closure))
            t += d
    return segs, bursts


def _frame_tracks(notes: list[VocalNote], singer: Singer, speech: bool, rng: np.random.Generator,
                  t0: float, frames: int, hop_s: float):
    """Control tracks at frame rate: pitch (MIDI), voicing, aspiration, formants, bandwidths."""
    ft = t0 + np.arange(frames) * hop_s
    pitch = np.full(frames, notes[0].pitch, dtype=np.float64)
    voicing = np.zeros(frames)
    aspir = np.zeros(frames)
    formants = np.tile(_vowel_formants("@", singer.formant_scale), (frames, 1))
    target_set = np.zeros(frames, dtype=bool)
    segs, bursts = _segments(notes, singer, speech, rng)

    def idx(a: float, b: float) -> slice:
        return slice(int(np.clip((a - t0) / hop_s, 0, frames)), int(np.clip((b - t0) / hop_s, 0, frames)))

    for i, note in enumerate(notes):
        end = note.start + note.dur
        nxt = notes[i + 1] if i + 1 < len(notes) else None
        s = idx(note.start - 0.2, (nxt.start if nxt else end + 0.3))
        local = ft[s] - note.start
        p = np.full(local.shape, float(note.pitch))
        if speech:
            p += rng.uniform(-1.5, 2.5) * np.exp(-np.maximum(local, 0) / max(note.dur, 0.05)) - 1.0
        else:
            if not note.legato and not singer.autotune and rng.random() < singer.scoop:
                p -= rng.uniform(0.5, 2.0) * np.exp(-np.maximum(local, 0) / rng.uniform(0.03, 0.08))
            if note.dur > 0.3 and singer.vibrato_depth > 0:
                ramp = np.clip((local - 0.15) / 0.3, 0, 1)
                depth = singer.vibrato_depth * (0.1 if singer.autotune else 1.0)
                p += depth * ramp * np.sin(2 * np.pi * singer.vibrato_rate * local + rng.random() * 6.3)
            if nxt is None and note.dur > 0.25 and rng.random() < singer.falloff:
                fall = np.clip((local - note.dur + 0.18) / 0.2, 0, 1) ** 2
                p -= rng.uniform(1.0, 5.0) * fall  # the voice falls off the last note of a phrase
        if note.legato and i > 0:
            glide = 0.012 if singer.autotune else rng.uniform(0.04, 0.12)
            prev = notes[i - 1].pitch
            w = np.clip(local / glide + 0.5, 0, 1)
            w = w * w * (3 - 2 * w)
            p = prev + (p - prev) * w
        pitch[s] = p
        # voicing envelope over the note's vowel with its own attack and release
        v = idx(note.start - 0.03, end + 0.06)
        vl = ft[v] - note.start
        attack = 0.02 if speech else rng.uniform(0.02, 0.07)
        env = np.clip((vl + 0.03) / attack, 0, 1) * np.clip((end + 0.06 - vl - note.start) / 0.08, 0, 1)
        if not speech and note.dur > 0.4:
            env *= 1.0 + rng.uniform(-0.25, 0.2) * np.clip(vl / note.dur, 0, 1)  # swell or fade
        voicing[v] = np.maximum(voicing[v], env * note.vel)
    for a, b, kind, payload in segs:
        s = idx(a, b)
        if kind == "V":
            vowel = str(payload)
            if vowel in DIPHTHONGS:
                first, second = DIPHTHONGS[vowel]
                n = s.stop - s.start
                split = s.start + int(n * rng.uniform(0.55, 0.75))
                formants[s.start:split] = _vowel_formants(first, singer.formant_scale)
                formants[split:s.stop] = _vowel_formants(second, singer.formant_scale)
            else:
                formants[s] = _vowel_formants(vowel, singer.formant_scale)
            target_set[s] = True
        else:
            c = CONSONANTS[str(payload)]
            if c.formants is not None:
                f = np.array([*c.formants, 3500.0, 4500.0]) * singer.formant_scale
                formants[s] = f
                target_set[s] = True
            voicing[s] *= c.voicing
            aspir[s] = np.maximum(aspir[s], c.aspiration)
            if c.closure and c.aspiration > 0:  # aspiration right after the release burst
                after = idx(b, b + 0.04)
                aspir[after] = np.maximum(aspir[after], c.aspiration)
    # Consonants without their own target take the neighbouring vowels' formants.
    if target_set.any():
        known = np.flatnonzero(target_set)
        for k in range(5):
            formants[:, k] = np.interp(np.arange(frames), known, formants[known, k])
    # Coarticulation: formants move smoothly (~40 ms), pitch glides a little, gains de-click.
    formants = _smooth(formants, max(int(0.035 / hop_s), 1))
    voicing = _smooth(voicing[:, None], max(int(0.012 / hop_s), 1))[:, 0]
    aspir = _smooth(aspir[:, None], max(int(0.012 / hop_s), 1))[:, 0]
    pitch = _smooth(pitch[:, None], max(int(0.02 / hop_s), 1))[:, 0]
    return pitch, voicing, aspir, formants, bursts


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving-average smoothing along time for (frames, k) control tracks (edges held)."""
    if width <= 1:
        return x
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    pad = np.pad(x, ((width, width), (0, 0)), mode="edge")
    out = np.stack([np.convolve(pad[:, k], kernel, mode="same") for k in range(x.shape[1])], axis=1)
    return out[width:-width]


def _envelope(formants: np.ndarray, bandwidths: np.ndarray, freqs: np.ndarray, tilt: np.ndarray,
              singer_formant: float) -> np.ndarray:
    """|H(f)| per frame: a cascade of formant resonances, a spectral tilt and a singer's formant."""
    f2 = (freqs * freqs)[None, :, None]
    ff = formants[:, None, :] ** 2
    fb = freqs[None, :, None] * bandwidths[:, None, :]
    den = (ff - f2) ** 2 + fb * fb
    log_h = np.sum(np.log(ff), axis=2) - 0.5 * np.sum(np.log(den), axis=2)
    octave = np.log2(np.maximum(freqs, 80.0) / 500.0)[None, :]
    log_h += (tilt[:, None] * octave) * (np.log(10) / 20)
    log_h += np.log1p((freqs / 4500.0) ** 2)[None, :]  # higher-pole correction (lifts 3-8 kHz)
    if singer_formant:
        log_h += (singer_formant * np.log(10) / 20) * np.exp(-0.5 * ((freqs - 3000.0) / 400.0) ** 2)[None, :]
    return np.exp(log_h).astype(F32)


def sing_phrase(notes: list[VocalNote], singer: Singer, sr: int, speech: bool,
                rng: np.random.Generator, breath: bool) -> tuple[float, np.ndarray]:
    """Render one phrase; returns (start time in seconds, mono audio)."""
    hop = 1 << int(round(np.log2(sr * 0.0116)))
    win = 2 * hop
    pre = 0.45 if breath else 0.25
    t0 = notes[0].start - pre
    t1 = notes[-1].start + notes[-1].dur + 0.2
    n = int((t1 - t0) * sr)
    frames = n // hop + 5
    hop_s = hop / sr
    pitch, voicing, aspir, formants, bursts = _frame_tracks(notes, singer, speech, rng, t0, frames, hop_s)
    if breath:
        b0, b1 = notes[0].start - pre + 0.03, notes[0].start - 0.12
        s = slice(int((b0 - t0) / hop_s), max(int((b1 - t0) / hop_s), int((b0 - t0) / hop_s) + 1))
        ramp = np.sin(np.linspace(0, np.pi, s.stop - s.start)) * rng.uniform(0.15, 0.35)
        aspir[s] = np.maximum(aspir[s], ramp)
    # Sample-rate source: glottal pulses at the pitch track with jitter and shimmer.
    fr_pos = np.arange(frames) * hop
    pos = np.arange(n + win)
    jitter = rng.standard_normal(frames) * singer.jitter * (0.3 if singer.autotune else 1.0)
    shimmer = rng.standard_normal(frames) * singer.shimmer
    f0 = dsp.midi_to_hz(pitch) * (1.0 + jitter)
    # Singers raise F1 above a high pitch so the vowel keeps its power ("formant tuning").
    formants[:, 0] = np.maximum(formants[:, 0], np.minimum(f0 * 1.1, 1000.0))
    # High notes turn breathier (towards falsetto); rasp adds noise; a whisper is all breath.
    aspir = aspir + (0.25 * np.clip((pitch - (singer.high - 3)) / 4, 0, 1) + 0.3 * singer.rasp) * voicing
    if speech and singer.whisper:
        aspir, voicing = aspir + 0.9 * voicing, voicing * 0.05
    f0_s = np.interp(pos, fr_pos, f0)
    amp_s = np.interp(pos, fr_pos, voicing * 10 ** (shimmer / 20)).astype(F32)
    asp_s = np.interp(pos, fr_pos, aspir + singer.breathiness * voicing).astype(F32)
    harmonics = max(int(0.45 * sr / max(float(f0.max()), 50.0)), 1)
    table = _glottal_table(singer.open_quotient, harmonics)
    phase = dsp.phase_from_freq(f0_s, pos.shape[0], sr, rng.random())
    x = (phase % 1.0) * (table.shape[0] - 1)
    i = x.astype(np.int64)
    frac = (x - i).astype(F32)
    pulse = table[i] + (table[i + 1] - table[i]) * frac
    if singer.rasp:  # alternate periods louder/softer: the subharmonic roughness of a growl
        pulse *= F32(1.0) + F32(singer.rasp) * (F32(1.0) - F32(2.0) * (np.floor(phase) % 2).astype(F32))
    noise = rng.standard_normal(pos.shape[0]).astype(F32)
    noise *= F32(0.6) + F32(0.4) * np.clip(pulse, 0, None)  # noise gated by the glottal cycle
    excitation = pulse * amp_s + noise * asp_s * F32(0.5)
    # Moving formants in the STFT domain.
    # Frame k is centred on sample k * hop, where the control tracks put frame k.
    padded = np.concatenate([np.zeros(hop, F32), excitation.astype(F32), np.zeros(2 * win, F32)])
    view = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:frames]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(F32)  # sums to 1 at hop win/2
    spec = np.fft.rfft(view * window, axis=-1)
    freqs = np.fft.rfftfreq(win, 1.0 / sr).astype(F32)
    bw = np.array([80.0, 100.0, 140.0, 220.0, 300.0]) * singer.bandwidth_scale
    bandwidths = (np.tile(bw, (frames, 1)) * (1.0 + 0.5 * (voicing[:, None] < 0.2))).astype(F32)
    tilt = (singer.tilt + 4.0 * (np.clip(voicing, 0, 1) - 0.6)).astype(F32)
    spec *= _envelope(formants.astype(F32), bandwidths, freqs, tilt, singer.singer_formant)
    frames_out = np.fft.irfft(spec, win, axis=-1).astype(F32)
    out = np.zeros((frames + 2) * hop, dtype=F32)
    chunks = out.reshape(-1, hop)
    chunks[:frames] += frames_out[:, :hop]
    chunks[1:frames + 1] += frames_out[:, hop:]
    out = out[hop: hop + n]
    # Consonant noise bursts (fricatives, plosive releases) in the time domain, at levels
    # relative to the sung vowels (an "s" sits roughly 10 dB under the vowel around it).
    loud = amp_s[:n] > 0.5 * float(amp_s.max())
    ref = float(np.sqrt(np.mean(out[loud] ** 2))) if loud.any() else 0.05
    for start, dur, lo, hi, level, closure in bursts:
        m = int(dur * sr)
        if m < 8:
            continue
        burst = dsp.bandpass(rng.standard_normal(m).astype(F32), lo * singer.formant_scale, hi, sr)
        burst /= F32(np.sqrt(np.mean(burst ** 2)) + 1e-9)
        env = (dsp.exp_decay(m, sr, 0.005) if closure else np.abs(np.sin(np.linspace(0, np.pi, m, dtype=F32))) ** 0.7)
        gain = level * ref * singer.consonant_gain * rng.uniform(0.6, 1.2)
        dsp.add_at(out, burst * env * F32(gain), int((start - t0) * sr))
    return t0, dsp.fade(out, sr, 0.01, 0.02)


def sing(notes: list[VocalNote], singer: Singer, sr: int, length: int, speech: bool = False,
         breaths: float = 0.6) -> np.ndarray:
    """Render a whole vocal line (mono, `length` samples), phrase by phrase."""
    out = np.zeros(length, dtype=F32)
    if not notes:
        return out
    rng = np.random.default_rng(singer.seed)
    phrases: list[list[VocalNote]] = [[notes[0]]]
    for note in notes[1:]:
        prev = phrases[-1][-1]
        if note.start - (prev.start + prev.dur) > 0.35:
            phrases.append([note])
        else:
            phrases[-1].append(note)
    for phrase in phrases:
        if phrase[-1].start + phrase[-1].dur < -0.5 or phrase[0].start > length / sr + 0.5:
            continue
        t0, audio = sing_phrase(phrase, singer, sr, speech, rng, breath=rng.random() < breaths)
        dsp.add_at(out, audio, int(round(t0 * sr)))
    return out
