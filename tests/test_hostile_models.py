"""Hostile model files: bag files, checkpoint metadata, official packages and training configs
whose values would size memory, time or recursion without bound, and paths that are not files.
Each is refused in one short line naming the file and the field or cause, before the work."""
import errno
import json
import os

import pytest
import soundfile
import torch
import yaml
from conftest import run_cli, tone
from test_checkpoint import official_model, official_package, tiny, write_native

from stemsplit.errors import CheckpointError, ConfigError, DownloadError, ModelError
from stemsplit.models import checkpoint, download, registry, resolve
from stemsplit.train.config import load_yaml as load_config


def one_short_line(exc_info, limit=400):
    text = str(exc_info.value)
    assert "\n" not in text and len(text) <= limit, text
    return text


def alias_tower(levels, width=9):
    """The "billion laughs": each level a list of `width` aliases of the level below. At 8 levels
    this 454-byte bag held 9**8 = 43M member names and took 11.7 GB to expand; 5 levels keep this
    test harmless even where aliases would be expanded."""
    lines = ["a0: &a0 x"]
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    lines.append(f"models: *a{levels}")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_in_a_bag_are_refused_before_they_expand(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_tower(5))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(path)
    assert "bomb.yaml is not a readable bag file: YAML aliases and anchors" in one_short_line(info)


def test_a_bag_file_is_capped_in_size_and_members(tmp_path):
    checkpoint.save_checkpoint(tiny("HDemucs"), tmp_path / "a.safetensors")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"models": ["a.safetensors"], "note": "x" * (2 << 20)}))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(big)
    assert "big.json is not a readable bag file: larger than" in one_short_line(info)
    many = tmp_path / "many.yaml"
    many.write_text(yaml.safe_dump({"models": ["a.safetensors"] * 65}))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(many)
    assert "many.yaml: 'models' lists 65 members, more than the 64" in one_short_line(info)


