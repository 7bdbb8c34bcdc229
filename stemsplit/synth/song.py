"""render_song: one deterministic synthetic song as four stems and their exact mixture.

Owns the orchestration (plan, parts, optional soundfont rendering, optional recorded material
from samples/, per-stem production, stem balance, the optional mix bus of master.py, loudness
normalisation with headroom, mono/stereo) and the public options. It must not
contain instrument or effect internals, and it never touches global random state: everything
comes from numpy Generators seeded by the song seed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from stemsplit.synth import bass, compose, drums, effects, instruments, kit, singer, vocals
from stemsplit.synth.samples.library import SPLITS

F32 = np.float32
SOURCES = ("drums", "bass", "other", "vocals")
MIN_SAMPLERATE, MAX_SAMPLERATE = 8000, 192000
# Sound sources that `exclude` can hold out, by family.
COMPONENTS = {"drum kit": kit.KIT_KINDS, "bass voice": bass.VOICES, "instrument": instruments.KINDS,
              "voice type": tuple(singer.VOICE_TYPES), "vocal model": singer.MODELS}


def check_options(seconds: float, samplerate: int, channels: int, styles, vocal_modes, exclude,
                  split: str = "train", sample_share: float = 0.7) -> None:
    """ValueError naming the first option `render_song` cannot honour (so callers fail before any work).

    The sample rate is capped at 192 kHz, the highest common studio rate: far beyond it the
    buffers of one song outgrow the memory of most machines before anything says why.
    """
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"seconds must be a positive, finite number, got {seconds}")
    if not MIN_SAMPLERATE <= samplerate <= MAX_SAMPLERATE:
        raise ValueError(f"samplerate must be {MIN_SAMPLERATE} to {MAX_SAMPLERATE} Hz, got {samplerate}")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    for s in styles or ():
        if s not in compose.STYLES:
            raise ValueError(f"unknown style {s!r}; choose from {', '.join(compose.STYLES)}")
    for m in vocal_modes or ():
        if m not in vocals.MODES:
            raise ValueError(f"unknown vocal mode {m!r}; choose from {', '.join(vocals.MODES)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.0 <= sample_share <= 1.0:
        raise ValueError(f"sample_share must be between 0 and 1, got {sample_share}")
    known = {name for names in COMPONENTS.values() for name in names}
    for name in exclude:
        if name not in known:
            raise ValueError(f"cannot exclude {name!r}; choose from {', '.join(sorted(known))}")
    for family, names in COMPONENTS.items():
        if set(names) <= set(exclude):
            raise ValueError(f"exclude leaves no {family}")


def soundfont_split(samples: str | Path | None, split: str) -> str | None:
    """The split "auto" soundfonts are drawn from: the song's, for songs on recorded material;
    None (any installed font) for procedural songs."""
    return split if samples is not None else None


def render_song(seed: int, seconds: float, samplerate: int = 44100, channels: int = 2, *,
                styles: Sequence[str] | None = None, vocal_modes: Sequence[str] | None = None,
                soundfont: str | Path | None = None, soundfont_share: float = 0.5,
                exclude: Sequence[str] = (), production: bool = True, excerpt: bool = False,
                loudness: tuple[float, float] = (-24.0, -12.0), samples: str | Path | None = None,
                split: str = "train", sample_share: float = 0.7,
                master: bool | None = None) -> dict[str, np.ndarray]:
    """Render one synthetic song.

    Returns {"drums", "bass", "other", "vocals", "mixture"} -> float32 arrays (channels, samples)
    with `mixture` computed as the float32 sum of the four returned stems (in that order), its
    RMS at a random level in `loudness` (dBFS) and its peak at most 1. The same arguments always
    give bit-identical audio.

    Options:
      styles: restrict the style families (see `compose.STYLES`), e.g. to hold one out.
      vocal_modes: restrict vocals to some of "sing", "rap", "spoken".
      soundfont: path to a General MIDI .sf2/.sf3, or "auto" (an installed one, drawn per stem,
        never the reserved fluid-soundfont-gm; with `samples`, only one of the song's split).
        Each of drums, bass and other is then rendered through it (libfluidsynth) with
        probability `soundfont_share`, and a GM choir may back the vocals. None (default):
        procedural only. DataError when libfluidsynth or the file is missing. Loading a large
        .sf3 takes seconds once per process.
      exclude: hold out sound sources by name: drum kits (electronic, acoustic, sampled, 808,
        brushes), bass voices (saw, square, sine, fm, 808, finger, pick, slap, upright),
        instruments (piano, epiano, organ, strings, pad, pluck, brass, lead, acoustic_guitar,
        clean_guitar, dist_guitar, mallet, bells, harp, flute, sax, violin, accordion) and voice
        types (bass, baritone, tenor, alto, mezzo, soprano) and vocal models (stft: formants
        applied to short-time spectra; klatt: a time-domain resonator cascade); see
        `COMPONENTS`. "808" names both the 808 drum kit and the 808 bass.
      production: False skips EQ/compression/saturation/delay/reverb/width (a dry path).
      excerpt: start inside a random section (as a training excerpt), rendering half a second of
        preroll so that tails of earlier notes and reverbs are present at the first sample.
      samples: recorded material: "auto" (the installed Debian sample packages, see
        scripts/install_samples.sh) or a folder they were unpacked into. Each song then plays a
        recorded drum kit, and sings with a recorded voice, each with probability `sample_share`;
        without `soundfont`, bass and other go through the split's soundfont with that chance
        when libfluidsynth is there. Whatever is missing falls back to procedural sound.
      split: "train" or "valid": which side of the material split (`samples.library.VALID`) the
        song draws from; the two never share a kit, a voice or a soundfont.
      master: the mix bus of a record (`master.master`: the style's stem levels, kick weight,
        driven guitars, a shared room, bus EQ, glue compression, a limiter driven a few dB, all
        applied alike to every stem). None (default): on with `samples` (unless `production` is
        False), off without them, so songs without samples sound as they always did per seed.
    """
    check_options(seconds, samplerate, channels, styles, vocal_modes, exclude, split, sample_share)
    held_out = frozenset(exclude)
    sr = int(samplerate)
    # Children 0-6 are the same as before samples existed, so songs without samples are unchanged.
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(9)]
    preroll = 0.5 if excerpt else 0.0
    plan = compose.make_plan(rngs[0], seconds, styles=tuple(styles) if styles else None,
                             excerpt=excerpt, preroll=preroll)
    length = int(round((seconds + preroll) * sr))
    mode = None
    if vocal_modes:
        mode = str(rngs[4].choice(list(vocal_modes)))
        if len(vocal_modes) > 1 and "rap" in vocal_modes and plan.rap:
            mode = "rap"
    stems: dict[str, np.ndarray | None] = {name: None for name in SOURCES}
    recorded_voice = None
    if samples is not None:
        from stemsplit.synth.samples import choose

        picked = choose.pick(rngs[8], samples, split, sample_share, sr, soundfont is None)
        if picked.kit:
            stems["drums"] = drums.render(rngs[1], plan, sr, length, held_out, recorded=picked.kit)
        if picked.soundfont is not None:
            soundfont, soundfont_share = picked.soundfont, sample_share
        recorded_voice = picked.voice
    if soundfont is not None:
        from stemsplit.synth import soundfont as sf

        font_split = soundfont_split(samples, split)
        for stem, k in (("drums", 1), ("bass", 2), ("other", 3)):
            if stems[stem] is None and rngs[k].random() < soundfont_share:
                stems[stem] = sf.render_stem(rngs[k], plan, sr, length, stem, soundfont, font_split)
        if rngs[6].random() < soundfont_share * 0.4:
            choir = sf.render_stem(rngs[6], plan, sr, length, "vocals", soundfont, font_split)
            stems["vocals"] = choir * F32(10 ** (rngs[6].uniform(-14, -6) / 20) / (_active_rms(choir, sr) + 1e-9))
    procedural = {"drums": (drums.render, 1), "bass": (bass.render, 2), "other": (instruments.render, 3)}
    for stem, (render, k) in procedural.items():
        if stems[stem] is None:
            stems[stem] = render(rngs[k], plan, sr, length, held_out)
    sung = vocals.render(rngs[4], plan, sr, length, mode, held_out, recorded_voice)
    if stems["vocals"] is not None:
        sung_rms = _active_rms(sung, sr)
        stems["vocals"] = sung + stems["vocals"] * F32(sung_rms if sung_rms > 1e-7 else 1.0)
    else:
        stems["vocals"] = sung
    mix_rng = rngs[5]
    room = (float(mix_rng.uniform(0.3, 2.5)), float(mix_rng.uniform(0.2, 0.9)))
    dance = plan.style in ("electronic", "trap", "hiphop", "pop") and plan.meter == "4/4"
    duck = (float(mix_rng.uniform(0.3, 0.8)), plan.offset) if dance and mix_rng.random() < 0.35 else None
    mastered = (samples is not None and production) if master is None else bool(master)
    balance = {"drums": 0.0, "bass": -1.0, "other": -3.0, "vocals": 0.5}
    spread = 3.0
    if mastered:
        from stemsplit.synth import master as bus

        balance, spread = bus.levels(plan.style), bus.SPREAD_DB
    start = length - int(round(seconds * sr))
    out: dict[str, np.ndarray] = {}
    for name in SOURCES:
        x = stems[name]
        if production:
            x = effects.produce(mix_rng, x, sr, name, plan.bpm, room, duck)
        # Level from the whole rendered stem (preroll included), so that a stem which only rings
        # out at the start of an excerpt keeps its tail quiet instead of being boosted.
        rms = _active_rms(x, sr)
        gain = 10 ** ((balance[name] + mix_rng.normal(0, spread)) / 20) / rms if rms > 1e-7 else 0.0
        out[name] = (x * F32(gain)).astype(F32)
    if mastered:
        out = bus.master(rngs[7], out, sr, plan.style, plan.bpm)
    out = {name: x[:, start:] for name, x in out.items()}
    if channels == 1:
        out = {k: np.mean(v, axis=0, keepdims=True, dtype=F32) for k, v in out.items()}
    return _normalise(mix_rng, out, loudness)


def _active_rms(x: np.ndarray, sr: int) -> float:
    """RMS over the 50 ms blocks where the stem plays (within 40 dB of its loudest block), so a
    stem that enters late is balanced by how loud it is when it plays, not by its silence."""
    block = max(int(0.05 * sr), 1)
    nb = x.shape[-1] // block
    if nb == 0:
        return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    power = np.mean(x[:, : nb * block].astype(np.float64).reshape(x.shape[0], nb, block) ** 2, axis=(0, 2))
    loud = power[power > power.max() * 1e-4]
    return float(np.sqrt(np.mean(loud))) if loud.size else 0.0


def _sum(stems: dict[str, np.ndarray]) -> np.ndarray:
    mix = stems["drums"] + stems["bass"]
    mix = mix + stems["other"]
    return (mix + stems["vocals"]).astype(F32)


def _normalise(rng: np.random.Generator, stems: dict[str, np.ndarray],
               loudness: tuple[float, float]) -> dict[str, np.ndarray]:
    """Scale all stems by one gain: mixture RMS to a random level, peak below a random ceiling."""
    mix = _sum(stems)
    rms = float(np.sqrt(np.mean(mix.astype(np.float64) ** 2)))
    target = 10 ** (rng.uniform(*loudness) / 20)
    gain = target / rms if rms > 1e-9 else 1.0
    peak = float(np.max(np.abs(mix))) * gain
    ceiling = rng.uniform(0.7, 0.98)
    if peak > ceiling:
        gain *= ceiling / peak
    out = {k: (v * F32(gain)).astype(F32) for k, v in stems.items()}
    out["mixture"] = _sum(out)
    peak = float(np.max(np.abs(out["mixture"])))
    if peak > 1.0:  # float rounding can only push a hair past the ceiling; never past 1
        out = {k: (v / F32(peak * 1.0001)).astype(F32) for k, v in out.items() if k != "mixture"}
        out["mixture"] = _sum(out)
    return out


def song_seed(seed: int, index: int) -> int:
    """The seed of song `index` in a set drawn with `seed` (well mixed, so neighbours differ)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)
