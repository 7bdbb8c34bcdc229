"""Optional sample-based rendering of a stem through a General MIDI soundfont (libfluidsynth).

Owns the binding to libfluidsynth (through ctypes, loaded on first use; a fresh synth per
render, with the soundfont's samples kept warm in fluidsynth's cache per process), the General
MIDI program choices per stem, and turning the part writers' notes (or one drum hit, for the
recorded kits of drum-only soundfonts) into MIDI events rendered offline and deterministically.
The internal reverb/chorus of fluidsynth are off: production effects belong to effects.py. It
must not be required: everything else works without libfluidsynth or a soundfont.

A freepats folder (GUS patches) may stand wherever a soundfont does; patches.py plays it.
Install with scripts/install_soundfonts.sh (Debian: fluidsynth + a GM soundfont). The
soundfont of the `fluid-soundfont-gm` package is reserved for held-out evaluation: `"auto"`
never picks it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path

import numpy as np

from stemsplit.errors import DataError
from stemsplit.synth import bass, drums, instruments, patches
from stemsplit.synth.compose import Note, Plan
from stemsplit.synth.reserved import is_reserved

F32 = np.float32
SEARCH_DIRS = (Path("/usr/share/sounds/sf2"), Path("/usr/share/sounds/sf3"), Path("/usr/share/soundfonts"))
# Drum-kit-only soundfonts (avldrums.lv2-soundfont): not General MIDI, so never an "auto" choice;
# the sample library plays them as recorded kits instead.
DRUM_ONLY = ("_lv2",)

# General MIDI programs (0-based) per stem. Voice-like programs (choir, voice oohs, synth voice,
# "voice" lead and "choir" pad) are kept out of the "other" stem so labels stay clean.
BASS_PROGRAMS = (32, 33, 34, 35, 36, 37, 38, 39, 43)
OTHER_PROGRAMS = (tuple(range(0, 8)) + (8, 9, 10, 11, 12, 13, 14) + tuple(range(16, 24)) + tuple(range(24, 32))
                  + (40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51) + tuple(range(56, 64)) + tuple(range(64, 72))
                  + tuple(range(72, 80)) + (80, 81, 82, 83, 84, 86, 87, 88, 89, 90, 92, 93, 94, 95)
                  + (104, 105, 106, 107, 108))
VOICE_PROGRAMS = (52, 53, 54)
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)
GM_DRUMS = {"kick": 36, "snare": 38, "clap": 39, "rim": 37, "hat_closed": 42, "hat_pedal": 44,
            "hat_open": 46, "ride": 51, "crash": 49, "tom_hi": 50, "tom_mid": 47, "tom_lo": 43,
            "shaker": 70, "tambourine": 54, "cowbell": 56, "conga": 63, "bongo": 60, "clave": 75}
DRUM_CHANNEL = 9

_LIB: ctypes.CDLL | None = None
_KEEPERS: dict[tuple[int, str], tuple[int, int]] = {}


def find_soundfonts() -> list[Path]:
    """General MIDI soundfonts installed in the usual Debian places (reserved ones excluded)."""
    return find_soundfonts_under(Path("/"))


def find_soundfonts_under(root: Path, drum_only: bool = False) -> list[Path]:
    """General MIDI soundfonts in the Debian places below `root` (reserved ones excluded), or with
    `drum_only` the drum-kit-only ones (which samples.sf2kit plays as recorded kits)."""
    found = []
    for folder in (root / d.relative_to("/") for d in SEARCH_DIRS):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in (".sf2", ".sf3") and path.is_file() and not path.is_symlink():
                    if not is_reserved(path) and any(d in path.name.lower() for d in DRUM_ONLY) == drum_only:
                        found.append(path)
    return found


def resolve(soundfont: str | Path, rng: np.random.Generator | None = None, split: str | None = None) -> Path:
    """A soundfont path, or "auto": one of the installed non-reserved ones (drawn with `rng`).

    With a material `split` ("train"/"valid", for songs on recorded samples), "auto" draws only
    that split's soundfonts, so validation songs never share one with training songs.
    """
    if str(soundfont) == "auto":
        fonts = find_soundfonts()
        if split is not None:
            from stemsplit.synth.samples.library import split_of

            fonts = [p for p in fonts if split_of("soundfont", p.stem) == split]
        if not fonts:
            where = f" of the {split} split" if split is not None else ""
            raise DataError(f"no General MIDI soundfont{where} installed (run scripts/install_soundfonts.sh)")
        return fonts[int(rng.integers(len(fonts)))] if rng is not None else fonts[0]
    path = Path(soundfont)
    if not (path.is_file() or patches.is_patch_set(path)):
        raise DataError(f"{path}: soundfont not found (a .sf2/.sf3 file or a freepats folder)")
    return path


def check(soundfont: str | Path, split: str | None = None) -> None:
    """DataError now if `soundfont` cannot be used: a missing file, no libfluidsynth, or a file
    fluidsynth cannot load ("auto": none installed, of `split` when given).

    Stems go through the soundfont only by chance (`soundfont_share`), so without this a typo in
    the path surfaces after some songs were written, or never. A named file is loaded here into
    the per-process cache (`_keep_loaded`) that its first render would fill anyway.
    """
    path = resolve(soundfont, split=split)
    if patches.is_patch_set(path):
        return  # played by patches.py: no libfluidsynth involved
    _lib()
    if str(soundfont) != "auto":
        _keep_loaded(path)


def _lib() -> ctypes.CDLL:
    """Load libfluidsynth once and declare the few functions used."""
    global _LIB
    if _LIB is None:
        name = ctypes.util.find_library("fluidsynth")
        if name is None:
            raise DataError("soundfont rendering needs libfluidsynth (run scripts/install_soundfonts.sh)")
        lib = ctypes.CDLL(name)
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        lib.new_fluid_settings.restype = vp
        lib.fluid_settings_setnum.argtypes = [vp, cp, ctypes.c_double]
        lib.fluid_settings_setint.argtypes = [vp, cp, i]
        lib.new_fluid_synth.restype = vp
        lib.new_fluid_synth.argtypes = [vp]
        lib.delete_fluid_synth.argtypes = [vp]
        lib.delete_fluid_settings.argtypes = [vp]
        lib.fluid_synth_sfload.argtypes = [vp, cp, i]
        lib.fluid_synth_program_select.argtypes = [vp, i, i, i, i]
        lib.fluid_synth_noteon.argtypes = [vp, i, i, i]
        lib.fluid_synth_noteoff.argtypes = [vp, i, i]
        lib.fluid_synth_cc.argtypes = [vp, i, i, i]
        lib.fluid_synth_system_reset.argtypes = [vp]
        lib.fluid_synth_write_float.argtypes = [vp, i, vp, i, i, vp, i, i]
        lib.fluid_set_log_function.argtypes = [i, vp, vp]
        for level in range(5):  # silence fluidsynth's own console messages
            lib.fluid_set_log_function(level, None, None)
        _LIB = lib
    return _LIB


def _keep_loaded(path: Path) -> None:
    """Hold the whole soundfont in fluidsynth's sample cache for the life of this process.

    Every render needs a fresh synth (a reused one keeps hidden voice state, which breaks
    bit-identical output), and a fresh synth loading a large .sf3 from scratch takes seconds;
    with this idle "keeper" synth holding the decoded samples, a fresh one loads in milliseconds.
    """
    key = (os.getpid(), str(path))
    if key not in _KEEPERS:
        lib = _lib()
        settings = lib.new_fluid_settings()
        synth = lib.new_fluid_synth(settings)
        if not synth or lib.fluid_synth_sfload(synth, str(path).encode(), 0) < 0:
            if synth:
                lib.delete_fluid_synth(synth)
            lib.delete_fluid_settings(settings)
            raise DataError(f"{path}: fluidsynth cannot load this soundfont")
        _KEEPERS[key] = (settings, synth)


def _new_synth(path: Path, sr: int) -> tuple[int, int, int]:
    """A fresh (settings, synth, soundfont id) for one render, its samples from the warm cache."""
    _keep_loaded(path)
    lib = _lib()
    settings = lib.new_fluid_settings()
    lib.fluid_settings_setnum(settings, b"synth.sample-rate", float(sr))
    lib.fluid_settings_setint(settings, b"synth.reverb.active", 0)
    lib.fluid_settings_setint(settings, b"synth.chorus.active", 0)
    lib.fluid_settings_setint(settings, b"synth.polyphony", 256)
    lib.fluid_settings_setint(settings, b"synth.cpu-cores", 1)
    lib.fluid_settings_setint(settings, b"synth.dynamic-sample-loading", 1)  # only the presets used
    lib.fluid_settings_setnum(settings, b"synth.gain", 0.5)
    synth = lib.new_fluid_synth(settings)
    sfid = lib.fluid_synth_sfload(synth, str(path).encode(), 1) if synth else -1
    if sfid < 0:
        if synth:
            lib.delete_fluid_synth(synth)
        lib.delete_fluid_settings(settings)
        raise DataError(f"{path}: fluidsynth cannot load this soundfont")
    return settings, synth, sfid


def render_events(path: Path, sr: int, length: int, programs: dict[int, tuple[int, int]],
                  notes: list[tuple[int, Note]], pans: dict[int, float]) -> np.ndarray:
    """Render notes on MIDI channels to (2, length) float32; programs: channel -> (bank, program).
    A freepats folder is played by patches.py, everything else by libfluidsynth."""
    if patches.is_patch_set(path):
        return patches.render_events(path, sr, length, programs, notes, pans)
    lib = _lib()
    settings, synth, sfid = _new_synth(path, sr)
    try:
        return _render(lib, synth, sfid, sr, length, programs, notes, pans)
    finally:
        lib.delete_fluid_synth(synth)
        lib.delete_fluid_settings(settings)


def _render(lib: ctypes.CDLL, synth: int, sfid: int, sr: int, length: int, programs: dict[int, tuple[int, int]],
            notes: list[tuple[int, Note]], pans: dict[int, float]) -> np.ndarray:
    for chan, (bank, prog) in programs.items():
        if lib.fluid_synth_program_select(synth, chan, sfid, bank, prog) != 0:
            lib.fluid_synth_program_select(synth, chan, sfid, bank, 0)  # preset missing in this font
        lib.fluid_synth_cc(synth, chan, 10, int(np.clip(64 + 63 * pans.get(chan, 0.0), 0, 127)))
        lib.fluid_synth_cc(synth, chan, 7, 110)
    events: list[tuple[int, int, int, int, int]] = []  # sample, order (offs first), chan, key, vel
    for chan, note in notes:
        key = int(round(note.pitch)) if not note.piece else GM_DRUMS[note.piece]
        on = int(round(note.start * sr))
        off = on + max(int(round(note.dur * sr)), int(0.08 * sr))
        events.append((on, 1, chan, key, int(np.clip(note.vel * 127, 1, 127))))
        events.append((off, 0, chan, key, 0))
    events.sort()
    out = np.zeros((2, length), dtype=F32)
    pos = 0
    for when, kind, chan, key, vel in events + [(length, 2, 0, 0, 0)]:
        when = min(max(when, 0), length)
        if when > pos:
            n = when - pos
            left = out[0, pos:when]
            right = out[1, pos:when]
            lib.fluid_synth_write_float(synth, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
            pos = when
        if kind == 1:
            lib.fluid_synth_noteon(synth, chan, key, vel)
        elif kind == 0:
            lib.fluid_synth_noteoff(synth, chan, key)
    return out


def _choir_part(rng: np.random.Generator, plan: Plan) -> list[Note]:
    """Sustained three-voice chords under the singing, in the louder vocal sections."""
    center = rng.uniform(57, 66)
    notes = []
    for bar in range(len(plan.bars)):
        sec = plan.section(bar)
        if not sec.active["vocals"] or sec.intensity < 0.5:
            continue
        for ci, (step, chord) in enumerate(plan.bars[bar]):
            end = plan.bars[bar][ci + 1][0] if ci + 1 < len(plan.bars[bar]) else plan.steps_per_bar
            for pitch in instruments.voicing(chord.pitch_classes(), center, 3):
                notes.append(Note(plan.time(bar, step), (end - step) * plan.step_seconds, float(pitch), 0.6))
    return notes


@functools.lru_cache(maxsize=512)
def render_hit(path: Path, bank: int, preset: int, piece: str, vel: float, sr: int,
               seconds: float) -> np.ndarray | None:
    """One hit of drum `piece` (its General MIDI key) at velocity `vel` in 0..1 on preset
    (bank, preset): a read-only mono float32 one-shot up to its last audible sample, at most
    `seconds` long; None when the preset has no sound there."""
    length = int(seconds * sr)
    note = Note(0.0, 0.1, 0.0, vel, piece)
    out = render_events(path, sr, length, {DRUM_CHANNEL: (bank, preset)}, [(DRUM_CHANNEL, note)], {})
    mono = out.mean(axis=0, dtype=np.float64)
    audible = np.flatnonzero(np.abs(mono) > 1e-4)  # -80 dBFS
    if audible.size == 0:
        return None
    hit = mono[:audible[-1] + 1].astype(F32)
    hit.setflags(write=False)  # shared through the cache
    return hit


def render_stem(rng: np.random.Generator, plan: Plan, sr: int, length: int, stem: str,
                soundfont: str | Path, split: str | None = None) -> np.ndarray:
    """Render one stem's part through the soundfont: the same writers, sampled instruments.

    For "vocals" this is a General MIDI choir backing, meant to be added to the sung vocals.
    `split` narrows "auto" as in `resolve`.
    """
    path = resolve(soundfont, rng, split)
    programs: dict[int, tuple[int, int]] = {}
    notes: list[tuple[int, Note]] = []
    pans: dict[int, float] = {}
    if stem == "drums":
        programs[DRUM_CHANNEL] = (128, int(rng.choice(DRUM_KITS)))
        notes = [(DRUM_CHANNEL, n) for n in drums.write_part(rng, plan) if n.piece in GM_DRUMS]
    elif stem == "bass":
        programs[0] = (0, int(rng.choice(BASS_PROGRAMS)))
        line = str(rng.choice(bass.LINES))
        notes = [(0, n) for n in bass.write_part(rng, plan, line, rng.uniform(33, 45))]
    elif stem == "other":
        for chan in range(int(rng.choice([1, 2, 2, 3]))):
            programs[chan] = (0, int(rng.choice(OTHER_PROGRAMS)))
            role = str(rng.choice(instruments.ROLES))
            center = rng.uniform(55, 68) if role != "counter" else rng.uniform(62, 74)
            notes += [(chan, n) for n in instruments.write_part(rng, plan, role, center)]
            pans[chan] = float(rng.uniform(-0.6, 0.6))
    elif stem == "vocals":
        programs[0] = (0, int(rng.choice(VOICE_PROGRAMS)))
        notes = [(0, n) for n in _choir_part(rng, plan)]
    else:
        raise ValueError(f"unknown stem {stem!r}")
    return render_events(path, sr, length, programs, notes, pans)
