"""GUS patch sets (the `freepats` package: recorded General MIDI instruments as .pat files) played
as a sampler, for the stems soundfont.py would otherwise render through libfluidsynth.

Owns reading .pat files within hard bounds (size, waveform count, data inside the file, sane
rates), choosing a waveform per note, looping and releasing it, and the stand-in for a General
MIDI program the set lacks. It takes the same programs/notes/pans as `soundfont.render_events`
and must not choose programs or write parts (soundfont.py and the part writers do).
"""
from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemsplit.synth.compose import Note
from stemsplit.synth.reserved import is_reserved
from stemsplit.synth.samples.library import listing

F32 = np.float32
MAX_PAT_BYTES = 16 << 20   # freepats' largest patch is about 2 MB
MAX_WAVES = 64             # waveforms per patch (one per key range)
MAX_NOTE_SECONDS = 12.0    # a held note or a ringing drum is cut here
RELEASE_SECONDS = 0.25     # fade after note-off (the patches' own envelopes are not modelled)
RATES = (1000, 192000)
DIRS = ("usr/share/midi/freepats",)
TONES, DRUMS = "Tone_000", "Drum_000"
# GM voices (choir aahs, voice oohs, synth voice) stand in only for each other: a missing choir
# played as strings would put strings into the vocals stem.
VOICES = (52, 53, 54)


@dataclass(frozen=True)
class Wave:
    data: np.ndarray          # mono float32, read-only
    rate: int
    low: float                # key range and root pitch, Hz
    high: float
    root: float
    loop: tuple[int, int] | None
    pingpong: bool
    pan: float                # -1 (left) .. 1 (right)


def is_patch_set(path: Path) -> bool:
    """A folder laid out as freepats is (Tone_000/NNN_name.pat, Drum_000/NNN_name.pat)."""
    return path.is_dir() and (path / TONES).is_dir()


def find_patch_sets_under(root: Path) -> list[Path]:
    """The patch sets below `root` in the Debian places (reserved ones excluded)."""
    return [root / d for d in DIRS if is_patch_set(root / d) and not is_reserved(root / d)]


@functools.lru_cache(maxsize=8)
def _index(folder: Path) -> dict[str, dict[int, Path]]:
    """{"tone": program -> .pat, "drum": key -> .pat} from the numbered file names."""
    out: dict[str, dict[int, Path]] = {"tone": {}, "drum": {}}
    for kind, sub in (("tone", TONES), ("drum", DRUMS)):
        for path in listing(folder / sub):
            match = re.match(r"(\d{3})_.*\.pat$", path.name, re.IGNORECASE)
            if match and int(match.group(1)) < 128:
                out[kind][int(match.group(1))] = path
    return out