@pytest.mark.parametrize("suffix, text", [
    (".json", '{"models": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    (".yaml", "models: " + "[" * 100_000 + "]" * 100_000 + "\n"),
])
def test_a_deeply_nested_bag_is_one_line_naming_the_file(tmp_path, suffix, text):
    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(path)
    assert f"deep{suffix} is not a readable bag file: nested deeper than" in one_short_line(info)


def test_an_absolute_member_that_does_not_exist_is_named(tmp_path):
    path = tmp_path / "bag.yaml"
    path.write_text(yaml.safe_dump({"models": ["/nonexistent/x"]}))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(path)
    assert "bag.yaml lists member '/nonexistent/x' but no file" in one_short_line(info)
    assert "exists in /nonexistent" in str(info.value)


def test_a_long_member_name_is_quoted_short(tmp_path):
    path = tmp_path / "bag.json"
    path.write_text(json.dumps({"models": ["m" * 100_000]}))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(path)
    assert "bag.json lists member 'mmm" in one_short_line(info, limit=600)


@pytest.mark.parametrize("changes, message", [
    ({"kwargs.samplerate": 4_410_000}, "samplerate 4410000 is out of range \\(8000..192000\\)"),
    ({"kwargs.samplerate": 44_100_000}, "samplerate 44100000 is out of range"),
    ({"kwargs.samplerate": 44101}, "samplerate 44101 is not a usable model rate: audio at 44100 Hz cannot"),
    ({"kwargs.audio_channels": 64}, "audio_channels 64 is out of range \\(1..8\\)"),
    ({"kwargs.sources": [f"s{i}" for i in range(1000)]}, "sources must be distinct non-empty names \\(32 at most"),
    ({"kwargs.segment": 1e9}, "segment 1000000000.0 is longer than the 600 seconds"),
    ({"segment": 1e9}, "segment 1000000000.0 is longer than the 600 seconds"),
    ({"kwargs.stride": 0}, "cannot build Demucs from the stored kwargs: stride must be a positive integer, got 0"),
    ({"kwargs.channels": 100_000}, "channels 100000 is out of range \\(1..1024\\)"),
    ({"kwargs.depth": 10_000}, "depth 10000 is out of range"),
    ({"kwargs.lstm_layers": 1000}, "lstm_layers 1000 is out of range"),
    ({"kwargs.kernel_size": 1 << 20}, "kernel_size 1048576 is out of range"),
    ({"kwargs.growth": 4.0, "kwargs.depth": 12, "kwargs.channels": 1024}, "reach 4294967296, more than the 16384"),
])
def test_native_metadata_that_sizes_work_is_refused_naming_the_field(tmp_path, changes, message):
    path = tmp_path / "hostile.safetensors"
    write_native(path, tiny("Demucs", segment=1.0), **changes)
    with pytest.raises(CheckpointError, match=f"^{path}: .*{message}") as info:
        checkpoint.load_checkpoint(path)
    one_short_line(info)


def test_an_htdemucs_too_large_in_combination_is_refused_before_it_is_built(tmp_path):
    path = tmp_path / "huge.safetensors"
    write_native(path, tiny("HTDemucs"), **{"kwargs.channels": 1024, "kwargs.t_layers": 32,
                                            "kwargs.t_hidden_scale": 16.0, "kwargs.depth": 4})
    with pytest.raises(CheckpointError, match="huge.safetensors: the model has [0-9]+ parameters, more than"):
        checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("kwarg, value, message", [
    ("samplerate", 4_410_000, "samplerate 4410000 is out of range"),
    ("stride", 0, "stride must be a positive integer, got 0"),
    ("nfft", 1 << 24, "nfft 16777216 is out of range"),
    ("channels", 10 ** 5000, "channels <a int too large to show> is out of range"),  # a pickle can hold it
], ids=["samplerate", "stride", "nfft", "huge-int"])
def test_official_package_kwargs_are_held_to_the_same_ranges(tmp_path, kwarg, value, message):
    package = official_package(official_model("HDemucs"))
    package["kwargs"] = dict(package["kwargs"], **{kwarg: value})
    path = tmp_path / "hostile.th"
    torch.save(package, path)
    with pytest.raises(CheckpointError, match=f"hostile.th: .*{message}"):
        checkpoint.load_checkpoint(path)


def test_a_bag_member_is_held_to_the_same_ranges(tmp_path):
    write_native(tmp_path / "member.safetensors", tiny("Demucs", segment=1.0), **{"kwargs.samplerate": 4_410_000})
    (tmp_path / "bag.yaml").write_text(yaml.safe_dump({"models": ["member"]}))
    with pytest.raises(CheckpointError, match="member.safetensors: samplerate 4410000 is out of range"):
        checkpoint.load_checkpoint(tmp_path / "bag.yaml")
    (tmp_path / "long.yaml").write_text(yaml.safe_dump({"models": ["member"], "segment": 36000}))
    with pytest.raises(CheckpointError, match="long.yaml: 'segment' 36000 is longer than the 600 seconds"):
        checkpoint.load_checkpoint(tmp_path / "long.yaml")


def test_an_irregular_model_rate_blames_the_model_not_the_audio(tmp_path):
    soundfile.write(tmp_path / "song.wav", tone(0.5, 44100, 2), 44100)
    write_native(tmp_path / "odd.safetensors", tiny("Demucs", segment=1.0), **{"kwargs.samplerate": 44101})
    result = run_cli("song.wav", "--model-path", "odd.safetensors", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: odd.safetensors: samplerate 44101 is not a usable model rate")
    assert "song.wav" not in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/urandom"), reason="needs /dev/urandom")
def test_a_device_is_not_a_regular_file_rather_than_missing():
    with pytest.raises(ModelError) as info:
        resolve.load_model("/dev/urandom")
    assert one_short_line(info) == "/dev/urandom is not a regular file (a device, fifo or socket), so it cannot be a checkpoint"
    with pytest.raises(CheckpointError, match="/dev/urandom is not a regular file"):
        checkpoint.load_checkpoint("/dev/urandom")


@pytest.mark.parametrize("code, wanted, unwanted", [
    (errno.EACCES, "(permission denied): set $STEMSPLIT_CACHE to a writable folder", "free some space"),
    (errno.EROFS, "(read-only): set $STEMSPLIT_CACHE to a writable folder", "free some space"),
    (errno.ENOSPC, "free some space there", "permission"),
])
def test_cache_write_failures_are_worded_by_their_cause(tmp_path, monkeypatch, online, code, wanted, unwanted):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(registry.REMOTE_ROOT_ENV, "http://127.0.0.1:9/")

    def refuse(partial):
        raise OSError(code, os.strerror(code), str(partial))

    monkeypatch.setattr(download, "_lock_partial", refuse)
    remote = registry.RemoteFile(path="x/955717e8-8726e21a.th", sha256="8726e21a", size=None)
    with pytest.raises(DownloadError) as info:
        download.download_file(remote)
    text = one_short_line(info)
    assert f"model cache folder {tmp_path / 'cache'}" in text and wanted in text and unwanted not in text


def test_a_training_config_gets_the_same_document_bounds(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(alias_tower(5).replace("models:", "sources:"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.yaml: cannot read config (YAML aliases and anchors" in one_short_line(info)
    path.write_text("model_kwargs: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested deeper than"):
        load_config(path)
