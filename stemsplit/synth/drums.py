"""The drums stem: genre grooves with fills and crashes, played on a kit from kit.py.

Owns the per-style groove writer (rock, pop, funk, hip-hop, electronic, trap, jazz ride, ballad,
reggae one-drop, folk, metal; 3/4 and 6/8 feels), fills, crashes, hi-hat choke, drummer's-view
panning and the placement of hits into a stereo track. It must not synthesize kit pieces
(kit.py), apply stem-level production (effects.py) nor decide song structure (compose.py).
"""
from __future__ import annotations

import numpy as np

from stemsplit.synth import dsp, kit
from stemsplit.synth.compose import Note, Plan, humanize, pick
from stemsplit.synth.kit import KIT_KINDS, PERCUSSION

F32 = np.float32
TOMS = ("tom_hi", "tom_mid", "tom_lo")


# ---- patterns -------------------------------------------------------------------------------

def _groove(rng: np.random.Generator, plan: Plan, intensity: float) -> list[tuple[str, float, float]]:
    """One bar of (piece, step, velocity) for the song's style, meter and a section intensity."""
    steps = plan.steps_per_bar
    style = plan.style
    hits: list[tuple[str, float, float]] = []
    add = hits.append
    if plan.meter != "4/4":
        pulse = [0, 6] if plan.meter == "6/8" else [0, 4, 8]
        add(("kick", 0, 1.0))
        for b in pulse[1:]:
            add(("snare" if plan.meter == "6/8" or rng.random() < 0.5 else "hat_pedal", b, 0.8))
        if rng.random() < 0.4:
            add(("kick", pulse[-1] + (2 if plan.meter == "3/4" else 4), 0.7))
        cym = "ride" if (style == "jazz" or rng.random() < 0.3) else "hat_closed"
        for s in range(0, steps, 2):
            add((cym, s, 0.7 if s in pulse else 0.45))
        return hits
    timekeeper = "ride" if (style == "jazz" or (intensity > 0.75 and rng.random() < 0.35)) else "hat_closed"
    if style == "jazz":
        for s in (0, 4, 6, 8, 12, 14):
            add(("ride", s, 0.8 if s in (4, 12) else 0.6))
        add(("hat_pedal", 4, 0.6))
        add(("hat_pedal", 12, 0.6))
        for s in range(0, 16, 4):
            add(("kick", s, 0.25))
        for s in rng.choice(16, size=int(rng.integers(1, 4)), replace=False):
            add(("snare", float(s), rng.uniform(0.25, 0.55)))
        return hits
    if style in ("electronic",):
        for s in (0, 4, 8, 12):
            add(("kick", s, 1.0))
        for s in (4, 12):
            add(("clap" if rng.random() < 0.7 else "snare", s, 0.9))
        for s in (2, 6, 10, 14):
            add(("hat_open", s, 0.7))
        if intensity > 0.5:
            for s in range(0, 16):
                add(("hat_closed", s, 0.35 + 0.2 * (s % 2 == 0)))
        return hits
    if style == "trap":
        for s in (0, int(rng.choice([6, 7])), 10 + int(rng.integers(2))):
            add(("kick", s, 1.0))
        add(("clap", 8, 0.95))
        s = 0.0
        while s < 16:
            if rng.random() < 0.15:
                roll = float(rng.choice([1 / 3, 0.5, 0.25]))
                for k in range(int(2 / roll)):
                    add(("hat_closed", s + k * roll, 0.4 + 0.3 * k * roll / 2))
                s += 2
            else:
                add(("hat_closed", s, 0.6 if s % 4 == 0 else 0.45))
                s += 2 if rng.random() < 0.6 else 1
        return hits
    if style == "reggae":
        add(("kick", 8, 1.0))
        add(("rim" if rng.random() < 0.6 else "snare", 8, 0.8))
        for s in range(0, 16, 2):
            add(("hat_closed", s, 0.5 if s % 4 else 0.35))
        return hits
    if style == "metal":
        kick_steps = range(0, 16, 1 if intensity > 0.6 else 2)
        for s in kick_steps:
            add(("kick", s, 0.85))
        for s in (4, 12):
            add(("snare", s, 1.0))
        for s in range(0, 16, 4 if intensity > 0.6 else 2):
            add(("crash" if intensity > 0.8 and s % 8 == 0 else timekeeper, s, 0.7))
        return hits
    # rock, pop, funk, hiphop, ballad, folk: backbeat families with style-dependent density
    half_time = style == "ballad" and rng.random() < 0.5
    add(("kick", 0, 1.0))
    kicks = {"rock": [8, 10, 6, 14], "pop": [8, 6, 10, 11], "funk": [3, 6, 10, 11, 14],
             "hiphop": [7, 10, 11, 3, 14], "ballad": [8, 10], "folk": [8, 6]}.get(style, [8])
    if rng.random() < 0.5:  # lock the kick to the song's accent pattern (the bass may follow it too)
        kicks = [s for s in plan.accents if s and s % 8 != 4] or kicks
    n_extra = int(np.clip(rng.normal(1.5 + 1.5 * intensity, 0.8), 0, len(kicks)))
    for s in kicks[:max(n_extra, 1)]:
        add(("kick", s, rng.uniform(0.75, 0.95)))
    back = "clap" if (style in ("pop", "hiphop") and rng.random() < 0.35) else "snare"
    if style == "ballad" and intensity < 0.5 and rng.random() < 0.6:
        back = "rim"
    for s in ((8,) if half_time else (4, 12)):
        add((back, s, 0.95))
    if style in ("funk", "hiphop") or rng.random() < 0.2:
        for s in rng.choice([1, 3, 5, 7, 9, 11, 13, 15, 2, 14], size=int(rng.integers(1, 5)), replace=False):
            add(("snare", float(s), rng.uniform(0.15, 0.32)))  # ghost notes
    density = 1 if (style == "funk" or (intensity > 0.6 and rng.random() < 0.3)) else 2
    if style == "ballad" and intensity < 0.4:
        density = 4
    for s in range(0, 16, density):
        accent = 0.75 if s % 4 == 0 else (0.55 if s % 2 == 0 else 0.38)
        add((timekeeper, s, accent))
    if rng.random() < 0.35:
        open_s = float(rng.choice([6, 14, 10]))
        hits[:] = [h for h in hits if not (h[0] == timekeeper and h[1] == open_s)]
        add(("hat_open", open_s, 0.65))
    if style in ("folk", "pop", "funk") and rng.random() < 0.4:
        perc = str(rng.choice(["shaker", "tambourine", "conga", "cowbell", "bongo", "clave"]))
        for s in range(0, 16, int(rng.choice([1, 2, 4]))):
            if rng.random() < 0.8:
                add((perc, s, rng.uniform(0.3, 0.6)))
    return hits


