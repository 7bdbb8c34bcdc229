"""The package as pip builds it: every subpackage of stemsplit/ is listed in pyproject.toml, so a
non-editable install (`pip install .`) carries all of it, not only what an editable one finds."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^packages = \[(.*?)\]", text, re.MULTILINE | re.DOTALL)
    assert block is not None
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "stemsplit").rglob("__init__.py")}
    assert found <= listed, f"not listed: {sorted(found - listed)}"
    assert "stemsplit.weights" in listed
