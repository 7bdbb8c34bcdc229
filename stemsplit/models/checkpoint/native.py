"""The native checkpoint format: a safetensors file whose metadata holds one JSON document.

Owns writing (`save_checkpoint`) and reading safetensors files: the native document under the key
"stemsplit" (architecture, constructor kwargs, sources, samplerate, channels, segment, training
summary, stemsplit version) and the official safetensors exports (tensors plus JSON
class/args/kwargs, turned into a spec by `demucs`); the JSON codec for constructor kwargs
(`encode_json`/`decode_json`); and the atomic write every checkpoint file goes through.

It must not build models (that is the package's `load_checkpoint`) and never prints.
"""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from stemsplit.atomic import atomic_path
from stemsplit.documents import load_json
from stemsplit.errors import CheckpointError, one_line, quote
from stemsplit.models.checkpoint.demucs import QUANTIZED_HINT, official_architecture, official_spec
from stemsplit.nn import ARCHITECTURES

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_KEY = "stemsplit"
FORMAT_VERSION = 1


# ---- JSON encoding of constructor kwargs ------------------------------------------------------

def encode_json(value: Any) -> Any:
    """Make kwargs JSON-able without losing types that matter (Fractions, tuples).

    Fractions use the same `{"_type": "fraction", ...}` form as the official safetensors exports,
    so one decoder reads both.
    """
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, tuple):
        return {"_type": "tuple", "items": [encode_json(item) for item in value]}
    if isinstance(value, list):
        return [encode_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): encode_json(item) for key, item in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in checkpoint metadata: {value!r}")


def decode_json(value: Any) -> Any:
    """Inverse of `encode_json`; also reads the official exports' fraction encoding."""
    if isinstance(value, dict):
        kind = value.get("_type")
        if kind == "fraction":
            return Fraction(int(value["numerator"]), int(value["denominator"]))
        if kind == "tuple":
            return tuple(decode_json(item) for item in value["items"])
        return {key: decode_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_json(item) for item in value]
    return value


def _architecture_name(model: nn.Module) -> str:
    for name, klass in ARCHITECTURES.items():
        if type(model) is klass:
            return name
    raise CheckpointError(
        f"cannot save a {type(model).__name__}: only {', '.join(sorted(ARCHITECTURES))} "
        "models have a native checkpoint format (save bag members one by one with save_bag)"
    )


def _model_summary(model: nn.Module) -> Dict[str, Any]:
    return {
        "sources": list(model.sources),
        "samplerate": int(model.samplerate),
        "audio_channels": int(model.audio_channels),
        "segment": model.segment if isinstance(model.segment, Fraction) else float(model.segment),
    }


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temporary file that replaces `path` only once it is complete."""
    try:
        with atomic_path(path) as temp:
            write(temp)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc


def save_checkpoint(
    model: nn.Module,
    path: PathLike,
    *,
    training: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
    dtype: Optional["torch.dtype"] = None,
) -> None:
    """Write `model` as a native checkpoint (safetensors + JSON metadata), atomically.

    `training` is a JSON-able summary (epochs, losses, data, ...); `extra` is free JSON-able
    metadata (e.g. a model card). Fractions and tuples survive the round trip. `dtype` (e.g.
    torch.float16) stores the floating-point tensors in that type to halve a shipped file;
    loading always casts them back to float32.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from stemsplit import __version__

    path = Path(path)
    architecture = _architecture_name(model)
    document = {
        "format_version": FORMAT_VERSION,
        "stemsplit_version": __version__,
        "architecture": architecture,
        "kwargs": dict(model.init_kwargs),
        **_model_summary(model),
        "training": training,
        "extra": extra,
    }
    try:
        metadata = {FORMAT_KEY: json.dumps(encode_json(document))}
    except TypeError as exc:
        raise CheckpointError(f"cannot save {path}: {exc}") from exc
    # Cloning makes every tensor own its memory: safetensors refuses shared storages.
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    if dtype is not None:
        tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
    def write(temp: Path) -> None:
        try:
            save_file(tensors, str(temp), metadata=metadata)
        except SafetensorError as exc:  # e.g. an I/O error reported by the Rust writer
            raise OSError(str(exc)) from exc

    atomic_write(path, write)


def read_safetensors_metadata(path: Path) -> Dict[str, str]:
    """The header metadata of a safetensors file (the library also validates the whole header)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return file.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {one_line(exc)}") from exc


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_tensors(path: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of a (validated) safetensors file, each read straight into its own memory.

    safetensors' own loader hands out views of a private memory map of the whole file: a model
    holding those would keep the file mapped (it could then not be replaced on Windows, and an
    in-place rewrite would change or crash a running model), and copying them out would hold
    the weights twice. Reading each tensor's bytes into a fresh tensor costs neither.
    """
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size))
            state = {}
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                tensor = torch.empty(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
                raw = tensor.view(-1).view(torch.uint8).numpy()
                file.seek(8 + size + begin)
                if raw.nbytes != end - begin or file.readinto(raw) != raw.nbytes:
                    raise ValueError(f"tensor {quote(key)} does not fit its stored bytes")
                state[key] = tensor
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {one_line(exc)}") from exc
    return state


def safetensors_spec(path: Path, metadata: Dict[str, str]) -> Dict[str, Any]:
    """Metadata of a native or official-export safetensors file, decoded."""
    try:
        if FORMAT_KEY in metadata:
            document = decode_json(load_json(metadata[FORMAT_KEY]))
            if not isinstance(document, dict) or not {"architecture", "kwargs"} <= set(document):
                raise CheckpointError(f"{path}: malformed checkpoint metadata: no architecture and kwargs")
            return {"format": "stemsplit", **document}
        if "klass" in metadata:
            if "structure" in metadata:
                raise CheckpointError(f"{path} {QUANTIZED_HINT}")
            architecture = official_architecture(metadata["klass"], path)
            args = decode_json(load_json(metadata.get("args", "[]")))
            kwargs = decode_json(load_json(metadata.get("kwargs", "{}")))
            return official_spec("demucs-safetensors", architecture, args, kwargs, None, path)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        # JSON that is malformed or nested too deep (DocumentError is a ValueError); a fraction over zero
        raise CheckpointError(f"{path}: malformed checkpoint metadata: {one_line(exc)}") from exc
    raise CheckpointError(f"{path} is a safetensors file without model metadata (not a stemsplit or Demucs checkpoint)")
