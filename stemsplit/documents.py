"""Small structured documents (YAML, JSON) read from files that may be hostile.

Owns the bounds on reading one: its size (`read_small_text`), its nesting depth, and YAML
aliases, which are refused outright: a few hundred bytes of nested aliases expand into billions
of nodes (a bag file of 454 bytes reached 11.7 GB), and nothing stemsplit reads needs them. Bag
files and training configs are read through here, and the JSON inside checkpoint metadata too.

Errors are `DocumentError`s with a short reason; callers wrap them in their own error type with
the file's name. This module must stay torch-free (PyYAML is imported lazily) and never prints.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, List, Tuple

from stemsplit.errors import one_line

MAX_BYTES = 1 << 20
"""Bag files and configs are a few hundred bytes: a megabyte leaves room for comments and care."""

MAX_DEPTH = 32
"""Nesting levels (mappings and lists): the deepest document stemsplit reads needs four or five."""


class DocumentError(ValueError):
    """A document is too large, too deep, uses YAML aliases, or is not valid YAML/JSON."""


def read_small_text(path: Path, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of `path`, refused past `limit` bytes without reading further.

    OSError and UnicodeDecodeError pass through: the caller words them with the file's name.
    """
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise DocumentError(f"larger than {limit} bytes; such a file is a few hundred bytes")
    return data.decode("utf-8")


def _too_deep(value: Any, limit: int) -> bool:
    """Whether decoded `value` nests mappings and lists more than `limit` levels (iteratively:
    the check itself must not recurse)."""
    stack: List[Tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def load_json(text: str, limit: int = MAX_DEPTH) -> Any:
    """Decode JSON text nested at most `limit` levels deep."""
    try:
        value = json.loads(text)
    except RecursionError:  # the decoder's own guard, far past `limit`: refused the same way
        raise DocumentError(f"nested deeper than {limit} levels") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise DocumentError(one_line(exc)) from None
    if _too_deep(value, limit):
        raise DocumentError(f"nested deeper than {limit} levels")
    return value


@functools.lru_cache(maxsize=None)
def yaml_loader() -> type:
    """PyYAML's safe loader, refusing aliases and anchors and nesting past `MAX_DEPTH` while it
    composes the document, before anything is expanded or built.

    Subclass it to add resolvers; its refusals are `yaml.YAMLError`s with a position.
    """
    import yaml
    from yaml.composer import ComposerError

    class BoundedLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ComposerError(None, None, "YAML aliases and anchors (*name, &name) are not allowed",
                                    event.start_mark)
            if self._depth >= MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return BoundedLoader


def load_yaml(text: str, loader: Any = None) -> Any:
    """Decode YAML text with `loader` (default `yaml_loader()`, or a subclass of it); a syntax
    error is a DocumentError giving its problem and position in one line."""
    import yaml

    try:
        return yaml.load(text, Loader=loader or yaml_loader())  # a SafeLoader: builds no Python objects
    except yaml.YAMLError as exc:
        raise DocumentError(one_line(exc)) from None