@functools.lru_cache(maxsize=256)
def read_patch(path: Path) -> tuple[Wave, ...]:
    """The waveforms of the first layer of a .pat file; () when it is not a usable patch."""
    try:
        if is_reserved(path) or not 0 < path.stat().st_size <= MAX_PAT_BYTES:
            return ()
        raw = path.read_bytes()
    except OSError:
        return ()
    if not raw.startswith((b"GF1PATCH110\0", b"GF1PATCH100\0")) or len(raw) < 239:
        return ()
    # 129-byte file header, 63-byte instrument header, 47-byte layer header, then the waveforms.
    count = min(raw[239 - 47 + 6], MAX_WAVES)
    waves, pos = [], 239
    for _ in range(count):
        if pos + 96 > len(raw):
            break
        (size, loop_start, loop_end, rate, low, high, root, _tune, balance,
         modes) = _wave_header(raw[pos:pos + 96])
        data_at, pos = pos + 96, pos + 96 + size
        if pos > len(raw) or not (RATES[0] <= rate <= RATES[1]) or root <= 0 or size < 16:
            break
        sixteen, unsigned = bool(modes & 1), bool(modes & 2)
        width = 2 if sixteen else 1
        dtype = ("<u2" if unsigned else "<i2") if sixteen else ("u1" if unsigned else "i1")
        pcm = np.frombuffer(raw, dtype=dtype, count=size // width, offset=data_at).astype(np.float32)
        if unsigned:
            pcm -= 32768.0 if sixteen else 128.0
        pcm /= 32768.0 if sixteen else 128.0
        pcm.setflags(write=False)
        start, end = loop_start // width, loop_end // width
        loop = (start, end) if modes & 4 and 0 <= start < end <= pcm.size and end - start >= 2 else None
        waves.append(Wave(pcm, rate, low / 1000.0, high / 1000.0, root / 1000.0, loop, bool(modes & 8),
                          float(np.clip((balance - 7) / 7.0, -1.0, 1.0))))
    return tuple(waves)


def _wave_header(h: bytes) -> tuple:
    # name[7] fractions[1] size loop_start loop_end (u32) rate (u16) low high root (u32) tune (i16)
    # balance (u8) envelope[12] tremolo[3] vibrato[3] modes (u8) ...
    size, loop_start, loop_end, rate, low, high, root, tune, balance = struct.unpack_from("<3IH3IhB", h, 8)
    modes = h[8 + 12 + 2 + 12 + 2 + 1 + 12 + 6]
    return size, loop_start, loop_end, rate, low, high, root, tune, balance, modes


def _program(index: dict[int, Path], program: int) -> Path | None:
    """The patch for `program`, else the nearest one of its GM family of eight (voices only
    among voices); None when the family is empty here."""
    if program in index:
        return index[program]
    family = VOICES if program in VOICES else [p for p in range(program // 8 * 8, program // 8 * 8 + 8)
                                               if p not in VOICES]
    near = sorted((abs(p - program), p) for p in family if p in index)
    return index[near[0][1]] if near else None


def _play(wave: Wave, hz: float, hold: int | None, sr: int) -> np.ndarray:
    """One note: the waveform re-pitched to `hz`, looped while held, released after `hold`
    samples (None: a drum, played to its end)."""
    step = hz / wave.root * wave.rate / sr
    cap = int(MAX_NOTE_SECONDS * sr)
    release = int(RELEASE_SECONDS * sr)
    if wave.loop is not None and hold is not None:
        n = min(hold + release, cap)
        pos = np.arange(n, dtype=np.float64) * step
        start, end = wave.loop
        over = pos - start
        span = end - start
        if wave.pingpong:
            m = np.mod(over, 2 * span)
            wrapped = start + np.where(m < span, m, 2 * span - m)
        else:
            wrapped = start + np.mod(over, span)
        pos = np.where(pos < end, pos, wrapped)
    else:
        n = min(int((wave.data.size - 1) / step), cap)
        pos = np.arange(max(n, 0), dtype=np.float64) * step
    out = np.interp(pos, np.arange(wave.data.size), wave.data).astype(F32)
    if hold is not None and hold < out.size:
        out[hold:] *= np.exp(-np.arange(out.size - hold) / (release / 5.0)).astype(F32)
    return out


def render_events(folder: Path, sr: int, length: int, programs: dict[int, tuple[int, int]],
                  notes: list[tuple[int, Note]], pans: dict[int, float]) -> np.ndarray:
    """Render notes on MIDI channels to (2, length) float32 (as `soundfont.render_events`):
    programs: channel -> (bank, program), bank 128 meaning the drum set."""
    from stemsplit.synth.soundfont import GM_DRUMS

    index = _index(folder)
    out = np.zeros((2, length), dtype=F32)
    for chan, note in notes:
        bank, program = programs.get(chan, (0, 0))
        drum = bank == 128
        if drum:
            key = GM_DRUMS.get(note.piece)
            path = index["drum"].get(key) if key is not None else None
            hz = 440.0 * 2 ** ((key - 69) / 12) if key is not None else 0.0
        else:
            path = _program(index["tone"], program)
            hz = 440.0 * 2 ** ((note.pitch - 69) / 12)
        waves = read_patch(path) if path is not None else ()
        if not waves:
            continue
        fits = [w for w in waves if w.low <= hz <= w.high]
        wave = fits[0] if fits else min(waves, key=lambda w: abs(np.log2(hz / w.root)))
        if drum:
            # A drum patch's key range only names its key: it sounds at its recorded pitch.
            hz = wave.root
        start = int(round(note.start * sr))
        hold = None if drum else max(int(round(note.dur * sr)), int(0.08 * sr))
        sound = _play(wave, hz, hold, sr) * F32(max(note.vel, 0.0) ** 2)
        lo, hi = max(start, 0), min(start + sound.size, length)
        if hi <= lo:
            continue
        pan = wave.pan if drum else pans.get(chan, 0.0)
        angle = (pan + 1.0) * np.pi / 4  # equal-power pan
        piece = sound[lo - start:hi - start]
        out[0, lo:hi] += piece * F32(np.cos(angle))
        out[1, lo:hi] += piece * F32(np.sin(angle))
    return out
