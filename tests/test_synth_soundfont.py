"""Optional soundfont rendering (libfluidsynth + a General MIDI soundfont); skipped when absent."""
from __future__ import annotations

import ctypes.util

import numpy as np
import pytest

from stemsplit.errors import DataError
from stemsplit.synth import render_song
from stemsplit.synth import soundfont as sf


def _smallest_soundfont():
    fonts = sf.find_soundfonts()
    return min(fonts, key=lambda p: p.stat().st_size) if fonts else None


needs_fluidsynth = pytest.mark.skipif(
    ctypes.util.find_library("fluidsynth") is None or _smallest_soundfont() is None,
    reason="libfluidsynth or a General MIDI soundfont is not installed (scripts/install_soundfonts.sh)",
)


def test_missing_soundfont_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.sf2"):
        render_song(0, 1.0, soundfont=tmp_path / "nope.sf2", soundfont_share=1.0)


def test_reserved_soundfonts_are_never_found():
    assert not any("fluidr3" in p.name.lower() for p in sf.find_soundfonts())


def test_auto_draws_only_the_split_s_soundfonts(tmp_path, monkeypatch):
    """Songs on recorded material keep "auto" inside their split (TimGM6mb is the valid split's),
    so a training song never plays the validation songs' soundfont; without a split any font."""
    fonts = [tmp_path / "MuseScore_General.sf3", tmp_path / "TimGM6mb.sf2"]
    monkeypatch.setattr(sf, "find_soundfonts", lambda: fonts)
    rng = np.random.default_rng(0)
    assert {sf.resolve("auto", rng, "train") for _ in range(20)} == {fonts[0]}
    assert {sf.resolve("auto", rng, "valid") for _ in range(20)} == {fonts[1]}
    assert {sf.resolve("auto", rng) for _ in range(20)} == set(fonts)
    monkeypatch.setattr(sf, "find_soundfonts", lambda: fonts[:1])
    with pytest.raises(DataError, match="valid split"):
        sf.resolve("auto", rng, "valid")


@needs_fluidsynth
def test_soundfont_stems_are_deterministic_and_sum_exactly():
    font = _smallest_soundfont()
    a = render_song(3, 3.0, soundfont=font, soundfont_share=1.0)
    b = render_song(3, 3.0, soundfont=font, soundfont_share=1.0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(a["mixture"], a["drums"] + a["bass"] + a["other"] + a["vocals"])
    procedural = render_song(3, 3.0)
    assert not np.allclose(a["drums"], procedural["drums"], atol=1e-3)


@needs_fluidsynth
def test_each_stem_renders_through_the_soundfont():
    from stemsplit.synth import compose

    font = _smallest_soundfont()
    rng = np.random.default_rng(0)
    plan = compose.make_plan(rng, 4.0, styles=("pop",))
    for section in plan.sections:
        section.active.update({s: True for s in compose.STEMS})
        section.intensity = 0.9
    for stem in ("drums", "bass", "other", "vocals"):
        audio = sf.render_stem(np.random.default_rng(1), plan, 22050, 4 * 22050, stem, font)
        assert audio.shape == (2, 4 * 22050) and audio.dtype == np.float32
        assert np.isfinite(audio).all() and np.sqrt(np.mean(audio ** 2)) > 1e-4, stem


def test_a_soundfont_fluidsynth_refuses_leaves_no_synth_behind(tmp_path, monkeypatch):
    """The warm-cache keeper frees its synth and settings when the load fails (a batch of bad
    fonts would otherwise leak one synth each)."""
    calls = []

    class FakeLib:
        def new_fluid_settings(self):
            return 11

        def new_fluid_synth(self, settings):
            return 22

        def fluid_synth_sfload(self, synth, path, reset):
            return -1

        def delete_fluid_synth(self, synth):
            calls.append(("synth", synth))

        def delete_fluid_settings(self, settings):
            calls.append(("settings", settings))

    monkeypatch.setattr(sf, "_lib", FakeLib)
    font = tmp_path / "broken.sf2"
    font.write_bytes(b"RIFF junk")
    with pytest.raises(DataError, match=r"broken\.sf2: fluidsynth cannot load this soundfont"):
        sf._keep_loaded(font)
    assert calls == [("synth", 22), ("settings", 11)]
    assert not any(str(font) in key for key in sf._KEEPERS)
