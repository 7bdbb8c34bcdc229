"""stemsplit.pipeline: one file in, stem files out — two stems, clipping, rates, atomicity."""
from __future__ import annotations

import errno
import os

import pytest
import soundfile as sf
import torch
from conftest import GainModel, gain_expected, read_audio, tone

from stemsplit.audio import encode as audio
from stemsplit.errors import AudioError, ModelError
from stemsplit.pipeline import OutputOptions, output_stems, separate_file
from stemsplit.engine.separator import Separator


def _targets(folder, names, ext="wav"):
    return {name: folder / f"{name}.{ext}" for name in names}


def _read(path):
    return torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T.copy())


@pytest.mark.parametrize("keep_samplerate", [True, False])
def test_two_stems_sum_back_to_the_input(tmp_path, keep_samplerate):
    src = tmp_path / "in.wav"
    sf.write(src, tone(1.3, 11025, 1), 11025, subtype="FLOAT")
    model = GainModel(samplerate=8000, segment=0.5, gains=(0.7, 0.1, 0.1, 0.1))
    targets = _targets(tmp_path / "out", output_stems(model.sources, None, "drums"))
    options = OutputOptions(bit_depth=32, clip="none", keep_samplerate=keep_samplerate)
    result = separate_file(src, Separator(model, device="cpu", shifts=1), targets, options, two_stems="drums")
    drums, rest = _read(targets["drums"]), _read(targets["no_drums"])
    rate = 11025 if keep_samplerate else 8000
    assert result.samplerate == rate and sf.info(targets["drums"]).samplerate == rate
    assert drums.shape[0] == 1  # mono in, mono out
    if keep_samplerate:
        original = _read(src)
        assert drums.shape == original.shape
    else:
        
        original = read_audio(src, 8000, 1)[0]
    assert (drums + rest - original).abs().max() < 1e-6
    assert drums.abs().max() > 0.1


