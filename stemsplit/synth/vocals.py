"""The vocals stem: melodies that fit the chords, lyrics, rap and spoken word, and the vocal
arrangement (lead, doubled takes, harmonies, backing "oohs").

Owns what is sung when and by whom; voice.py owns how a syllable sounds. It must not apply
stem-level production (effects.py) nor choose the harmony (compose.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from stemsplit.synth import dsp, phonemes, singer as singers, voice
from stemsplit.synth.compose import Chord, Plan
from stemsplit.synth.phonemes import Syllable
from stemsplit.synth.singer import Singer
from stemsplit.synth.voice import VocalNote

F32 = np.float32
MODES = ("sing", "rap", "spoken")


SCAT = tuple(Syllable((c,), v, ()) for c in ("b", "d", "sh", "w", "d", "b") for v in ("a", "u", "i", "o", "@"))


def _vocabulary(rng: np.random.Generator, speech: bool, scat: bool = False) -> list[Syllable]:
    """A small syllable vocabulary for a whole line, as real lyrics repeat their words (or the
    "doo-bee-dah" syllables of scat singing)."""
    if scat:
        return [SCAT[int(i)] for i in rng.choice(len(SCAT), size=int(rng.integers(5, 12)), replace=False)]
    return [phonemes.random_syllable(rng, speech) for _ in range(int(rng.integers(8, 30)))]


def _lyrics(rng: np.random.Generator, vocab: list[Syllable], count: int) -> list[Syllable]:
    return [vocab[int(rng.integers(len(vocab)))] for _ in range(count)]


def _rhythm(rng: np.random.Generator, plan: Plan, bars: int, slow: bool) -> list[tuple[int, int]]:
    """Onsets and lengths (grid steps) of one sung phrase spanning `bars` bars."""
    total = bars * plan.steps_per_bar
    end = total - int(rng.choice([2, 4, 4, 6, 8]))
    lengths = [4, 4, 8, 2, 6] if slow else [2, 2, 4, 1, 3, 4, 2]
    s = int(rng.choice([0, 0, 2, 4]))
    out = []
    while s < end - 1:
        d = int(rng.choice(lengths))
        d = min(d, end - s)
        out.append((s, d))
        s += d + (int(rng.choice([0, 0, 0, 1, 2])) if not slow else 0)
    if out:
        last_s, last_d = out[-1]
        out[-1] = (last_s, max(last_d, min(total - last_s - 1, int(rng.choice([4, 6, 8])))))
    return out


def _pick(rng: np.random.Generator, pool: list[int], current: int, max_leap: int) -> int:
    near = [p for p in pool if abs(p - current) <= max_leap]
    if not near:
        near = sorted(pool, key=lambda p: abs(p - current))[:2]
    weights = np.array([1.0 / (1 + abs(p - current)) for p in near])
    return int(near[int(rng.choice(len(near), p=weights / weights.sum()))])


def _sings(plan: Plan, bar: int, bars: set[int] | None) -> bool:
    return plan.active("vocals", bar) and (bars is None or bar in bars)


def sung_line(rng: np.random.Generator, plan: Plan, singer: Singer,
              bars: set[int] | None = None) -> list[tuple[VocalNote, Chord]]:
    """A lead melody: phrases of chord tones on strong beats and scale steps between them.

    Only bars in `bars` (default: every bar where vocals are active) get phrases."""
    lo, hi = singer.low + 2, singer.high - 3
    center = (lo + hi) / 2
    slow = plan.bpm > 130 or plan.style == "ballad"
    notes: list[tuple[VocalNote, Chord]] = []
    bar = 0
    current = int(center)
    motif: list[tuple[int, int]] | None = None
    motif_bars = 0
    motif_pitches: list[int] = []
    motif_words: list[Syllable] = []
    vocab = _vocabulary(rng, speech=False, scat=plan.style == "jazz" and rng.random() < 0.35)
    n_bars = len(plan.bars)
    while bar < n_bars:
        sec = plan.section(bar)
        if not _sings(plan, bar, bars):
            bar += 1
            continue
        phrase_bars = int(rng.choice([1, 2, 2])) if plan.steps_per_bar == 16 else int(rng.choice([2, 2, 4]))
        repeat = motif is not None and rng.random() < 0.6  # songs repeat their phrases
        if not repeat:
            motif = _rhythm(rng, plan, phrase_bars, slow)
            motif_bars = phrase_bars
            motif_pitches = []
            motif_words = _lyrics(rng, vocab, len(motif))
        else:
            # A repeat spans the bars its rhythm was written for; a shorter span would let the
            # next phrase start under its last notes (and phrases render out of time order).
            phrase_bars = motif_bars
            if rng.random() < 0.5:
                motif_words = _lyrics(rng, vocab, len(motif))  # same tune, new words
        rhythm, syllables = motif, motif_words
        pitches: list[int] = []
        prev_end: float | None = None
        for k, (step, length) in enumerate(rhythm):
            b = bar + step // plan.steps_per_bar
            if b >= n_bars or not _sings(plan, b, bars):
                break
            s = step % plan.steps_per_bar
            chord = plan.chord_at(b, s)
            strong = s in plan.beat_steps or k == len(rhythm) - 1
            tones = chord.tones_in(lo, hi) if strong else [p for p in range(lo, hi + 1) if plan.in_scale(p)]
            if k < len(motif_pitches) and motif_pitches[k] in tones:
                current = motif_pitches[k]  # the repeated phrase keeps its melody where it fits
            else:
                current = _pick(rng, tones, current, 4 if strong else 2)
                if current > hi - 2 or current < lo + 2:  # drift back towards the middle of the range
                    current = _pick(rng, tones, int(center), 5)
            pitches.append(current)
            start = plan.time(b, s) + float(rng.normal(0, plan.humanize))
            dur = length * plan.step_seconds * rng.uniform(0.8, 0.97)
            legato = prev_end is not None and start - prev_end < 0.06 and rng.random() < 0.5
            syl = syllables[k]
            if legato and rng.random() < 0.5:  # a melisma: the same vowel carried to a new pitch
                syl = Syllable((), notes[-1][0].syllable.vowel, ())
            vel = float(np.clip(rng.normal(0.8, 0.1) * (0.8 + 0.3 * sec.intensity), 0.3, 1.0))
            notes.append((VocalNote(start, dur, float(current), vel, syl, legato), chord))
            prev_end = start + dur
        motif_pitches = pitches
        bar += phrase_bars
        if rng.random() < 0.3:
            bar += 1  # a bar of rest between some phrases
    return notes


def rap_line(rng: np.random.Generator, plan: Plan, singer: Singer, bars: set[int] | None = None) -> list[VocalNote]:
    """Rapped bars: dense sixteenth-note syllables on a speaking pitch with stressed ends."""
    base = singer.low + rng.uniform(3, 8)
    density = rng.uniform(0.45, 0.85)
    triplet = plan.steps_per_bar == 16 and rng.random() < 0.2
    notes: list[VocalNote] = []
    vocab = _vocabulary(rng, speech=True)
    grid = np.arange(0, plan.steps_per_bar, 4 / 3) if triplet else np.arange(plan.steps_per_bar)
    for bar in range(len(plan.bars)):
        if not _sings(plan, bar, bars) or rng.random() < 0.1:
            continue
        steps = [float(s) for s in grid if rng.random() < density or s == 0]
        if rng.random() < 0.4:
            steps = [s for s in steps if s < plan.steps_per_bar - 3]  # breathe at the bar end
        syllables = _lyrics(rng, vocab, len(steps))
        for k, s in enumerate(steps):
            nxt = steps[k + 1] if k + 1 < len(steps) else plan.steps_per_bar
            start = plan.time(bar, s) + float(rng.normal(0, 0.008))
            dur = max((nxt - s) * plan.step_seconds * rng.uniform(0.6, 0.9), 0.06)
            decline = 2.0 * (1 - s / plan.steps_per_bar)
            pitch = base + decline + rng.normal(0, 1.2) + (2.0 if k == len(steps) - 1 else 0.0)
            vel = 1.0 if (k == len(steps) - 1 or s % 4 == 0) else float(rng.uniform(0.55, 0.85))
            notes.append(VocalNote(start, dur, float(pitch), vel, syllables[k]))
    return notes


def spoken_line(rng: np.random.Generator, plan: Plan, singer: Singer, seconds: float) -> list[VocalNote]:
    """Spoken word: free-timed syllables in breath groups with falling intonation."""
    base = singer.low + rng.uniform(2, 7)
    notes: list[VocalNote] = []
    t = plan.offset + rng.uniform(0, 0.5)
    end = seconds
    while t < end:
        bar = int((t - plan.offset) / plan.bar_seconds)
        group = int(rng.integers(4, 14))
        if bar < len(plan.bars) and plan.active("vocals", bar):
            for k in range(group):
                dur = rng.uniform(0.09, 0.26)
                pitch = base + 3.0 * (1 - k / group) + rng.normal(0, 0.8)
                notes.append(VocalNote(t, dur, float(pitch), float(rng.uniform(0.6, 1.0)),
                                       phonemes.random_syllable(rng, True)))
                t += dur + rng.uniform(0.02, 0.08)
        t += rng.uniform(0.3, 1.0)
    return notes


def _harmony(rng: np.random.Generator, lead: list[tuple[VocalNote, Chord]], above: bool,
             singer: Singer) -> list[VocalNote]:
    """A parallel line on the nearest chord tone a third-ish above or below the lead."""
    out = []
    for note, chord in lead:
        p = int(note.pitch)
        cands = chord.tones_in(p + 2, p + 6) if above else chord.tones_in(p - 6, p - 2)
        if not cands:
            continue
        h = int(cands[0] if above else cands[-1])
        out.append(dataclasses.replace(note, pitch=float(h), vel=note.vel * 0.9,
                                       start=note.start + float(rng.normal(0, 0.01))))
    return out


def _double(rng: np.random.Generator, notes: list[VocalNote]) -> list[VocalNote]:
    """A second take of the same line: slightly early/late and slightly off pitch."""
    return [dataclasses.replace(n, start=n.start + float(rng.normal(0, 0.012)),
                                pitch=n.pitch + float(rng.normal(0, 0.08))) for n in notes]


def _backing(rng: np.random.Generator, plan: Plan, singer: Singer, voice_index: int) -> list[VocalNote]:
    """Sustained "oohs"/"aahs" on chord tones, one voice of a small choir, in the loud sections."""
    vowel = str(rng.choice(["u", "a", "o", "U"]))
    lo, hi = singer.low + 3, singer.high - 5
    notes = []
    for bar in range(len(plan.bars)):
        sec = plan.section(bar)
        if not sec.active["vocals"] or sec.intensity < 0.6:
            continue
        for ci, (step, chord) in enumerate(plan.bars[bar]):
            end = plan.bars[bar][ci + 1][0] if ci + 1 < len(plan.bars[bar]) else plan.steps_per_bar
            tones = chord.tones_in(lo, hi)
            if not tones:
                continue
            p = tones[min(voice_index * len(tones) // 3, len(tones) - 1)]
            start = plan.time(bar, step)
            notes.append(VocalNote(start, (end - step) * plan.step_seconds * 0.95, float(p), 0.6,
                                   Syllable((), vowel, ()), legato=ci > 0))
    return notes


def chop_line(rng: np.random.Generator, plan: Plan, singer: Singer) -> list[VocalNote]:
    """A "vocal chop" hook: one short syllable retriggered on a rhythmic grid at chord tones, as
    producers slice a vocal sample into a riff (electronic and pop productions)."""
    onset = str(rng.choice(["y", "w", "h", "d"])) if rng.random() < 0.5 else ""
    syllable = Syllable((onset,) if onset else (), str(rng.choice(["a", "o", "ai", "e", "u", "ou"])), ())
    rate = int(rng.choice([2, 2, 4, 3])) if plan.steps_per_bar == 16 else 2
    grid = [s for s in range(0, plan.steps_per_bar, rate) if rng.random() < 0.6] or [0]
    lo, hi = singer.low + 6, singer.high
    notes = []
    for bar in range(len(plan.bars)):
        sec = plan.section(bar)
        if not sec.active["vocals"] or sec.intensity < 0.5:
            continue
        for s in grid:
            tones = plan.chord_at(bar, s).tones_in(lo, hi)
            if tones:
                dur = rate * plan.step_seconds * rng.uniform(0.4, 0.9)
                notes.append(VocalNote(plan.time(bar, s), dur, float(rng.choice(tones)), 0.9, syllable))
    return notes


def _octave(notes: list[VocalNote], shift: int) -> list[VocalNote]:
    """The same line an octave away (a common pop/hip-hop layering)."""
    return [dataclasses.replace(n, pitch=n.pitch + shift) for n in notes]


def render(rng: np.random.Generator, plan: Plan, sr: int, length: int, mode: str | None = None,
           exclude: frozenset[str] = frozenset(), recorded=None) -> np.ndarray:
    """Render the vocals stem (2, length) before stem-level production.

    `mode` is "sing", "rap" or "spoken"; None draws it from the style (rap-leaning styles may
    also rap the verses and sing the choruses). No singer has a voice type or vocal model in
    `exclude`. `recorded` (a `samples.voices.RecordedVoice`) sings every part of the lead's voice
    type (lead, doubles, octaves, same-type harmonies); other voice types stay synthesized."""
    seconds = length / sr
    if mode is None:
        mode = "rap" if plan.rap else ("spoken" if rng.random() < 0.04 else "sing")
    lead_singer = singers.make_singer(rng, exclude=exclude)
    if plan.style in ("metal", "rock") and rng.random() < 0.4:  # a gritty, shouted rock voice
        lead_singer = dataclasses.replace(lead_singer, rasp=float(rng.uniform(0.2, 0.6)), tilt=lead_singer.tilt + 2.0)
    out = np.zeros((2, length), dtype=F32)

    def add(notes: list[VocalNote], singer: Singer, pan: float, gain: float, speech: bool) -> None:
        breaths = 0.7 if not speech else 0.3
        if recorded is not None and singer.voice_type == lead_singer.voice_type:
            mono = recorded.sing(notes, singer, length, speech=speech, breaths=breaths)
        else:
            mono = voice.sing(notes, singer, sr, length, speech=speech, breaths=breaths)
        out[:] += dsp.to_stereo(mono * F32(gain), pan)

    sung_bars: set[int] | None = None
    if mode == "rap" and rng.random() < 0.4:  # rapped verses, sung hooks
        sung_bars = {b for b in range(len(plan.bars)) if plan.section(b).name in ("chorus", "prechorus")}
    if mode in ("sing", "rap") and (mode == "sing" or sung_bars):
        lead = sung_line(rng, plan, lead_singer, sung_bars)
        lead_notes = [n for n, _ in lead]
        add(lead_notes, lead_singer, float(rng.normal(0, 0.08)), 1.0, False)
        if rng.random() < 0.35:
            twin = dataclasses.replace(lead_singer, seed=int(rng.integers(2**62)))
            width = rng.uniform(0.3, 0.8)
            add(_double(rng, lead_notes), twin, width if rng.random() < 0.5 else -width, rng.uniform(0.4, 0.8), False)
        if rng.random() < 0.12:
            shift = -12 if lead_singer.low >= 52 else 12
            octave_singer = dataclasses.replace(lead_singer, seed=int(rng.integers(2**62)))
            add(_octave(_double(rng, lead_notes), shift), octave_singer, float(rng.normal(0, 0.2)),
                rng.uniform(0.25, 0.5), False)
        if rng.random() < 0.4:
            above = rng.random() < 0.6
            harmony_singer = singers.make_singer(rng, lead_singer.voice_type if rng.random() < 0.6 else None, exclude)
            add(_harmony(rng, lead, above, harmony_singer), harmony_singer, float(rng.uniform(-0.6, 0.6)),
                rng.uniform(0.35, 0.7), False)
        if rng.random() < 0.2:
            for k in range(int(rng.integers(2, 4))):
                choir = singers.make_singer(rng, exclude=exclude)
                add(_backing(rng, plan, choir, k), choir, float(rng.uniform(-0.8, 0.8)), rng.uniform(0.2, 0.4), False)
    if mode == "rap":
        rap_bars = None if sung_bars is None else set(range(len(plan.bars))) - sung_bars
        rapper = lead_singer if sung_bars is None else singers.make_singer(rng, exclude=exclude)
        lead_notes = rap_line(rng, plan, rapper, rap_bars)
        add(lead_notes, rapper, float(rng.normal(0, 0.05)), 1.0, True)
        if rng.random() < 0.3:
            twin = dataclasses.replace(rapper, seed=int(rng.integers(2**62)))
            ends = [n for n in _double(rng, lead_notes) if n.vel >= 1.0]  # ad-lib doubles on stressed ends
            add(ends, twin, float(rng.uniform(-0.7, 0.7)), rng.uniform(0.4, 0.7), True)
    elif mode == "spoken":
        add(spoken_line(rng, plan, lead_singer, seconds), lead_singer, 0.0, 1.0, True)
    if plan.style in ("electronic", "trap", "pop", "hiphop") and rng.random() < 0.2:
        chopper = dataclasses.replace(singers.make_singer(rng, exclude=exclude), autotune=True, vibrato_depth=0.0)
        add(chop_line(rng, plan, chopper), chopper, float(rng.uniform(-0.4, 0.4)), rng.uniform(0.3, 0.7), False)
    return out
