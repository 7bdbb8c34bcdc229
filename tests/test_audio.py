"""stemsplit.audio: decoding every format, streaming resampling, bad inputs, atomic writers."""
from __future__ import annotations

import errno
import shutil
import subprocess
import sys

import julius
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import AUDIO_SPECS, read_audio, tone, write_audio

from stemsplit.audio import decode as audio
from stemsplit.audio.decode import load_audio
from stemsplit.audio import encode
from stemsplit.audio.encode import AudioWriter
from stemsplit.audio.resample import StreamResampler
from stemsplit.errors import AudioError

LOSSLESS = {"stereo.wav", "mono.wav", "hi24.flac", "song.aiff", "low.wav", "max.wav", "mono48.flac"}


@pytest.mark.parametrize("name", sorted(AUDIO_SPECS))
def test_reads_every_format_at_its_rate(audio_dir, name):
    rate, channels, _ = AUDIO_SPECS[name]
    wav, sr = read_audio(audio_dir / name)
    assert sr == rate and wav.dtype == torch.float32 and wav.shape[0] == channels
    if name in LOSSLESS:
        expected = sf.read(audio_dir / name, dtype="float32", always_2d=True)[0].T
        assert wav.shape[-1] == int(1.2 * rate)
        assert np.abs(wav.numpy() - expected).max() < 1e-6
    else:
        assert abs(wav.shape[-1] - int(1.2 * rate)) < 0.1 * rate  # codec padding only


@pytest.mark.parametrize("name", ["low.wav", "song.aiff", "mono48.flac", "hi24.flac", "max.wav"])
def test_resamples_to_model_rate_and_channels(audio_dir, name):
    rate, channels, _ = AUDIO_SPECS[name]
    loaded = load_audio(audio_dir / name, 44100, 2)
    native, _ = read_audio(audio_dir / name)
    assert loaded.samplerate == 44100 and loaded.wav.shape[0] == 2
    assert loaded.native_samplerate == rate and loaded.native_channels == channels
    expected = julius.resample_frac(native.expand(2, -1), rate, 44100)
    assert loaded.wav.shape == expected.shape
    assert (loaded.wav - expected).abs().max() < 1e-5
    if channels == 1:
        assert torch.equal(loaded.wav[0], loaded.wav[1])


def test_stereo_to_mono_is_the_channel_mean(audio_dir):
    stereo, _ = read_audio(audio_dir / "stereo.wav")
    mono, _ = read_audio(audio_dir / "stereo.wav", channels=1)
    assert torch.allclose(mono[0], stereo.mean(0))


@pytest.mark.parametrize("rates", [(44100, 48000), (48000, 44100), (8000, 44100), (192000, 44100), (96000, 44100)])
def test_streaming_resampler_matches_one_julius_call(rates):
    old, new = rates
    x = torch.randn(2, 50_003, generator=torch.Generator().manual_seed(1))
    resampler = StreamResampler(old, new)
    pieces, start = [], 0
    for size in [1, 4000, 17, 20_000, 3, 30_000]:
        pieces.append(resampler.push(x[:, start : start + size]))
        start += size
    pieces.append(resampler.flush())
    streamed = torch.cat(pieces, -1)
    full = julius.resample_frac(x, old, new)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max() < 1e-6


def test_irregular_rate_ratio_is_refused_clearly(tmp_path):
    path = tmp_path / "odd.wav"
    sf.write(path, tone(0.1, 44101, 2), 44101)
    with pytest.raises(AudioError, match=r"odd\.wav.*44101 Hz"):
        read_audio(path, samplerate=44100)


def test_more_than_two_channels_is_refused_when_converting(tmp_path):
    path = tmp_path / "surround.wav"
    sf.write(path, np.zeros((1000, 6), np.float32), 44100)
    assert read_audio(path)[0].shape == (6, 1000)
    with pytest.raises(AudioError, match=r"surround\.wav: has 6 channels"):
        read_audio(path, channels=2)


