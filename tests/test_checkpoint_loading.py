"""How checkpoints are loaded: the weights end up in memory of the model's own (built on the meta
device, tensors read straight from the file), trainable, and independent of the file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stemsplit.models.checkpoint import FORMAT_KEY, encode_json, load_checkpoint, save_checkpoint
from stemsplit.errors import CheckpointError
from stemsplit.nn import HDemucs

SOURCES = ["drums", "bass", "other", "vocals"]


def _tiny() -> HDemucs:
    torch.manual_seed(0)
    return HDemucs(sources=list(SOURCES), channels=4, depth=2, samplerate=8000, segment=1.0).eval()


def test_loaded_weights_are_exact_trainable_and_independent_of_the_file(tmp_path):
    model = _tiny()
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    path.write_bytes(b"\0" * path.stat().st_size)  # rewritten in place: the model must not care
    path.unlink()
    assert not loaded.training
    for (name, ours), theirs in zip(loaded.state_dict().items(), model.state_dict().values()):
        assert not ours.is_meta and torch.equal(ours, theirs), name
    assert all(p.requires_grad for p in loaded.parameters())
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) not in maps.read_text()
    x = torch.randn(1, 2, 8000)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_half_precision_tensors_load_as_float32(tmp_path):
    model = _tiny()
    document = {"format_version": 1, "architecture": "HDemucs", "kwargs": model.init_kwargs,
                "sources": SOURCES, "samplerate": 8000, "audio_channels": 2, "segment": 1.0}
    half = {key: value.half() if value.is_floating_point() else value for key, value in model.state_dict().items()}
    path = tmp_path / "half.safetensors"
    save_file(half, str(path), metadata={FORMAT_KEY: json.dumps(encode_json(document))})
    loaded = load_checkpoint(path)
    for key, value in loaded.state_dict().items():
        assert value.dtype == model.state_dict()[key].dtype
        assert torch.equal(value, half[key].to(value.dtype)), key


def test_save_as_float16_halves_the_file_and_loads_as_float32(tmp_path):
    model = _tiny()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_checkpoint(model, full)
    save_checkpoint(model, half, dtype=torch.float16)
    assert half.stat().st_size < full.stat().st_size
    from safetensors import safe_open

    with safe_open(str(half), framework="pt") as stored:
        assert all(stored.get_tensor(key).dtype == torch.float16 for key in stored.keys()
                   if model.state_dict()[key].is_floating_point())
    loaded = load_checkpoint(half)
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == value.dtype
        assert torch.equal(loaded.state_dict()[key], value.half().to(value.dtype)), key


def test_a_tensor_cut_short_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(_tiny(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="tiny.safetensors"):
        load_checkpoint(path)
