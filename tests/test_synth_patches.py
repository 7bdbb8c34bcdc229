"""GUS patch sets (freepats) played by synth/patches.py: real .pat files written here, so the
sampler, its bounds and its place in the generator are tested without the Debian package."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from stemsplit.synth import patches, render_song
from stemsplit.synth import soundfont as sf
from stemsplit.synth.compose import Note
from stemsplit.synth.samples import library

SR = 22050


def _pat(waves: list[tuple[np.ndarray, int, float, float, float, tuple[int, int] | None]]) -> bytes:
    """A GF1 patch: one instrument, one layer, 16-bit signed waveforms (data, rate, low, high,
    root Hz, loop in samples)."""
    head = b"GF1PATCH110\0" + b"ID#000002\0" + b"test".ljust(60, b"\0")
    head += struct.pack("<BBBHHI", 1, 14, 0, len(waves), 127, 0) + bytes(36)
    head += struct.pack("<H", 0) + b"test".ljust(16, b"\0") + struct.pack("<IB", 0, 1) + bytes(40)
    head += struct.pack("<BBIB", 0, 0, 0, len(waves)) + bytes(40)
    assert len(head) == 239
    body = b""
    for data, rate, low, high, root, loop in waves:
        pcm = (np.clip(data, -1, 1) * 32767).astype("<i2").tobytes()
        start, end = loop if loop else (0, 0)
        modes = 1 | (4 if loop else 0)
        h = b"wave".ljust(7, b"\0") + b"\0"
        h += struct.pack("<3IH3IhB", len(pcm), 2 * start, 2 * end, rate, int(low * 1000), int(high * 1000),
                         int(root * 1000), 0, 7)
        h += bytes(12 + 6) + bytes([modes]) + bytes(4) + bytes(36)
        assert len(h) == 96
        body += h + pcm
    return head + body


def _sine(hz: float, rate: int, seconds: float) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def _patch_set(root: Path) -> Path:
    folder = root / "usr/share/midi/freepats"
    (folder / "Tone_000").mkdir(parents=True)
    (folder / "Drum_000").mkdir()
    period = 100  # 441 Hz at 44100: a loop of whole periods
    tone = _sine(441.0, 44100, 0.5)
    for program in (0, 33):
        (folder / f"Tone_000/{program:03d}_Test.pat").write_bytes(
            _pat([(tone, 44100, 8.0, 20000.0, 441.0, (len(tone) - 10 * period, len(tone)))]))
    noise = np.random.default_rng(0).standard_normal(4000) * np.exp(-np.arange(4000) / 600)
    for key in (36, 38, 42):
        (folder / f"Drum_000/{key:03d}_Hit.pat").write_bytes(_pat([(noise, 44100, 0.0, 20000.0, 261.6, None)]))
    return folder


def test_a_note_sounds_at_its_pitch_loops_while_held_and_releases(tmp_path):
    folder = _patch_set(tmp_path)
    assert patches.find_patch_sets_under(tmp_path) == [folder]
    out = patches.render_events(folder, SR, 3 * SR, {0: (0, 0)}, [(0, Note(0.0, 2.0, 69.0, 1.0))], {0: 0.0})
    mono = out.mean(axis=0)
    spectrum = np.abs(np.fft.rfft(mono[:SR]))
    assert abs(np.argmax(spectrum) - 440.0) < 3.0  # a 1-s window: 1-Hz bins
    held, released = np.sqrt(np.mean(mono[int(1.5 * SR):2 * SR] ** 2)), np.sqrt(np.mean(mono[int(2.5 * SR):] ** 2))
    assert held > 0.3 and released < held / 100
    assert np.allclose(out[0], out[1])  # centred
    # A program the set lacks plays its GM family's nearest (34 -> 33), voices never stand in for strings.
    bass = patches.render_events(folder, SR, SR, {0: (0, 34)}, [(0, Note(0.0, 0.5, 40.0, 0.8))], {})
    choir = patches.render_events(folder, SR, SR, {0: (0, 52)}, [(0, Note(0.0, 0.5, 60.0, 0.8))], {})
    assert np.abs(bass).max() > 0.05 and not choir.any()


def test_hostile_patch_files_are_refused_within_bounds(tmp_path):
    good = _pat([(_sine(441.0, 44100, 0.1), 44100, 8.0, 20000.0, 441.0, None)])
    cases = {
        "magic": b"RIFF" + good[4:],
        "truncated": good[:-100],
        "header_only": good[:239],
        "huge_size": good[:239 + 8] + struct.pack("<I", 2**31) + good[239 + 12:],
        "bad_rate": good[:239 + 20] + struct.pack("<H", 10) + good[239 + 22:],
    }
    for name, raw in cases.items():
        path = tmp_path / f"{name}.pat"
        path.write_bytes(raw)
        assert patches.read_patch(path) == (), name
    (tmp_path / "ok.pat").write_bytes(good)
    assert len(patches.read_patch(tmp_path / "ok.pat")) == 1


def test_freepats_is_a_train_split_soundfont_and_songs_through_it_are_exact(tmp_path):
    folder = _patch_set(tmp_path)
    assert library.find_library(tmp_path, "train").soundfonts == (folder,)
    assert library.find_library(tmp_path, "valid").soundfonts == ()
    sf.check(folder)  # no libfluidsynth needed
    a, b = (render_song(3, 3.0, SR, soundfont=folder, soundfont_share=1.0) for _ in range(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(a["mixture"], a["drums"] + a["bass"] + a["other"] + a["vocals"])
    assert not np.allclose(a["bass"], render_song(3, 3.0, SR)["bass"], atol=1e-3)
