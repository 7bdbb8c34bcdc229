"""Checkpoint files: read every supported format into a model, write the native one.

Formats read by `load_checkpoint`:
- native: a safetensors file whose header metadata holds one JSON document under the key
  "stemsplit" (architecture, constructor kwargs, sources, samplerate, channels, segment, training
  summary, stemsplit version);
- official Demucs `.th` packages (a pickled dict with klass/args/kwargs/state), read through an
  allowlist unpickler: only the few globals such files need are resolved, the Demucs classes
  become inert references to our architectures, anything else is refused before it can run;
- official safetensors exports (tensors + JSON class/args/kwargs in the metadata);
- bag files (YAML or JSON): `models` (member files relative to the bag, or official signatures
  found next to it), optional per-model per-source `weights` and `segment`.
diffq-quantized checkpoints (the `*_q` models) are refused with a clear message.

This module must never execute code taken from a file (no plain `torch.load`, no imports named
by a file) and never prints. Where files come from (names, downloads, caches) is `catalog`'s job.
"""
from __future__ import annotations

import glob
import inspect
import json
import math
import numbers
import os
import pickle
import types
import zipfile
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from stemsplit.atomic import atomic_path
from stemsplit.errors import CheckpointError, ModelError, one_line

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_KEY = "stemsplit"
FORMAT_VERSION = 1
BAG_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
_ZIP_MAGIC = b"PK\x03\x04"  # how torch.save's (zip) files begin

# Official class paths (as pickled in `.th` files or named in safetensors exports) -> our names.
OFFICIAL_CLASSES: Dict[str, str] = {
    "demucs.demucs.Demucs": "Demucs",
    "demucs.hdemucs.HDemucs": "HDemucs",
    "demucs.htdemucs.HTDemucs": "HTDemucs",
}

_QUANTIZED_HINT = (
    "is a diffq-quantized checkpoint (the *_q models); stemsplit does not load quantized weights: "
    "use the full-precision model instead (e.g. mdx_extra rather than mdx_extra_q)"
)


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


# ---- building models ---------------------------------------------------------------------------

def _architectures() -> Dict[str, type]:
    from stemsplit.nn import ARCHITECTURES

    return ARCHITECTURES