def test_rescale_uses_one_factor_for_all_stems(tmp_path):
    src = tmp_path / "loud.wav"
    data = tone(1.0, 8000, 2) * 3.0  # peaks near 1.5: the gain-4 stem would clip
    sf.write(src, data, 8000, subtype="FLOAT")
    model = GainModel(samplerate=8000, gains=(1.0, 0.5, 0.25, 0.125))
    targets = _targets(tmp_path, model.sources)
    result = separate_file(src, Separator(model, device="cpu"), targets, OutputOptions(bit_depth=32))
    stems = {name: _read(path) for name, path in targets.items()}
    peak = max(float(s.abs().max()) for s in stems.values())
    assert result.scale < 1 and peak <= 1 / 1.01 + 1e-6
    # one factor for every stem: each is exactly its unscaled value times result.scale
    expected = gain_expected(model, torch.from_numpy(data.T.copy())) * result.scale
    for k, name in enumerate(model.sources):
        assert (stems[name] - expected[k]).abs().max() < 1e-5
    assert list(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_clamp_and_none(tmp_path):
    src = tmp_path / "loud.wav"
    sf.write(src, tone(0.5, 8000, 2) * 4.0, 8000, subtype="FLOAT")
    model = GainModel(samplerate=8000, gains=(1.0, 1.0, 1.0, 1.0))
    clamped = _targets(tmp_path / "c", ["drums"])
    separate_file(src, Separator(model, device="cpu"), clamped, OutputOptions(bit_depth=32, clip="clamp"))
    assert float(_read(clamped["drums"]).abs().max()) == 1.0
    raw = _targets(tmp_path / "n", ["drums"])
    separate_file(src, Separator(model, device="cpu"), raw, OutputOptions(bit_depth=32, clip="none"))
    assert float(_read(raw["drums"]).abs().max()) > 1.5


def test_formats_and_bit_depths(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, tone(1.0, 44100, 2), 44100)
    model = GainModel(samplerate=44100)
    for fmt, depth, subtype in [("flac", 24, "PCM_24"), ("mp3", 16, "MPEG_LAYER_III"), ("wav", 16, "PCM_16")]:
        targets = _targets(tmp_path / fmt, ["vocals"], fmt)
        separate_file(src, Separator(model, device="cpu"), targets, OutputOptions(fmt=fmt, bit_depth=depth))
        assert sf.info(targets["vocals"]).subtype == subtype


@pytest.mark.parametrize("clip", ["rescale", "none"])
def test_stems_too_long_for_wav_sizes_are_rf64(tmp_path, monkeypatch, clip):
    """The stems' length is known before they are written: one past the (lowered) limit is RF64."""
    monkeypatch.setattr(audio, "_WAV_DATA_LIMIT", 2 * 2 * 8000 - 1)  # one second, stereo, 16 bit
    src = tmp_path / "in.wav"
    sf.write(src, tone(1.0, 8000, 2), 8000)
    targets = _targets(tmp_path / "out", ["vocals"])
    separate_file(src, Separator(GainModel(), device="cpu"), targets, OutputOptions(clip=clip))
    info = sf.info(targets["vocals"])
    assert (info.format, info.frames) == ("RF64", 8000)


@pytest.mark.parametrize("options", [OutputOptions(fmt="flac", bit_depth=32), OutputOptions(fmt="ogg"),
                                     OutputOptions(fmt="mp3", mp3_bitrate=100)])
def test_an_impossible_output_format_is_refused_before_separating(tmp_path, options):
    """With the default clip="rescale" the writers were opened after the whole separation."""
    src = tmp_path / "in.wav"
    sf.write(src, tone(1.0, 8000, 2), 8000)
    model = GainModel()
    with pytest.raises(ValueError):
        separate_file(src, Separator(model, device="cpu"), _targets(tmp_path / "out", ["vocals"]), options)
    assert model.calls == 0 and not (tmp_path / "out").exists()


class _Overflow(GainModel):
    """Half precision overflowing in the middle of a track: one segment comes out NaN."""

    def forward(self, mix):
        out = super().forward(mix)
        return out.fill_(float("nan")) if self.calls == 2 else out


@pytest.mark.parametrize("clip", ["rescale", "clamp", "none"])
def test_a_nan_estimate_fails_the_track_and_writes_nothing(tmp_path, clip):
    """NaN passed every clip mode into the stem files (the peak skipped it, clamping kept it)."""
    src = tmp_path / "in.wav"
    sf.write(src, tone(3.0, 8000, 2), 8000)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="NaN or infinite"):
        separate_file(src, Separator(_Overflow(segment=1.0), device="cpu"), _targets(out, ["vocals", "bass"]),
                      OutputOptions(clip=clip))
    assert not out.exists()


def test_output_stem_names():
    sources = ["drums", "bass", "other", "vocals"]
    assert output_stems(sources, None, None) == sources
    assert output_stems(sources, ["vocals", "drums", "vocals"], None) == ["vocals", "drums"]
    assert output_stems(sources, None, "vocals") == ["vocals", "no_vocals"]
    with pytest.raises(ModelError, match="unknown stem"):
        output_stems(sources, ["flute"], None)


@pytest.mark.parametrize("clip", ["rescale", "none"])
def test_disk_full_mid_track_leaves_no_files(tmp_path, monkeypatch, clip):
    src = tmp_path / "in.wav"
    sf.write(src, tone(3.0, 8000, 2), 8000)
    out = tmp_path / "out"
    out.mkdir()
    (out / "drums.wav").write_bytes(b"old")
    calls = {"n": 0}
    original_write = sf.SoundFile.write

    def full_disk(self, data):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", full_disk)
    model = GainModel(samplerate=8000, segment=0.5)
    with pytest.raises(AudioError, match="no space left on device"):
        separate_file(src, Separator(model, device="cpu"), _targets(out, model.sources), OutputOptions(clip=clip))
    assert sorted(p.name for p in out.iterdir()) == ["drums.wav"]
    assert (out / "drums.wav").read_bytes() == b"old"


# Over an earlier run's 4 stems, renames 1-4 move them aside and 5-8 place the new ones;
# into an empty folder, renames 1-4 place the new stems.
@pytest.mark.parametrize("earlier, failing", [(True, 1), (True, 4), (True, 5), (True, 6), (True, 8),
                                              (False, 1), (False, 2), (False, 4)])
