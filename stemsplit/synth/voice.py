"""A singing and speaking voice: source-filter synthesis of syllables on pitches.

Owns the renderer: a band-limited glottal pulse with jitter, shimmer, vibrato, scoops, glides and
drift, plus aspiration noise, shaped by moving formants (frame-wise in the short-time Fourier
domain, or a time-domain resonator cascade), with consonant noise bursts and breaths. The
phonemes live in phonemes.py and the singers in singer.py. It must not write melodies or lyrics
(vocals.py) nor apply stem-level production (effects.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

from stemsplit.synth import dsp
from stemsplit.synth.phonemes import CONSONANTS, DIPHTHONGS, Syllable, vowel_formants
from stemsplit.synth.singer import Singer

F32 = np.float32


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


def _segments(notes: list[VocalNote], speech: bool, rng: np.random.Generator):
    """Timeline of (t0, t1, "V" | "C", phoneme) segments, plus the consonants' noise bursts
    (start, duration, low Hz, high Hz, level, is_plosive)."""
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
    formants = np.tile(vowel_formants("@", singer.formant_scale), (frames, 1))
    target_set = np.zeros(frames, dtype=bool)
    segs, bursts = _segments(notes, speech, rng)

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
                depth = singer.vibrato_depth * (0.1 if singer.autotune else 1.0) * rng.uniform(0.6, 1.3)
                rate = singer.vibrato_rate * rng.uniform(0.9, 1.1)  # no two notes vibrate alike
                p += depth * ramp * np.sin(2 * np.pi * rate * local + rng.random() * 6.3)
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
                formants[s.start:split] = vowel_formants(first, singer.formant_scale)
                formants[split:s.stop] = vowel_formants(second, singer.formant_scale)
            else:
                formants[s] = vowel_formants(vowel, singer.formant_scale)
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
    formants *= np.asarray(singer.accent)  # every vocal tract is shaped a little differently
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
              singer_formant: float, air: float) -> np.ndarray:
    """|H(f)| per frame: a cascade of formant resonances, a spectral tilt and a singer's formant.

    Five resonances alone fall off a cliff above F5, while a real vocal tract keeps having
    formants up there; so above ~3.5 kHz the envelope never drops below a line falling `air`
    dB per octave from its level at 3.5 kHz (the "air" of a voice)."""
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
    knee = int(np.searchsorted(freqs, 3500.0))
    if knee < freqs.shape[0]:
        above = np.log2(freqs[knee:] / freqs[knee])[None, :] * (air * np.log(10) / 20)
        log_h[:, knee:] = np.maximum(log_h[:, knee:], log_h[:, knee:knee + 1] - above)
    return np.exp(log_h).astype(F32)


def _decimated_envelope(formants: np.ndarray, bandwidths: np.ndarray, freqs: np.ndarray, tilt: np.ndarray,
                        singer_formant: float, air: float) -> np.ndarray:
    """The envelope on even frames, odd frames interpolated (controls move slower than a hop)."""
    even = _envelope(formants[::2], bandwidths[::2], freqs, tilt[::2], singer_formant, air)
    frames = formants.shape[0]
    env = np.empty((frames, freqs.shape[0]), dtype=F32)
    env[::2] = even
    odd = env[1::2]
    nxt = even[1:1 + odd.shape[0]]
    odd[: nxt.shape[0]] = (even[: nxt.shape[0]] + nxt) * F32(0.5)
    odd[nxt.shape[0]:] = even[-1]
    return env


def _slice_noise(rng: np.random.Generator, bank: np.ndarray, m: int, skip: int) -> np.ndarray:
    """m samples of filtered noise from a random point past the filter's start-up."""
    if m >= bank.shape[0] - skip:
        return np.resize(bank[skip:], m)
    start = skip + int(rng.integers(bank.shape[0] - skip - m + 1))
    return bank[start:start + m]


def _stft_filter(excitation: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray, tilt: np.ndarray,
                 singer: Singer, sr: int, hop: int) -> np.ndarray:
    """Moving formants applied frame by frame in the short-time Fourier domain (50% overlap)."""
    frames = formants.shape[0]
    win = 2 * hop
    # Frame k is centred on sample k * hop, where the control tracks put frame k.
    padded = np.concatenate([np.zeros(hop, F32), excitation.astype(F32), np.zeros(2 * win, F32)])
    view = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:frames]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(F32)  # sums to 1 at hop win/2
    spec = np.fft.rfft(view * window, axis=-1)
    freqs = np.fft.rfftfreq(win, 1.0 / sr).astype(F32)
    spec *= _decimated_envelope(formants.astype(F32), bandwidths.astype(F32), freqs, tilt, singer.singer_formant,
                                singer.air)
    frames_out = np.fft.irfft(spec, win, axis=-1).astype(F32)
    out = np.zeros((frames + 2) * hop, dtype=F32)
    chunks = out.reshape(-1, hop)
    chunks[:frames] += frames_out[:, :hop]
    chunks[1:frames + 1] += frames_out[:, hop:]
    return out[hop:]