def build_model(architecture: str, kwargs: Dict[str, Any]) -> nn.Module:
    """Instantiate one of our architectures with (already decoded) constructor kwargs.

    Both come from a file or a config, so any type may turn up: kwargs the layers reject (a
    negative channel count is torch's RuntimeError) are a CheckpointError like the others.
    """
    classes = _architectures()
    klass = classes.get(architecture) if isinstance(architecture, str) else None
    if klass is None:
        known = ", ".join(sorted(classes))
        raise CheckpointError(f"unknown architecture {architecture!r} (known: {known})")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"cannot build {architecture}: its kwargs are a {type(kwargs).__name__}, not a mapping")
    try:
        return klass(**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise CheckpointError(f"cannot build {architecture} from the stored kwargs: {exc}") from exc


def _build_for(spec: Dict[str, Any], path: Path) -> nn.Module:
    """`build_model` for the model a file describes; its errors name the file."""
    try:
        return build_model(spec["architecture"], spec["kwargs"])
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _check_settings(model: nn.Module, path: Path) -> None:
    """Refuse a model whose sources, rate, channels or segment separation cannot use.

    The constructors store these as given, so a damaged or hand-edited file (samplerate "x",
    segment -3, a source named twice) would load, then fail in the middle of a batch with the
    blame on an audio file, or write two stems to one file.
    """
    sources = model.sources
    if not (isinstance(sources, (list, tuple)) and sources and all(isinstance(s, str) and s for s in sources)
            and len(set(sources)) == len(sources)):
        raise CheckpointError(f"{path}: sources must be distinct non-empty names, got {sources!r}")
    for name in ("samplerate", "audio_channels"):
        value = getattr(model, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"{path}: {name} must be a positive integer, got {value!r}")
    segment = model.segment
    if not (_is_finite_number(segment) and segment > 0):
        raise CheckpointError(f"{path}: segment must be a positive number of seconds, got {segment!r}")


def _architecture_name(model: nn.Module) -> str:
    for name, klass in _architectures().items():
        if type(model) is klass:
            return name
    raise CheckpointError(
        f"cannot save a {type(model).__name__}: only {', '.join(sorted(_architectures()))} "
        "models have a native checkpoint format (save bag members one by one with save_bag)"
    )


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
        raise CheckpointError(f"{path} {_QUANTIZED_HINT}")
    tensors = {}
    for key in list(state):
        value = state.pop(key)  # each original is released as soon as it is converted
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: state entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.float() if value.is_floating_point() else value
    with torch.device("meta"):
        model = _build_for(spec, path)
    held = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    assign = set(model.state_dict()) == held
    if not assign:
        model = _build_for(spec, path)
    if spec["format"] == "stemsplit" and spec.get("segment") not in (None, model.segment):
        model.segment = spec["segment"]  # saved after a bag or user changed it: keep what was saved
    _check_settings(model, path)
    try:
        model.load_state_dict(tensors, strict=True, assign=assign)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{path}: weights do not match {type(model).__name__}: {detail}") from exc
    return model.eval()


def _official_kwargs(architecture: str, args: Sequence[Any], kwargs: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """Turn official (args, kwargs) into keyword arguments for our class.

    Like the official loader, keyword arguments that the class no longer takes are dropped:
    our signatures equal demucs 4.1.0's, so this loads exactly what demucs itself would load.
    """
    klass = _architectures()[architecture]
    signature = inspect.signature(klass)
    kept = {key: value for key, value in kwargs.items() if key in signature.parameters}
    try:
        bound = signature.bind_partial(*args, **kept)
    except TypeError as exc:
        raise CheckpointError(f"{path}: stored arguments do not fit {architecture}: {exc}") from exc
    return dict(bound.arguments)


# ---- native format -----------------------------------------------------------------------------

def _model_summary(model: nn.Module) -> Dict[str, Any]:
    return {
        "sources": list(model.sources),
        "samplerate": int(model.samplerate),
        "audio_channels": int(model.audio_channels),
        "segment": model.segment if isinstance(model.segment, Fraction) else float(model.segment),
    }


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
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

    _atomic_write(path, write)


def save_bag(bag: nn.Module, path: PathLike) -> List[Path]:
    """Write a bag as a JSON/YAML bag file plus one native checkpoint per member next to it.

    Members are named `<bag stem>.<index>.safetensors`; returns every file written.
    """
    path = Path(path)
    if path.suffix not in BAG_SUFFIXES:
        raise CheckpointError(f"{path}: a bag file must end in one of {', '.join(sorted(BAG_SUFFIXES))}")
    written = []
    names = []
    for index, member in enumerate(bag.models):
        member_path = path.with_name(f"{path.stem}.{index}.safetensors")
        save_checkpoint(member, member_path)
        written.append(member_path)
        names.append(member_path.name)
    document: Dict[str, Any] = {"models": names, "weights": [list(map(float, w)) for w in bag.weights]}
    if bag.segment_override is not None:
        document["segment"] = float(bag.segment_override)
    text = json.dumps(document, indent=2) + "\n"
    _atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))
    written.append(path)
    return written


def _read_safetensors_metadata(path: Path) -> Dict[str, str]:
    """The header metadata of a safetensors file (the library also validates the whole header)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return file.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors_tensors(path: Path) -> Dict[str, torch.Tensor]:
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
                    raise ValueError(f"tensor {key!r} does not fit its stored bytes")
                state[key] = tensor
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    return state


def _safetensors_spec(path: Path, metadata: Dict[str, str]) -> Dict[str, Any]:
    """Metadata of a native or official-export safetensors file, decoded."""
    try:
        if FORMAT_KEY in metadata:
            document = decode_json(json.loads(metadata[FORMAT_KEY]))
            if not isinstance(document, dict) or not {"architecture", "kwargs"} <= set(document):
                raise CheckpointError(f"{path}: malformed checkpoint metadata: no architecture and kwargs")
            return {"format": "stemsplit", **document}
        if "klass" in metadata:
            if "structure" in metadata:
                raise CheckpointError(f"{path} {_QUANTIZED_HINT}")
            architecture = _official_architecture(metadata["klass"], path)
            args = decode_json(json.loads(metadata.get("args", "[]")))
            kwargs = decode_json(json.loads(metadata.get("kwargs", "{}")))
            return _official_spec("demucs-safetensors", architecture, args, kwargs, None, path)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ZeroDivisionError, RecursionError) as exc:
        # a fraction over zero; JSON nested deeper than Python's recursion limit
        raise CheckpointError(f"{path}: malformed checkpoint metadata: {exc}") from exc
    raise CheckpointError(f"{path} is a safetensors file without model metadata (not a stemsplit or Demucs checkpoint)")


def _official_architecture(klass: str, path: Path) -> str:
    architecture = OFFICIAL_CLASSES.get(klass)
    if architecture is None:
        raise CheckpointError(f"{path}: unsupported model class {klass!r}")
    return architecture


def _official_spec(
    fmt: str, architecture: str, args: Sequence[Any], kwargs: Dict[str, Any], training: Any, path: Path
) -> Dict[str, Any]:
    kwargs = _official_kwargs(architecture, args, kwargs, path)
    defaults = inspect.signature(_architectures()[architecture]).parameters
    spec = {"format": fmt, "architecture": architecture, "kwargs": kwargs, "training": training}
    for key, name in (("sources", "sources"), ("samplerate", "samplerate"),
                      ("audio_channels", "audio_channels"), ("segment", "segment")):
        if name in kwargs:
            spec[key] = kwargs[name]
        elif name in defaults and defaults[name].default is not inspect.Parameter.empty:
            spec[key] = defaults[name].default
    return spec


# ---- official .th packages through the allowlist unpickler -------------------------------------

class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the allowlist."""

    def __init__(self, qualified_name: str) -> None:
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