@pytest.mark.parametrize("suffix, opener", [("wav", "_soundfile_source"), ("m4a", "_ffmpeg_source")])
def test_refused_input_releases_its_decoder_at_once(tmp_path, monkeypatch, suffix, opener):
    """An input refused right after opening must not hold a file handle or an ffmpeg process
    until garbage collection (a batch would pile them up)."""
    if suffix == "m4a" and shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg on PATH")
    wav = tmp_path / "surround.wav"
    sf.write(wav, np.zeros((4410, 6), np.float32), 44100)
    path = wav
    if suffix == "m4a":
        path = tmp_path / "surround.m4a"
        subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", str(path)],
                       check=True)
    released = []
    original = getattr(audio, opener)

    def spying(*args):
        source = original(*args)
        release = source.close
        source.close = lambda: (released.append(release), release())
        return source

    monkeypatch.setattr(audio, opener, spying)
    with pytest.raises(AudioError, match=r"surround\.\w+: has 6 channels"):
        read_audio(path, channels=2)
    assert len(released) == 1
    if suffix == "wav":  # the decoder's close is the SoundFile's own method
        assert released[0].__self__.closed


def _truncate(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d, t: t / "missing.wav", "no such file"),
        (lambda d, t: t, "is a folder"),
        (lambda d, t: (t / "text.mp3").write_text("not audio at all\n" * 50) and t / "text.mp3", "not a recognised audio file"),
        (lambda d, t: _truncate(d / "stereo.wav", t / "cut.wav"), "truncated"),
        (lambda d, t: _truncate(d / "song.aiff", t / "cut.aiff"), "truncated"),
        (lambda d, t: _truncate(d / "song.ogg", t / "cut.ogg"), "truncated"),
        (lambda d, t: _truncate(d / "hi24.flac", t / "cut.flac"), "corrupted|truncated"),
    ],
    ids=["missing", "folder", "text-renamed-mp3", "truncated-wav", "truncated-aiff", "truncated-ogg", "truncated-flac"],
)
def test_bad_inputs_raise_one_line_errors_naming_the_file(audio_dir, tmp_path, make, pattern):
    path = make(audio_dir, tmp_path)
    with pytest.raises(AudioError, match=pattern) as info:
        read_audio(path, 44100, 2)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2), np.float32), 44100)
    with pytest.raises(AudioError, match=r"empty\.wav: contains no audio samples"):
        read_audio(path)


def test_nan_and_inf_samples_are_errors(tmp_path):
    for bad in (np.nan, np.inf):
        data = tone(0.5, 8000, 2)
        data[100, 1] = bad
        path = tmp_path / "bad.wav"
        sf.write(path, data, 8000, subtype="FLOAT")
        with pytest.raises(AudioError, match=r"bad\.wav: contains NaN or infinite samples \(first at frame 100\)"):
            read_audio(path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")
def test_m4a_is_decoded_through_ffmpeg(audio_dir):
    wav, sr = read_audio(audio_dir / "song.m4a", 44100, 2)
    reference, _ = read_audio(audio_dir / "stereo.wav")
    assert sr == 44100 and wav.shape[0] == 2 and wav.shape[-1] >= reference.shape[-1]
    # AAC adds a priming delay; the decoded signal must still correlate with the source
    best = max(float(torch.nn.functional.cosine_similarity(
        wav[0, d : d + 40_000], reference[0, :40_000], dim=0)) for d in range(0, 3000, 1))
    assert best > 0.95


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")
def test_mono_input_through_ffmpeg_prints_no_warning(tmp_path):
    """A mono block wrapped the pipe's read-only bytes as is, and torch printed a UserWarning on
    stderr. torch warns once per process, so the decoding runs in a fresh one."""
    path = tmp_path / "mono.m4a"
    sf.write(tmp_path / "mono.wav", tone(0.5, 44100, 1), 44100)
    subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-i", str(tmp_path / "mono.wav"), "-c:a", "aac",
                    str(path)], check=True)
    code = f"from stemsplit.audio.decode import load_audio; print(load_audio({str(path)!r}, 44100, 2).wav.shape)"
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stderr == "", run.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")
def test_ffmpeg_failure_names_the_file(tmp_path):
    path = tmp_path / "junk.m4a"
    path.write_bytes(b"\x00" * 5000)
    with pytest.raises(AudioError, match=r"junk\.m4a: not a readable audio file \(ffmpeg"):
        read_audio(path)


def test_without_ffmpeg_other_containers_get_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"\x00" * 100)
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(AudioError, match=r"clip\.m4a: cannot decode \.m4a files without ffmpeg"):
        read_audio(path)


def _mp3_without_length_header(path, data, mode):
    """An MP3 as many encoders, rippers and cutters leave them: no Xing/Info header with its length."""
    sf.write(path, data, 44100, format="MP3", bitrate_mode=mode, compression_level=0.5)
    raw = path.read_bytes()
    head = raw[:200].replace(b"Xing", b"Junk", 1).replace(b"Info", b"Junk", 1)
    assert head != raw[:200]
    path.write_bytes(head + raw[200:])
    return path


