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


def test_drum_only_soundfonts_are_train_kits_and_never_general_midi_fonts(tmp_path):
    from stemsplit.synth.samples import library, sf2kit

    fonts = tmp_path / "usr/share/sounds/sf2"
    fonts.mkdir(parents=True)
    (fonts / "Black_Pearl_4_LV2.sf2").write_bytes(b"RIFF")  # not a usable soundfont
    train = library.find_library(tmp_path, "train")
    assert [k.name for k in train.kits] == ["sf2/Black_Pearl_4_LV2"] and train.soundfonts == ()
    assert library.find_library(tmp_path, "valid").kits == ()
    # Unusable (a broken file, or no libfluidsynth): no kit, and songs fall back to procedural drums.
    assert sf2kit.load_kit(fonts / "Black_Pearl_4_LV2.sf2") == {}
    a, b = (render_song(2, 1.5, 22050, samples=tmp_path, sample_share=1.0) for _ in range(2))
    assert np.array_equal(a["drums"], b["drums"])


@needs_fluidsynth
def test_a_drum_soundfont_plays_as_a_multi_velocity_recorded_kit(tmp_path, monkeypatch):
    import functools
    import os
    import shutil

    from stemsplit.synth.samples import hydrogen, sf2kit

    font = _smallest_soundfont()
    gm_kit = (128, 0)  # a General MIDI font's standard kit stands in for avldrums' bank 0 kit
    kit = sf2kit.load_kit(font, gm_kit)
    assert {"kick", "snare", "hat_closed", "crash"} <= set(kit) <= set(sf2kit.PIECES)
    assert [la.hit[3] for la in kit["kick"][0].layers] == [v for _, _, v in sf2kit.LAYERS]
    player = hydrogen.KitPlayer(np.random.default_rng(0), kit, 22050)
    soft, hard = player.hit("kick", 0.2), player.hit("kick", 0.9)
    assert soft[0].ndim == 1 and soft[0].dtype == np.float32 and np.max(np.abs(soft[0])) < np.max(np.abs(hard[0]))
    assert np.array_equal(player.hit("kick", 0.9)[0], hard[0])

    fonts = tmp_path / "usr/share/sounds/sf2"
    fonts.mkdir(parents=True)
    try:
        os.link(font, fonts / "Test_Kit_LV2.sf2")
    except OSError:
        shutil.copyfile(font, fonts / "Test_Kit_LV2.sf2")
    monkeypatch.setattr(sf2kit, "load_kit", functools.partial(sf2kit.load_kit, preset=gm_kit))
    played = []
    rendered = hydrogen._rendered
    monkeypatch.setattr(hydrogen, "_rendered", lambda layer, sr: played.append(layer.hit) or rendered(layer, sr))
    a, b = (render_song(5, 2.0, 22050, samples=tmp_path, sample_share=1.0) for _ in range(2))
    assert {"kick", "snare"} <= {hit[2] for hit in played}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(a["mixture"], a["drums"] + a["bass"] + a["other"] + a["vocals"])
