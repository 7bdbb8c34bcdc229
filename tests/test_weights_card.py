"""The shipped weights and their model card agree: every file listed with its true size and sha256,
every file in weights/ listed, none over the 16 MB budget, and the embedded model loads."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
MAX_BYTES = 16 * 1000 * 1000
_ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$", re.MULTILINE)


def _card_rows() -> dict[str, tuple[int, str]]:
    text = (WEIGHTS / "README.md").read_text(encoding="utf-8")
    return {name: (int(size), digest) for name, size, digest in _ROW.findall(text)}


def test_card_lists_every_weight_file_with_its_size_and_sha256() -> None:
    rows = _card_rows()
    shipped = sorted(p.name for p in WEIGHTS.iterdir() if p.suffix in (".safetensors", ".th", ".pt", ".yaml"))
    assert sorted(rows) == shipped
    for name, (size, digest) in rows.items():
        data = (WEIGHTS / name).read_bytes()
        assert len(data) == size, name
        assert hashlib.sha256(data).hexdigest() == digest, name
        assert size <= MAX_BYTES, name


def test_embedded_default_model_loads_with_its_card_metadata() -> None:
    from stemsplit.models.checkpoint import read_metadata

    meta = read_metadata(WEIGHTS / "default.safetensors")
    assert meta["architecture"] == "HDemucs"
    assert list(meta["sources"]) == ["drums", "bass", "other", "vocals"]
    card = (WEIGHTS / "README.md").read_text(encoding="utf-8")
    total = (meta.get("extra") or {}).get("total_steps")
    assert total is not None and f"{total} steps" in card  # the card states the shipped file's total steps