def test_constant_bitrate_mp3_without_length_header_is_not_called_truncated(tmp_path, monkeypatch):
    """libsndfile's length for such a file is a guess from the file size, larger than the truth."""
    path = _mp3_without_length_header(tmp_path / "cbr.mp3", tone(2.0, 44100, 2), "CONSTANT")
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    wav, _ = read_audio(path)
    assert 88200 <= wav.shape[-1] < 88200 + 4410


def _loud_then_quiet_vbr(tmp_path):
    """A VBR MP3 whose loud first frames make libsndfile guess a length well short of the truth."""
    noise = 0.5 * np.random.default_rng(0).standard_normal((44100, 2))
    data = np.concatenate([noise, np.zeros((5 * 44100, 2))]).astype(np.float32)
    return _mp3_without_length_header(tmp_path / "vbr.mp3", data, "VARIABLE")


def test_vbr_mp3_without_length_header_is_never_silently_cut_short(tmp_path, monkeypatch):
    path = _loud_then_quiet_vbr(tmp_path)
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(AudioError, match=r"vbr\.mp3: this MP3 has no length header.*install ffmpeg"):
        read_audio(path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")
def test_vbr_mp3_without_length_header_is_read_whole_with_ffmpeg(tmp_path):
    wav, _ = read_audio(_loud_then_quiet_vbr(tmp_path))
    assert 6 * 44100 <= wav.shape[-1] < 6 * 44100 + 4410


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")
def test_flac_stream_of_unknown_length_is_read_to_its_end(tmp_path):
    """A FLAC written to a pipe (`ffmpeg -f flac -`) leaves STREAMINFO's total-samples field 0,
    which libsndfile reports as 2**63-1 frames: the file is read until its frames end."""
    x = (np.random.default_rng(0).random((44100, 2)) - 0.5).astype(np.float32)
    path = tmp_path / "piped.flac"
    sf.write(path, x, 44100)
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    data[21] &= 0xF0  # the 36-bit total-samples field starts at the low nibble of byte 21
    data[22:26] = bytes(4)
    path.write_bytes(bytes(data))
    loaded = load_audio(path)
    assert loaded.wav.shape == (2, 44100)
    assert torch.allclose(loaded.wav, torch.from_numpy(x.T), atol=1e-4)


def test_content_named_with_another_extension_goes_to_ffmpeg(audio_dir, tmp_path):
    """An AAC download saved as .mp3 is still read (libsndfile does not know it, ffmpeg does)."""
    path = tmp_path / "download.mp3"
    path.write_bytes((audio_dir / "song.m4a").read_bytes())
    wav, sr = read_audio(path)
    assert sr == 44100 and wav.shape[0] == 2 and abs(wav.shape[-1] - int(1.2 * 44100)) < 4410


def test_truncated_file_without_extension_is_refused(audio_dir, tmp_path):
    """Refused as truncated by libsndfile, never handed on to ffmpeg to decode the part that is left."""
    path = _truncate(audio_dir / "stereo.wav", tmp_path / "cut")
    with pytest.raises(AudioError, match=r"cut: truncated or corrupted file"):
        read_audio(path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")
def test_truncated_container_is_refused_although_ffmpeg_exits_0(tmp_path):
    """A cut download: ffmpeg decodes the first half, reports "partial file" and exits with 0."""
    wav = tmp_path / "long.wav"
    sf.write(wav, tone(4.0, 44100, 2), 44100)
    whole = tmp_path / "whole.m4a"
    subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", "-movflags",
                    "+faststart", str(whole)], check=True)
    path = _truncate(whole, tmp_path / "cut.m4a")
    with pytest.raises(AudioError, match=r"cut\.m4a: not a readable audio file \(ffmpeg: .*partial file") as info:
        read_audio(path)
    assert "@ 0x" not in str(info.value)


@pytest.mark.parametrize(
    "fmt, depth, subtype, tol",
    [("wav", 16, "PCM_16", 1 / 2**14), ("wav", 24, "PCM_24", 1e-6), ("wav", 32, "FLOAT", 0.0),
     ("flac", 16, "PCM_16", 1 / 2**14), ("flac", 24, "PCM_24", 1e-6)],
)
def test_writers_round_trip(tmp_path, fmt, depth, subtype, tol):
    wav = torch.from_numpy(tone(0.5, 44100, 2).T.copy())
    path = tmp_path / f"out.{fmt}"
    write_audio(path, wav, 44100, bit_depth=depth)
    info = sf.info(path)
    assert info.subtype == subtype and info.samplerate == 44100 and info.channels == 2
    back, _ = read_audio(path)
    assert (back - wav).abs().max() <= tol
    assert list(tmp_path.iterdir()) == [path]