def _fill(rng: np.random.Generator, plan: Plan) -> tuple[float, list[tuple[str, float, float]]]:
    """A fill over the end of a bar: returns the step where it starts and its hits."""
    steps = plan.steps_per_bar
    length = int(rng.choice([steps // 4, steps // 2, steps // 2, steps])) if steps == 16 else steps // 2
    start = steps - length
    rate = int(rng.choice([1, 2])) if length >= 4 else 1
    seq = []
    kind = rng.integers(3)
    for i, s in enumerate(range(start, steps, rate)):
        frac = i / max(length / rate, 1)
        if kind == 0:
            piece = "snare"
        elif kind == 1:
            piece = TOMS[min(int(frac * 3), 2)]
        else:
            piece = str(rng.choice(["snare", *TOMS]))
        seq.append((piece, float(s), 0.5 + 0.45 * frac))
        if rng.random() < 0.3:
            seq.append(("kick", float(s), 0.6))
    return float(start), seq


def write_part(rng: np.random.Generator, plan: Plan) -> list[Note]:
    """The drum hits of the whole song (drops out where the section says so)."""
    notes: list[Note] = []
    n_bars = len(plan.bars)
    grooves: dict[int, list] = {}
    for bar in range(n_bars):
        sec_i = plan.section_of_bar[bar]
        sec = plan.sections[sec_i]
        if not sec.active["drums"]:
            continue
        if sec_i not in grooves:
            grooves[sec_i] = _groove(rng, plan, sec.intensity)
        hits = list(grooves[sec_i])
        if rng.random() < 0.15:  # small per-bar variations keep loops alive
            hits = _groove(rng, plan, sec.intensity)
        last_of_section = bar == sec.start_bar + sec.bars - 1
        if last_of_section and rng.random() < 0.7:
            start, fill = _fill(rng, plan)
            hits = [h for h in hits if h[1] < start or h[0] in ("kick", "hat_pedal")] + fill
        if bar == sec.start_bar and rng.random() < 0.7 and sec.intensity > 0.4:
            hits.append(("crash", 0.0, 0.85))
            hits.append(("kick", 0.0, 0.9))
        for piece, step, vel in hits:
            t = humanize(rng, plan, plan.time(bar, step), 0.7)
            v = float(np.clip(vel * (0.75 + 0.35 * sec.intensity) * rng.normal(1.0, 0.07), 0.05, 1.0))
            notes.append(Note(start=t, dur=0.0, vel=v, piece=piece))
    notes.sort(key=lambda n: n.start)
    return notes


def _pans(rng: np.random.Generator) -> dict[str, float]:
    """Drummer's-view panning, mirrored half of the time."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    spread = rng.uniform(0.3, 1.0)
    pans = {"kick": 0.0, "snare": 0.05 * side, "clap": 0.0,
            "hat_closed": 0.45 * side, "hat_open": 0.45 * side, "hat_pedal": 0.45 * side,
            "ride": -0.5 * side, "crash": 0.35 * side, "tom_hi": 0.35 * side, "tom_mid": 0.0,
            "tom_lo": -0.45 * side}
    for p in PERCUSSION:  # rim included: played as hand percussion, placed anywhere
        pans[p] = float(rng.uniform(-0.7, 0.7))
    return {k: v * spread for k, v in pans.items()}


def render(rng: np.random.Generator, plan: Plan, sr: int, length: int,
           exclude: frozenset[str] = frozenset(), recorded: dict | None = None) -> np.ndarray:
    """Render the drum stem (2, length) before stem-level production (no kit kind in `exclude`).

    `recorded` is a recorded kit (`samples.hydrogen.load_kit`) to play instead of a synthesized
    one: its velocity layers replace the synthesized hits and their velocity curve."""
    kind = pick(rng, KIT_KINDS[:-1], exclude) or "brushes"  # brushes only where they belong
    if plan.style == "trap" and rng.random() < 0.7 and "808" not in exclude:
        kind = "808"
    if plan.style in ("jazz", "ballad", "folk") and rng.random() < 0.4 and "brushes" not in exclude:
        kind = "brushes"
    end = length / sr
    notes = [n for n in write_part(rng, plan) if -2.6 < n.start < end]  # only hits that can be heard
    if recorded:
        from stemsplit.synth.samples.hydrogen import KitPlayer

        player = KitPlayer(rng, recorded, sr)
        pans = _pans(rng)
        quieter = {"hat_closed": 0.7, "hat_open": 0.7, "ride": 0.6, "crash": 0.6, **{p: 0.6 for p in PERCUSSION}}
        gains = {p: dsp.db(rng.uniform(-2, 2)) * quieter.get(p, 1.0) for p in kit.PIECES}

        def recorded_hit(note) -> tuple[np.ndarray, float] | None:
            hit = player.hit(note.piece, note.vel)
            # A velocity layer already sounds softer; the gain follows velocity as a sampler does.
            return None if hit is None else (hit[0], hit[1] * gains[note.piece] * note.vel)

        return _place(notes, recorded_hit, pans, sr, length)
    pieces = kit.make_kit(rng, sr, kind, {n.piece for n in notes})
    pans = _pans(rng)
    quieter = {"hat_closed": 0.5, "hat_open": 0.5, "ride": 0.45, "crash": 0.5, **{p: 0.5 for p in PERCUSSION}}
    gains = {p: dsp.db(rng.uniform(-3, 3)) * quieter.get(p, 1.0) for p in kit.PIECES}

    def synthesized_hit(note) -> tuple[np.ndarray, float]:
        variants = pieces[note.piece]
        return variants[int(rng.integers(len(variants)))], gains[note.piece] * note.vel ** 1.6

    return _place(notes, synthesized_hit, pans, sr, length)


def _place(notes: list[Note], hit, pans: dict[str, float], sr: int, length: int) -> np.ndarray:
    """Put each note's hit (`hit(note)` -> (mono sample, amplitude) or None) into a stereo track,
    a closed hat choking a ringing open one."""
    out = np.zeros((2, length), dtype=F32)
    hat_times = [n.start for n in notes if n.piece in ("hat_closed", "hat_pedal")]
    for note in notes:
        played = hit(note)
        if played is None:
            continue
        sample, amp = played
        if note.piece == "hat_open":  # a closed hat chokes the ringing open one
            later = [t for t in hat_times if t > note.start + 1e-3]
            if later:
                keep = int((later[0] - note.start) * sr)
                if keep < sample.shape[0]:
                    sample = dsp.fade(sample[:max(keep, 16)].copy(), sr, 0.0, 0.004)
        gl, gr = dsp.pan_gains(pans[note.piece])
        start = int(round(note.start * sr))
        dsp.add_at(out[0], sample * F32(amp * gl), start)
        dsp.add_at(out[1], sample * F32(amp * gr), start)
    return out
