"""The song plan: style, tempo, meter, key, chord progressions, sections and the timing grid.

Owns every musical decision shared by all stems (what chord sounds in which bar, which stems
play in which section, where a grid step falls in seconds after swing). It must not render audio
and must not decide parts (drum patterns, bass lines, melodies live in their own modules).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STEMS = ("drums", "bass", "other", "vocals")

# Style families. `bpm` is in quarter notes; `meters` weights 4/4, 3/4, 6/8; `swing` is the
# largest swing amount; `rap` the chance that a song's vocals are rapped.
STYLES: dict[str, dict] = {
    "rock": dict(bpm=(90, 160), meters=(0.85, 0.05, 0.10), swing=0.08, rap=0.0, sevenths=0.05),
    "pop": dict(bpm=(80, 130), meters=(0.85, 0.07, 0.08), swing=0.1, rap=0.1, sevenths=0.2),
    "funk": dict(bpm=(90, 125), meters=(1.0, 0.0, 0.0), swing=0.2, rap=0.15, sevenths=0.7),
    "hiphop": dict(bpm=(70, 100), meters=(1.0, 0.0, 0.0), swing=0.33, rap=0.75, sevenths=0.5),
    "electronic": dict(bpm=(115, 150), meters=(1.0, 0.0, 0.0), swing=0.05, rap=0.1, sevenths=0.25),
    "trap": dict(bpm=(130, 170), meters=(1.0, 0.0, 0.0), swing=0.0, rap=0.7, sevenths=0.3),
    "jazz": dict(bpm=(90, 180), meters=(0.75, 0.25, 0.0), swing=0.33, rap=0.0, sevenths=1.0),
    "ballad": dict(bpm=(60, 85), meters=(0.6, 0.2, 0.2), swing=0.05, rap=0.0, sevenths=0.3),
    "reggae": dict(bpm=(70, 95), meters=(1.0, 0.0, 0.0), swing=0.15, rap=0.2, sevenths=0.2),
    "folk": dict(bpm=(80, 140), meters=(0.4, 0.3, 0.3), swing=0.1, rap=0.0, sevenths=0.1),
    "metal": dict(bpm=(100, 180), meters=(0.9, 0.0, 0.1), swing=0.0, rap=0.05, sevenths=0.0),
}

METERS = (("4/4", 4, 16), ("3/4", 3, 12), ("6/8", 3, 12))  # name, quarter notes per bar, grid steps

MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
}

# Progressions as scale degrees (0 = tonic); one chord per entry, one or two entries per bar.
PROGRESSIONS: dict[str, list[tuple[int, ...]]] = {
    "major": [(0, 4, 5, 3), (0, 3, 4, 3), (5, 3, 0, 4), (0, 5, 3, 4), (1, 4, 0, 0), (0, 2, 3, 4),
              (0, 3, 0, 4), (3, 4, 2, 5), (0, 0, 3, 3), (0, 4, 3, 3), (3, 0, 4, 5), (0, 5, 1, 4)],
    "minor": [(0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4), (0, 0, 5, 6),
              (5, 6, 0, 0), (0, 2, 3, 5)],
    "dorian": [(0, 3, 0, 3), (0, 1, 0, 6), (0, 6, 3, 0)],
    "mixolydian": [(0, 6, 3, 0), (0, 3, 6, 3), (0, 4, 6, 3)],
    "harmonic_minor": [(0, 3, 4, 0), (0, 5, 1, 4), (0, 6, 5, 4)],
}

SECTION_SHAPES = (
    ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
    ("intro", "verse", "prechorus", "chorus", "break", "verse", "chorus", "chorus"),
    ("verse", "chorus", "verse", "chorus", "break", "chorus"),
    ("intro", "verse", "verse", "chorus", "bridge", "chorus", "outro"),
    ("verse", "verse", "break", "verse", "chorus"),
)


@dataclass(frozen=True)
class Chord:
    """A chord: absolute root pitch class and intervals in semitones above it."""

    root: int
    intervals: tuple[int, ...]

    def pitch_classes(self) -> list[int]:
        return [(self.root + i) % 12 for i in self.intervals]

    def tones_in(self, low: float, high: float) -> list[int]:
        """Every MIDI pitch of this chord within [low, high]."""
        pcs = set(self.pitch_classes())
        return [p for p in range(int(np.ceil(low)), int(high) + 1) if p % 12 in pcs]


@dataclass
class Section:
    """A run of bars with one role; `active` says which stems play in it."""

    name: str
    start_bar: int
    bars: int
    active: dict[str, bool]
    intensity: float


@dataclass
class Note:
    """A timed event. For pitched parts `pitch` is MIDI; drums carry `piece` instead."""

    start: float
    dur: float
    pitch: float = 0.0
    vel: float = 0.8
    piece: str = ""


@dataclass
class Plan:
    """Everything the part writers need to agree on."""

    style: str
    bpm: float
    meter: str
    quarters_per_bar: int
    steps_per_bar: int
    swing: float
    swing_unit: int
    key: int
    mode: str
    scale: tuple[int, ...]
    bars: list[list[tuple[int, Chord]]]
    sections: list[Section]
    offset: float             # seconds of bar 0 relative to the start of the rendered buffer
    humanize: float
    rap: bool
    accents: tuple[int, ...] = ()   # syncopated grid steps the kick drum and the bass lock to
    section_of_bar: list[int] = field(default_factory=list)

    @property
    def bar_seconds(self) -> float:
        return self.quarters_per_bar * 60.0 / self.bpm

    @property
    def step_seconds(self) -> float:
        return self.bar_seconds / self.steps_per_bar

    @property
    def beat_steps(self) -> list[int]:
        """Grid steps of the felt beats (quarters; dotted quarters in 6/8)."""
        if self.meter == "6/8":
            return [0, 6]
        return list(range(0, self.steps_per_bar, 4))

    def time(self, bar: int, step: float) -> float:
        """Seconds (relative to the rendered output) of a grid position, after swing."""
        t = self.offset + bar * self.bar_seconds + step * self.step_seconds
        s = int(step)
        if s == step and (s // self.swing_unit) % 2 == 1 and s % self.swing_unit == 0:
            t += self.swing * self.swing_unit * self.step_seconds
        return t

    def chord_at(self, bar: int, step: float = 0) -> Chord:
        current = self.bars[bar][0][1]
        for s, chord in self.bars[bar]:
            if s <= step:
                current = chord
        return current

    def section(self, bar: int) -> Section:
        return self.sections[self.section_of_bar[bar]]

    def active(self, stem: str, bar: int) -> bool:
        return self.section(bar).active[stem]

    def in_scale(self, pitch: int) -> bool:
        return (pitch - self.key) % 12 in self.scale


def diatonic_chord(key: int, scale: tuple[int, ...], degree: int, size: int) -> Chord:
    """Stack thirds inside the scale on a degree (size 3 = triad, 4 = seventh chord)."""
    root = scale[degree % 7]
    intervals = []
    for k in range(size):
        d = degree + 2 * k
        semis = scale[d % 7] + 12 * (d // 7) - root
        intervals.append(semis)
    return Chord((key + root) % 12, tuple(intervals))


def _colour(rng: np.random.Generator, chord: Chord) -> Chord:
    """Occasional sus2/sus4/add9 colours so the harmony is not only plain triads."""
    r = rng.random()
    iv = list(chord.intervals)
    if r < 0.06 and len(iv) >= 3:
        iv[1] = 5
    elif r < 0.1 and len(iv) >= 3:
        iv[1] = 2
    elif r < 0.16:
        iv.append(14)
    return Chord(chord.root, tuple(iv))


def _progression(rng: np.random.Generator, key: int, mode: str, sevenths: float) -> list[Chord]:
    """A 4-chord loop: a common template most of the time, else a random diatonic walk."""
    scale = MODES[mode]
    if rng.random() < 0.75:
        pool = PROGRESSIONS[mode]
        degrees = list(pool[rng.integers(len(pool))])
    else:
        degrees = [0]
        for _ in range(3):
            degrees.append(int((degrees[-1] + rng.choice([1, 2, 3, 4, 5, 6, 3, 4])) % 7))
    chords = []
    for d in degrees:
        size = 4 if rng.random() < sevenths else 3
        c = diatonic_chord(key, scale, d, size)
        if mode == "harmonic_minor" and d == 6:  # the diminished vii is rarely a loop chord
            c = diatonic_chord(key, MODES["minor"], d, size)
        chords.append(_colour(rng, c))
    return chords


def _active(rng: np.random.Generator, name: str) -> dict[str, bool]:
    """Which stems play in a section of this kind (dropouts are part of the training signal)."""
    on = {s: True for s in STEMS}
    if name == "intro":
        on["vocals"] = rng.random() < 0.15
        on["drums"] = rng.random() < 0.6
        on["bass"] = rng.random() < 0.6
    elif name == "break":
        choice = rng.integers(4)
        if choice == 0:
            on["drums"] = False
        elif choice == 1:
            on["bass"] = on["other"] = False
        elif choice == 2:
            on["vocals"] = False
            on["other"] = rng.random() < 0.5
        else:
            on["drums"] = on["bass"] = False
    elif name == "outro":
        on["vocals"] = rng.random() < 0.4
    elif name == "verse":
        on["other"] = rng.random() < 0.85
        on["drums"] = rng.random() < 0.9
    elif name == "bridge":
        on["drums"] = rng.random() < 0.7
        on["vocals"] = rng.random() < 0.65  # else an instrumental bridge (a solo in "other")
    return on


def make_plan(rng: np.random.Generator, seconds: float, *, styles: tuple[str, ...] | None = None,
              excerpt: bool = False, preroll: float = 0.0) -> Plan:
    """Draw a whole song plan long enough to cover `preroll + seconds` of audio.

    Times are relative to the start of the rendered buffer (which includes the preroll).
    With `excerpt`, the song starts inside a random non-intro section (as a training excerpt
    would) rather than at its first bar.
    """
    names = tuple(styles) if styles else tuple(STYLES)
    style = names[int(rng.integers(len(names)))]
    cfg = STYLES[style]
    meter_i = int(rng.choice(3, p=np.asarray(cfg["meters"]) / sum(cfg["meters"])))
    meter, quarters, steps = METERS[meter_i]
    bpm = float(rng.uniform(*cfg["bpm"]))
    if meter == "6/8":
        bpm = float(np.clip(bpm * 1.3, 90, 180))  # 6/8 lilts at a faster eighth-note pulse
    swing = float(rng.uniform(0, cfg["swing"])) if rng.random() < 0.6 else 0.0
    swing_unit = 2 if (style in ("jazz", "ballad", "folk", "rock") or rng.random() < 0.4) else 1
    if meter != "4/4":
        swing, swing_unit = 0.0, 1
    key = int(rng.integers(12))
    mode_weights = {"major": 0.45, "minor": 0.35, "dorian": 0.08, "mixolydian": 0.07,
                    "harmonic_minor": 0.05}
    mode = str(rng.choice(list(mode_weights), p=list(mode_weights.values())))
    scale = MODES[mode]
    bar_s = quarters * 60.0 / bpm
    total = seconds + preroll
    lead_in = 0.0
    shape = SECTION_SHAPES[int(rng.integers(len(SECTION_SHAPES)))]
    if excerpt:
        shape = shape[1 + int(rng.integers(len(shape) - 1)):] + shape
        lead_in = float(rng.uniform(0, bar_s))  # start the audio anywhere inside a bar
    needed_bars = int(np.ceil((total + lead_in) / bar_s)) + 1
    progressions = {n: _progression(rng, key, mode, cfg["sevenths"]) for n in
                    ("intro", "verse", "prechorus", "chorus", "bridge", "break", "outro")}
    if rng.random() < 0.4:
        progressions["intro"] = progressions["chorus"]
    if rng.random() < 0.3:
        progressions["verse"] = progressions["chorus"]
    sections: list[Section] = []
    bars: list[list[tuple[int, Chord]]] = []
    section_of_bar: list[int] = []
    short = total < 25
    k = 0
    while len(bars) < needed_bars:
        name = shape[k % len(shape)]
        k += 1
        length = int(rng.choice([2, 4])) if short else int(rng.choice([4, 8, 8]))
        if name in ("intro", "break", "outro") and not short:
            length = int(rng.choice([2, 4]))
        prog = progressions[name]
        per_bar = 2 if (rng.random() < 0.2 and steps == 16) else 1
        sec = Section(name, len(bars), length, _active(rng, name),
                      float(np.clip({"chorus": 0.85, "prechorus": 0.7, "verse": 0.55}.get(name, 0.45)
                                    + rng.normal(0, 0.1), 0.1, 1.0)))
        for b in range(length):
            if per_bar == 2:
                i = (2 * b) % len(prog)
                bars.append([(0, prog[i]), (steps // 2, prog[(i + 1) % len(prog)])])
            else:
                bars.append([(0, prog[b % len(prog)])])
            section_of_bar.append(len(sections))
        sections.append(sec)
    _ensure_presence(rng, sections)
    accents = tuple(sorted({0} | {s for s in range(2, steps) if rng.random() < (0.3 if s % 2 == 0 else 0.15)}))
    return Plan(style=style, bpm=bpm, meter=meter, quarters_per_bar=quarters, steps_per_bar=steps,
                swing=swing, swing_unit=swing_unit, key=key, mode=mode, scale=scale, bars=bars,
                sections=sections, offset=-lead_in, humanize=float(rng.uniform(0.002, 0.015)),
                rap=bool(rng.random() < cfg["rap"]), section_of_bar=section_of_bar,
                accents=accents)


def _ensure_presence(rng: np.random.Generator, sections: list[Section]) -> None:
    """Every stem plays in the longest section of most songs (a stem missing everywhere is rare)."""
    longest = max(sections, key=lambda s: s.bars)
    for stem in STEMS:
        if rng.random() < 0.97:
            longest.active[stem] = True
    if not any(s.active["vocals"] for s in sections[:2]) and rng.random() < 0.7:
        sections[0].active["vocals"] = sections[0].name != "intro" or rng.random() < 0.3


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str],
         exclude: frozenset[str] = frozenset()) -> str | None:
    """A random option that is not held out (None when every option is excluded)."""
    allowed = [o for o in options if o not in exclude]
    return str(allowed[int(rng.integers(len(allowed)))]) if allowed else None


def humanize(rng: np.random.Generator, plan: Plan, t: float, amount: float = 1.0) -> float:
    """Nudge an onset by the song's timing looseness (players are not quantised)."""
    return t + float(rng.normal(0.0, plan.humanize * amount))