@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_a_failed_rename_keeps_the_stem_set_whole(tmp_path, monkeypatch, earlier, failing, error):
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.5, 8000, 2), 8000)
    out = tmp_path / "out"
    targets = _targets(out, GainModel().sources)
    if earlier:
        separate_file(src, Separator(GainModel(gains=(0.1, 0.2, 0.3, 0.4)), device="cpu"), targets, OutputOptions())
    before = {p.name: p.read_bytes() for p in out.iterdir()} if earlier else {}
    calls = {"n": 0}
    replace = os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == failing:
            raise error(errno.EACCES, "Permission denied") if error is OSError else error()
        replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    model = GainModel(gains=(0.4, 0.3, 0.2, 0.1))  # other stems than the earlier run's
    with pytest.raises(AudioError if error is OSError else KeyboardInterrupt) as caught:
        separate_file(src, Separator(model, device="cpu"), targets, OutputOptions())
    monkeypatch.undo()
    if error is OSError:  # one line naming the stem file that could not be placed
        assert any(str(caught.value) == f"{path}: cannot write (Permission denied)" for path in targets.values())
    after = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}
    assert after == before  # the earlier stems byte for byte (or none), and no hidden file


def test_interrupt_during_separation_leaves_no_files(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, tone(3.0, 8000, 2), 8000)
    out = tmp_path / "out"

    def interrupt(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    model = GainModel(samplerate=8000, segment=0.5)
    with pytest.raises(KeyboardInterrupt):
        separate_file(src, Separator(model, device="cpu", progress=interrupt), _targets(out, model.sources),
                      OutputOptions(clip="none"))
    assert not out.exists()  # no stems, no temporary files, and not the folder it made for them


@pytest.mark.parametrize("rate, written", [(96000, 48000), (6000, 8000)])
def test_mp3_of_a_rate_mp3_cannot_hold_is_written_at_the_nearest_mp3_rate(tmp_path, rate, written):
    """`--format mp3` on a 96 kHz file failed after the whole separation ("MPEG-1/2/2.5 only supports
    sample rates of ..."); no_STEM is then made at the model's rate and still sums back to the mix."""
    src = tmp_path / "hires.wav"
    sf.write(src, tone(0.5, rate, 2), rate, subtype="FLOAT")
    model = GainModel(samplerate=8000, segment=0.5, gains=(0.7, 0.1, 0.1, 0.1))
    targets = _targets(tmp_path / "out", output_stems(model.sources, None, "drums"), "mp3")
    result = separate_file(src, Separator(model, device="cpu"), targets, OutputOptions(fmt="mp3", clip="none"),
                           two_stems="drums")
    assert result.samplerate == written
    drums, rest = _read(targets["drums"]), _read(targets["no_drums"])
    assert sf.info(targets["drums"]).samplerate == written and drums.shape[0] == 2
    assert abs(drums.shape[-1] - written // 2) < written // 10  # codec padding only
    from stemsplit.audio.resample import resample

    mix = resample(read_audio(src, 8000, 2)[0], 8000, written)  # what the model saw, at the output rate
    n = min(mix.shape[-1], drums.shape[-1])
    error = (drums + rest)[:, :n] - mix[:, :n]
    assert float(error.pow(2).mean()) < 0.01 * float(mix.pow(2).mean())  # MP3 coding noise only


def test_stems_at_the_input_rate_keep_its_last_samples(tmp_path):
    """11025 Hz in, an 8000 Hz model: the round trip rounds the length down twice. The lost samples
    were written as zeros, a click at the end of every stem (and the stems no longer summed to the input)."""
    import math

    rate, frames = 11025, 14331  # loses two samples there and back
    t = torch.arange(frames) / rate
    mix = (0.5 + 0.2 * torch.sin(2 * math.pi * 100 * t)).repeat(2, 1)
    src = tmp_path / "in.wav"
    sf.write(src, mix.T.numpy(), rate, subtype="FLOAT")
    model = GainModel(samplerate=8000, segment=0.5)
    targets = _targets(tmp_path / "out", model.sources)
    options = OutputOptions(bit_depth=32, clip="none", keep_samplerate=True)
    separate_file(src, Separator(model, device="cpu"), targets, options)
    for expected, name in zip(gain_expected(model, mix), model.sources):
        stem = _read(targets[name])
        assert stem.shape == mix.shape
        assert (stem[:, -3:] - expected[:, -3:]).abs().max() < 0.02, name