def test_integer_outputs_saturate_instead_of_wrapping(tmp_path):
    wav = torch.tensor([[1.5, -1.5, 0.5]])
    write_audio(tmp_path / "loud.wav", wav, 8000)
    back, _ = read_audio(tmp_path / "loud.wav")
    assert back[0, 0] > 0.99 and back[0, 1] < -0.99 and abs(back[0, 2] - 0.5) < 1e-3


@pytest.mark.parametrize("bitrate", [64, 192, 320])
def test_mp3_constant_bitrate(tmp_path, bitrate):
    seconds = 4
    wav = torch.from_numpy(tone(seconds, 44100, 2).T.copy())
    path = tmp_path / "out.mp3"
    write_audio(path, wav, 44100, mp3_bitrate=bitrate)
    kbps = path.stat().st_size * 8 / seconds / 1000
    assert bitrate * 0.97 < kbps < bitrate * 1.06
    assert sf.info(path).format == "MP3"


def test_flac_refuses_float_and_unknown_bitrates_are_refused(tmp_path):
    wav = torch.zeros(2, 100)
    with pytest.raises(ValueError, match="flac cannot be written with bit depth 32"):
        write_audio(tmp_path / "x.flac", wav, 44100, bit_depth=32)
    with pytest.raises(ValueError, match="unsupported MP3 bitrate"):
        write_audio(tmp_path / "x.mp3", wav, 44100, mp3_bitrate=100)
    assert list(tmp_path.iterdir()) == []


def _failing_write(monkeypatch, exc, after=1):
    """Make SoundFile.write fail with `exc` after `after` successful calls."""
    calls = {"n": 0}
    original = sf.SoundFile.write

    def write(self, data):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return original(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", write)


def test_disk_full_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "stem.wav"
    target.write_bytes(b"previous")
    _failing_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    writer = AudioWriter(target, 44100, 2)
    writer.write(torch.zeros(2, 1000))
    with pytest.raises(AudioError, match=r"stem\.wav: cannot write, no space left on device"):
        writer.write(torch.zeros(2, 1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stem.wav"]
    assert target.read_bytes() == b"previous"


def test_interrupt_while_writing_removes_the_temporary_file(tmp_path, monkeypatch):
    _failing_write(monkeypatch, KeyboardInterrupt(), after=0)
    with pytest.raises(KeyboardInterrupt):
        with AudioWriter(tmp_path / "stem.flac", 44100, 2) as writer:
            writer.write(torch.zeros(2, 1000))
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_the_usual_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        target = tmp_path / "stem.wav"
        write_audio(target, torch.zeros(2, 100), 44100)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_streamed_writer_equals_one_shot_write(tmp_path):
    wav = torch.from_numpy(tone(1.0, 22050, 2).T.copy())
    with AudioWriter(tmp_path / "a.wav", 22050, 2, bit_depth=32) as writer:
        for start in range(0, wav.shape[-1], 1000):
            writer.write(wav[:, start : start + 1000])
    back, _ = read_audio(tmp_path / "a.wav")
    assert torch.equal(back, wav)


@pytest.mark.parametrize("depth, limit, container", [(16, 4 * 22050 - 1, "RF64"), (16, 4 * 22050, "WAV"),
                                                     (24, 6 * 22050 - 1, "RF64"), (32, 8 * 22050 - 1, "RF64")])
def test_a_wav_past_its_32_bit_sizes_is_written_as_rf64(tmp_path, monkeypatch, depth, limit, container):
    """Past 4 GiB of samples a plain WAV's header gave readers an eighth of the audio; the limit is
    lowered here to the size of one second of stereo."""
    monkeypatch.setattr(encode, "_WAV_DATA_LIMIT", limit)
    wav = torch.from_numpy(tone(1.0, 22050, 2).T.copy())
    write_audio(tmp_path / "a.wav", wav, 22050, bit_depth=depth)
    assert sf.info(tmp_path / "a.wav").format == container
    back, _ = read_audio(tmp_path / "a.wav")
    assert back.shape == wav.shape and torch.allclose(back, wav, atol=1e-4)


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AudioError, match=r"file/out\.wav: cannot write"):
        write_audio(blocker / "out.wav", torch.zeros(2, 10), 44100)
