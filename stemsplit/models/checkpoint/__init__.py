"""Checkpoint files: read every supported format into a model, write the native one.

Formats read by `load_checkpoint` (recognised by their bytes, bag files by their suffix):
- native: a safetensors file whose header metadata holds one JSON document (`native`);
- official Demucs `.th` packages, read through an allowlist unpickler (`demucs`);
- official safetensors exports (tensors + JSON class/args/kwargs in the metadata; `native`);
- bag files (YAML or JSON) naming member checkpoints (`bag`).
diffq-quantized checkpoints (the `*_q` models) are refused with a clear message.

Owns telling the formats apart, building the model a file describes (`build_model`) and putting
its weights in. This package must never execute code taken from a file (no plain `torch.load`,
no imports named by a file) and never prints. Where files come from (names, downloads, caches)
is `models.registry`'s and `models.resolve`'s job.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from stemsplit.errors import CheckpointError, one_line, quote
from stemsplit.models.checkpoint.bag import BAG_SUFFIXES, assemble, load_bag, read_bag_file, resolve_member, save_bag
from stemsplit.models.checkpoint.demucs import (
    OFFICIAL_CLASSES, QUANTIZED_HINT, ZIP_MAGIC, package_spec, read_package,
)
from stemsplit.models.checkpoint.limits import check_kwargs, check_settings, check_size
from stemsplit.models.checkpoint.native import (
    FORMAT_KEY, FORMAT_VERSION, PathLike, decode_json, encode_json, read_safetensors_metadata,
    read_safetensors_tensors, safetensors_spec, save_checkpoint,
)
from stemsplit.models.resolve import file_problem
from stemsplit.nn import ARCHITECTURES

__all__ = [
    "BAG_SUFFIXES", "FORMAT_KEY", "FORMAT_VERSION", "OFFICIAL_CLASSES", "assemble", "build_model", "decode_json",
    "encode_json", "load_checkpoint", "read_metadata", "resolve_member", "save_bag", "save_checkpoint",
]


# ---- building models ---------------------------------------------------------------------------

def build_model(architecture: str, kwargs: Dict[str, Any]) -> nn.Module:
    """Instantiate one of our architectures with (already decoded) constructor kwargs.

    Both come from a file or a config, so any type may turn up: kwargs the layers reject (a
    negative channel count is torch's RuntimeError) are a CheckpointError like the others, and
    every kwarg that sizes work is checked against `limits` first.
    """
    klass = ARCHITECTURES.get(architecture) if isinstance(architecture, str) else None
    if klass is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CheckpointError(f"unknown architecture {quote(architecture)} (known: {known})")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"cannot build {architecture}: its kwargs are a {type(kwargs).__name__}, not a mapping")
    check_kwargs(architecture, kwargs)
    try:
        return klass(**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"cannot build {architecture} from the stored kwargs: {one_line(exc)}") from exc


def _build_for(spec: Dict[str, Any], path: Path) -> nn.Module:
    """`build_model` for the model a file describes; its errors name the file."""
    try:
        return build_model(spec["architecture"], spec["kwargs"])
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _load_state(spec: Dict[str, Any], state: Dict[str, torch.Tensor], path: Path) -> nn.Module:
    """Build the model `spec` describes around the tensors of `state`, in eval mode.

    Half-precision tensors are cast to the model's float32. The model is built on the meta device
    (no memory, no random initialisation) and the loaded tensors become its parameters as they
    are, so the weights are held once. Building a real model first and copying into it holds
    them twice, on top of the constructors' own transients: for a released-size htdemucs
    (168 MB of weights) loading took +346 MB of peak RSS that way, +240 MB this way (of which
    ~75 MB is torch's meta-device machinery, imported once), and the peak of a first forward
    pass is ~170 MB lower. A model whose state would not cover every tensor it holds
    (non-persistent buffers, tied weights) is built and filled the ordinary way instead.
    """
    if state.get("__quantized"):
        raise CheckpointError(f"{path} {QUANTIZED_HINT}")
    tensors = {}
    for key in list(state):
        value = state.pop(key)  # each original is released as soon as it is converted
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: state entry {quote(key)} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.float() if value.is_floating_point() else value
    with torch.device("meta"):
        model = _build_for(spec, path)
    check_size(model, path)  # before a real build can allocate what the kwargs ask for
    held = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    assign = set(model.state_dict()) == held
    if not assign:
        model = _build_for(spec, path)
    if spec["format"] == "stemsplit" and spec.get("segment") not in (None, model.segment):
        model.segment = spec["segment"]  # saved after a bag or user changed it: keep what was saved
    check_settings(model, path)
    try:
        model.load_state_dict(tensors, strict=True, assign=assign)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:300]  # tensor names come from the file
        raise CheckpointError(f"{path}: weights do not match {type(model).__name__}: {detail}") from exc
    return model.eval()


# ---- entry points ------------------------------------------------------------------------------

def _head(path: Path, size: int) -> bytes:
    """The first `size` bytes of `path` (fewer if it is shorter)."""
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _kind(path: Path, head: bytes) -> str:
    """Identify a file by its bytes (bag files by suffix): never trust the suffix for binaries."""
    if path.suffix.lower() in BAG_SUFFIXES:
        return "bag"
    # safetensors first: its header length is a little-endian u64 whose low byte may be 0x80,
    # a pickle's first byte; no pickle torch writes has "{" as its ninth byte
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == ZIP_MAGIC or head[:1] == b"\x80":
        return "th"
    raise CheckpointError(f"{path} is not a checkpoint stemsplit can read (safetensors, Demucs .th, bag .yaml/.json)")


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not os.path.isfile(path):
        raise CheckpointError(file_problem(path))
    return path


def read_metadata(path: PathLike) -> Dict[str, Any]:
    """The decoded metadata of a checkpoint, with a `format` key naming which kind it is.

    Models: format, architecture, kwargs, sources, samplerate, audio_channels, segment, training
    (and stemsplit_version/extra for native files). Bags: format "bag", models, weights, segment.
    """
    path = _existing(path)
    head = _head(path, 9)
    kind = _kind(path, head)
    if kind == "bag":
        return {"format": "bag", **read_bag_file(path)}
    if kind == "safetensors":
        return safetensors_spec(path, read_safetensors_metadata(path))
    return package_spec(path, read_package(path, head))


def load_checkpoint(path: PathLike) -> nn.Module:
    """Load any supported checkpoint file into a model (or bag) in eval mode."""
    path = _existing(path)
    head = _head(path, 9)
    kind = _kind(path, head)
    if kind == "bag":
        return load_bag(path, load_checkpoint)
    if kind == "safetensors":
        spec = safetensors_spec(path, read_safetensors_metadata(path))
        return _load_state(spec, read_safetensors_tensors(path), path)
    package = read_package(path, head)
    spec = package_spec(path, package)
    state = package.pop("state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state' is not a dict of tensors")
    return _load_state(spec, state, path)
