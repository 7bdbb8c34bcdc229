"""stemsplit: split songs into stems with Demucs-family networks.

The public API is re-exported here lazily so that `import stemsplit` (and so `stemsplit --help`)
does not import torch.
"""
from typing import TYPE_CHECKING, Any

from stemsplit.errors import StemsplitError

__version__ = "0.1.0"

__all__ = ["Separator", "StemsplitError", "__version__", "list_models", "load_model", "separate"]

_LAZY = {
    "Separator": "stemsplit.engine.separator",
    "separate": "stemsplit.pipeline",
    "load_model": "stemsplit.models.resolve",
    "list_models": "stemsplit.models.registry",
}

if TYPE_CHECKING:  # pragma: no cover
    from stemsplit.models.registry import list_models
    from stemsplit.models.resolve import load_model
    from stemsplit.engine.separator import Separator
    from stemsplit.pipeline import separate


def __getattr__(name: str) -> Any:
    """Import the heavy modules only when their names are first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stemsplit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