class _ClassRef:
    """What a pickled Demucs class unpickles to: its architecture name, not a callable class, so
    a pickle cannot construct anything with it."""

    __slots__ = ("architecture",)

    def __init__(self, architecture: str) -> None:
        object.__setattr__(self, "architecture", architecture)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a pickle may not set {name!r} on a model class")  # the BUILD opcode


def _allowed_globals() -> Dict[str, Any]:
    """Everything an official Demucs package needs, and nothing that can run code.

    Fraction and torch's tensor rebuilder are handed out as fresh wrappers, never themselves: the
    pickle BUILD opcode sets attributes on whatever object it is given, so a file could otherwise
    rewrite `fractions.Fraction` or the rebuilder's `__defaults__` for the rest of the process,
    even a file that is then refused. (OrderedDict is a builtin type: it cannot be changed.)
    """
    import torch._utils

    def fraction(*args: Any) -> Fraction:
        return Fraction(*args)

    def rebuild_tensor(*args: Any) -> torch.Tensor:
        return torch._utils._rebuild_tensor_v2(*args)

    allowed: Dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "fractions.Fraction": fraction,
        "torch._utils._rebuild_tensor_v2": rebuild_tensor,
    }
    for official, ours in OFFICIAL_CLASSES.items():
        allowed[official] = _ClassRef(ours)
    return allowed


class _AllowlistUnpickler(pickle.Unpickler):
    """An Unpickler whose globals come only from `_allowed_globals`."""

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        target = _allowed_globals().get(qualified)
        if target is None:
            raise _RefusedGlobal(qualified)
        return target


def _allowlist_load(file: Any, **kwargs: Any) -> Any:
    return _AllowlistUnpickler(file, **kwargs).load()


# `torch.load` accepts any module-like object with `Unpickler` and `load`; torch's own wrapper
# only adds the storage-type lookup (a dtype table) on top of our `find_class`.
_ALLOWLIST_PICKLE = types.ModuleType("stemsplit_allowlist_pickle")
_ALLOWLIST_PICKLE.Unpickler = _AllowlistUnpickler  # type: ignore[attr-defined]
_ALLOWLIST_PICKLE.load = _allowlist_load  # type: ignore[attr-defined]


def _read_package(path: Path) -> Dict[str, Any]:
    """Unpickle an official `.th` package without resolving any global off the allowlist."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
            raise CheckpointError(f"{path} is a TorchScript archive (it contains code); refusing to load it")
    elif _head(path, len(_ZIP_MAGIC)) == _ZIP_MAGIC:  # torch itself only says "Invalid argument"
        raise CheckpointError(f"{path} is a truncated or corrupted checkpoint (its zip directory is missing)")
    try:
        package = torch.load(path, map_location="cpu", pickle_module=_ALLOWLIST_PICKLE,
                             weights_only=False, mmap=False)
    except _RefusedGlobal as exc:
        if exc.qualified_name.startswith("diffq"):
            raise CheckpointError(f"{path} {_QUANTIZED_HINT}") from None
        raise CheckpointError(
            f"{path} refers to {exc.qualified_name}, which is not allowed in a checkpoint; refusing to load it"
        ) from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, ImportError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable Demucs checkpoint: {exc}") from exc
    if not isinstance(package, dict) or not {"klass", "state"} <= set(package):
        raise CheckpointError(f"{path} is not a Demucs model package (expected a dict with 'klass' and 'state')")
    return package


def _package_spec(path: Path, package: Dict[str, Any]) -> Dict[str, Any]:
    klass = package["klass"]
    if not isinstance(klass, _ClassRef):
        raise CheckpointError(f"{path}: 'klass' is not a Demucs model class")
    architecture = klass.architecture
    args = package.get("args") or ()
    kwargs = package.get("kwargs") or {}
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: malformed 'args'/'kwargs' in the package")
    return _official_spec("demucs-th", architecture, args, kwargs, package.get("training_args"), path)


# ---- bags --------------------------------------------------------------------------------------

def _read_bag_file(path: Path) -> Dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path} is not a readable bag file: {one_line(exc)}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), list) or not document["models"]:
        raise CheckpointError(f"{path}: a bag file needs a non-empty 'models' list")
    weights = document.get("weights")
    segment = document.get("segment")
    if weights is not None and not (
        isinstance(weights, list) and all(isinstance(row, list) for row in weights)
        and all(_is_finite_number(w) for row in weights for w in row)
    ):
        raise CheckpointError(f"{path}: 'weights' must be a list of lists of finite numbers")
    if segment is not None and not (_is_finite_number(segment) and segment > 0):
        raise CheckpointError(f"{path}: 'segment' must be a positive number of seconds")
    return {"models": [str(member) for member in document["models"]], "weights": weights, "segment": segment}


def _is_finite_number(value: Any) -> bool:
    """A real number (a Fraction too: official segments are) that is not a bool and not NaN or
    infinite (YAML's `.nan`, JSON's `Infinity`)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def resolve_member(folder: Path, entry: str, bag_path: Path) -> Path:
    """Find a bag member: a file path relative to the bag, or an official signature whose file
    (`SIG.safetensors`, `SIG.th` or `SIG-HASH.th`) lies in the same folder."""
    direct = folder / entry
    if direct.is_file():
        return direct
    for candidate in (folder / f"{entry}.safetensors", folder / f"{entry}.th"):
        if candidate.is_file():
            return candidate
    hashed = sorted(folder.glob(f"{glob.escape(entry)}-*.th"))  # a name, not a pattern
    if hashed:
        return hashed[0]
    raise CheckpointError(
        f"{bag_path} lists member {entry!r} but no file {entry}, {entry}.safetensors, {entry}.th "
        f"or {entry}-<hash>.th exists in {folder}"
    )


