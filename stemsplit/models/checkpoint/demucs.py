"""Official Demucs checkpoints: `.th` packages and the class/args/kwargs of safetensors exports.

Owns reading an official `.th` package (a pickled dict with klass/args/kwargs/state) through an
allowlist unpickler: only the few globals such files need are resolved, the Demucs classes become
inert references to our architectures, anything else is refused before it can run. Also owns
turning official (class, args, kwargs) into our architecture name and keyword arguments (shared
with the safetensors exports that `native` reads), and the wording for diffq-quantized files.

This module must never execute code taken from a file: no plain `torch.load`, no import or
attribute lookup named by a file. It never prints.
"""
from __future__ import annotations

import inspect
import pickle
import types
import zipfile
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Sequence

import torch

from stemsplit.errors import CheckpointError, one_line, quote
from stemsplit.nn import ARCHITECTURES

ZIP_MAGIC = b"PK\x03\x04"  # how torch.save's (zip) files begin

# Official class paths (as pickled in `.th` files or named in safetensors exports) -> our names.
OFFICIAL_CLASSES: Dict[str, str] = {
    "demucs.demucs.Demucs": "Demucs",
    "demucs.hdemucs.HDemucs": "HDemucs",
    "demucs.htdemucs.HTDemucs": "HTDemucs",
}

QUANTIZED_HINT = (
    "is a diffq-quantized checkpoint (the *_q models); stemsplit does not load quantized weights: "
    "use the full-precision model instead (e.g. mdx_extra rather than mdx_extra_q)"
)


def official_kwargs(architecture: str, args: Sequence[Any], kwargs: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """Turn official (args, kwargs) into keyword arguments for our class.

    Like the official loader, keyword arguments that the class no longer takes are dropped:
    our signatures equal demucs 4.1.0's, so this loads exactly what demucs itself would load.
    """
    klass = ARCHITECTURES[architecture]
    signature = inspect.signature(klass)
    kept = {key: value for key, value in kwargs.items() if key in signature.parameters}
    try:
        bound = signature.bind_partial(*args, **kept)
    except TypeError as exc:
        raise CheckpointError(f"{path}: stored arguments do not fit {architecture}: {one_line(exc)}") from exc
    return dict(bound.arguments)


def official_architecture(klass: str, path: Path) -> str:
    architecture = OFFICIAL_CLASSES.get(klass)
    if architecture is None:
        raise CheckpointError(f"{path}: unsupported model class {quote(klass)}")
    return architecture


def official_spec(
    fmt: str, architecture: str, args: Sequence[Any], kwargs: Dict[str, Any], training: Any, path: Path
) -> Dict[str, Any]:
    kwargs = official_kwargs(architecture, args, kwargs, path)
    defaults = inspect.signature(ARCHITECTURES[architecture]).parameters
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


def read_package(path: Path, head: bytes) -> Dict[str, Any]:
    """Unpickle an official `.th` package without resolving any global off the allowlist."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
            raise CheckpointError(f"{path} is a TorchScript archive (it contains code); refusing to load it")
    elif head[:len(ZIP_MAGIC)] == ZIP_MAGIC:  # torch itself only says "Invalid argument"
        raise CheckpointError(f"{path} is a truncated or corrupted checkpoint (its zip directory is missing)")
    try:
        package = torch.load(path, map_location="cpu", pickle_module=_ALLOWLIST_PICKLE,
                             weights_only=False, mmap=False)
    except _RefusedGlobal as exc:
        if exc.qualified_name.startswith("diffq"):
            raise CheckpointError(f"{path} {QUANTIZED_HINT}") from None
        raise CheckpointError(
            f"{path} refers to {quote(exc.qualified_name)}, which is not allowed in a checkpoint; refusing to load it"
        ) from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, ImportError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable Demucs checkpoint: {one_line(exc)}") from exc
    if not isinstance(package, dict) or not {"klass", "state"} <= set(package):
        raise CheckpointError(f"{path} is not a Demucs model package (expected a dict with 'klass' and 'state')")
    return package


def package_spec(path: Path, package: Dict[str, Any]) -> Dict[str, Any]:
    klass = package["klass"]
    if not isinstance(klass, _ClassRef):
        raise CheckpointError(f"{path}: 'klass' is not a Demucs model class")
    architecture = klass.architecture
    args = package.get("args") or ()
    kwargs = package.get("kwargs") or {}
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: malformed 'args'/'kwargs' in the package")
    return official_spec("demucs-th", architecture, args, kwargs, package.get("training_args"), path)