def _cascade_filter(excitation: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray, singer: Singer,
                    sr: int, hop: int) -> np.ndarray:
    """Moving formants as a time-domain cascade of two-pole resonators (a Klatt-style synthesiser).

    Coefficients are updated every control frame with the filter state carried across, so
    this path has different artefacts from the STFT one (a second vocal "model" for variety and
    for held-out evaluation). Two fixed upper resonances keep energy above 5 kHz; a static
    shelf and bell give the singer's tilt and singer's formant.
    """
    block = hop  # one coefficient update per control frame (~12 ms); scipy's per-call cost rules
    n = excitation.shape[0]
    blocks = -(-n // block)
    centres = (np.arange(blocks) * block + block / 2) / hop
    grid = np.arange(formants.shape[0])
    upper_f = np.array([5600.0, 6800.0]) * singer.formant_scale
    freq = np.empty((blocks, 7))
    band = np.empty((blocks, 7))
    for k in range(5):
        freq[:, k] = np.interp(centres, grid, formants[:, k])
        band[:, k] = np.interp(centres, grid, bandwidths[:, k])
    freq[:, 5:] = upper_f
    band[:, 5:] = (500.0, 700.0)
    freq = np.minimum(freq, 0.45 * sr)
    r = np.exp(-np.pi * band / sr)
    a1 = -2.0 * r * np.cos(2.0 * np.pi * freq / sr)
    a2 = r * r
    sos = np.zeros((blocks, 7, 6))
    sos[..., 0] = 1.0 + a1 + a2  # unity gain at DC, as in a cascade formant synthesiser
    sos[..., 3] = 1.0
    sos[..., 4] = a1
    sos[..., 5] = a2
    out = np.empty(n, dtype=np.float64)
    zi = np.zeros((7, 2))
    x = excitation.astype(np.float64)
    for j in range(blocks):
        seg = slice(j * block, min((j + 1) * block, n))
        out[seg], zi = signal.sosfilt(sos[j], x[seg], zi=zi)
    colour = [dsp.shelf_sos(1500.0, 2.0 * singer.tilt, sr, high=True)]
    if singer.singer_formant:
        colour.append(dsp.peaking_sos(3000.0, singer.singer_formant, 2.0, sr))
    return signal.sosfilt(np.concatenate(colour), out).astype(F32)


def sing_phrase(notes: list[VocalNote], singer: Singer, sr: int, speech: bool, rng: np.random.Generator,
                breath: bool, noise_bank: dict[tuple[float, float], np.ndarray]) -> tuple[float, np.ndarray]:
    """Render one phrase; returns (start time in seconds, mono audio).

    `noise_bank` caches one filtered noise per consonant band for the whole line."""
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
    wander = _smooth(rng.standard_normal((frames, 1)), max(int(0.25 / hop_s), 1))[:, 0]
    pitch = pitch + wander * (singer.drift * (0.2 if singer.autotune else 1.0) / (np.std(wander) + 1e-9))
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
    pulse = dsp.wavetable(table, phase)
    if singer.rasp:  # alternate periods louder/softer: the subharmonic roughness of a growl
        pulse *= F32(1.0) + F32(singer.rasp) * (F32(1.0) - F32(2.0) * (np.floor(phase) % 2).astype(F32))
    noise = rng.standard_normal(pos.shape[0]).astype(F32)
    noise *= F32(0.6) + F32(0.4) * np.clip(pulse, 0, None)  # noise gated by the glottal cycle
    excitation = pulse * amp_s + noise * asp_s * F32(0.5)
    bw = np.array([80.0, 100.0, 140.0, 220.0, 300.0]) * singer.bandwidth_scale
    bandwidths = np.tile(bw, (frames, 1)) * (1.0 + 0.5 * (voicing[:, None] < 0.2))
    if singer.model == "klatt":
        out = _cascade_filter(excitation, formants, bandwidths, singer, sr, hop)[:n]
    else:
        tilt = (singer.tilt + 4.0 * (np.clip(voicing, 0, 1) - 0.6)).astype(F32)
        out = _stft_filter(excitation, formants, bandwidths, tilt, singer, sr, hop)[:n]
    # Consonant noise bursts (fricatives, plosive releases) in the time domain, at levels
    # relative to the sung vowels (an "s" sits roughly 10 dB under the vowel around it).
    loud = amp_s[:n] > 0.5 * float(amp_s.max())
    ref = float(np.sqrt(np.mean(out[loud] ** 2))) if loud.any() else 0.05
    for start, dur, lo, hi, level, closure in bursts:
        m = int(dur * sr)
        if m < 8:
            continue
        if (lo, hi) not in noise_bank:  # one filtered noise per consonant band, sliced per burst
            band = dsp.bandpass(rng.standard_normal(int(0.4 * sr)).astype(F32), lo * singer.formant_scale, hi, sr)
            noise_bank[(lo, hi)] = band / F32(np.sqrt(np.mean(band[int(0.05 * sr):] ** 2)) + 1e-9)
        burst = _slice_noise(rng, noise_bank[(lo, hi)], m, int(0.05 * sr))
        env = (dsp.exp_decay(m, sr, 0.005) if closure else np.abs(np.sin(np.linspace(0, np.pi, m, dtype=F32))) ** 0.7)
        gain = level * ref * singer.consonant_gain * rng.uniform(0.6, 1.2)
        dsp.add_at(out, burst * env * F32(gain), int((start - t0) * sr))
    return t0, dsp.fade(out, sr, 0.01, 0.02)


def sing(notes: list[VocalNote], singer: Singer, sr: int, length: int, speech: bool = False,
         breaths: float = 0.6) -> np.ndarray:
    """Render a whole vocal line (mono, `length` samples), phrase by phrase."""
    out = np.zeros(length, dtype=F32)
    notes = [n for n in notes if n.start - 0.5 < length / sr and n.start + n.dur + 0.3 > 0]  # audible ones
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
    noise_bank: dict[tuple[float, float], np.ndarray] = {}
    for phrase in phrases:
        t0, audio = sing_phrase(phrase, singer, sr, speech, rng, rng.random() < breaths, noise_bank)
        dsp.add_at(out, audio, int(round(t0 * sr)))
    return out