def assemble(members: List[nn.Module], weights: Optional[List[List[float]]], segment: Optional[float]) -> nn.Module:
    """A bag of the members, or the member itself when there is only one (same output, simpler
    to run); a bag-level segment is applied to the member as the bag would."""
    from stemsplit.nn.bag import BagOfModels

    bag = BagOfModels(members, weights, segment)  # validates, and applies the segment to members
    return members[0] if len(members) == 1 else bag


def _load_bag(path: Path) -> nn.Module:
    spec = _read_bag_file(path)
    members = []
    for entry in spec["models"]:
        member_path = resolve_member(path.parent, entry, path)
        if member_path.suffix in BAG_SUFFIXES:
            raise CheckpointError(f"{path}: member {entry!r} is itself a bag; bags cannot be nested")
        members.append(load_checkpoint(member_path))
    try:
        return assemble(members, spec["weights"], spec["segment"])
    except CheckpointError:
        raise
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


# ---- entry points ------------------------------------------------------------------------------

def _head(path: Path, size: int) -> bytes:
    """The first `size` bytes of `path` (fewer if it is shorter)."""
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _kind(path: Path) -> str:
    """Identify a file by its bytes (bag files by suffix): never trust the suffix for binaries."""
    if path.suffix.lower() in BAG_SUFFIXES:
        return "bag"
    head = _head(path, 9)
    # safetensors first: its header length is a little-endian u64 whose low byte may be 0x80,
    # a pickle's first byte; no pickle torch writes has "{" as its ninth byte
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == _ZIP_MAGIC or head[:1] == b"\x80":
        return "th"
    raise CheckpointError(f"{path} is not a checkpoint stemsplit can read (safetensors, Demucs .th, bag .yaml/.json)")


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def read_metadata(path: PathLike) -> Dict[str, Any]:
    """The decoded metadata of a checkpoint, with a `format` key naming which kind it is.

    Models: format, architecture, kwargs, sources, samplerate, audio_channels, segment, training
    (and stemsplit_version/extra for native files). Bags: format "bag", models, weights, segment.
    """
    path = _existing(path)
    kind = _kind(path)
    if kind == "bag":
        return {"format": "bag", **_read_bag_file(path)}
    if kind == "safetensors":
        return _safetensors_spec(path, _read_safetensors_metadata(path))
    return _package_spec(path, _read_package(path))


def load_checkpoint(path: PathLike) -> nn.Module:
    """Load any supported checkpoint file into a model (or bag) in eval mode."""
    path = _existing(path)
    kind = _kind(path)
    if kind == "bag":
        return _load_bag(path)
    if kind == "safetensors":
        spec = _safetensors_spec(path, _read_safetensors_metadata(path))
        return _load_state(spec, _read_safetensors_tensors(path), path)
    package = _read_package(path)
    spec = _package_spec(path, package)
    state = package.pop("state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state' is not a dict of tensors")
    return _load_state(spec, state, path)
