"""Small file helpers every process shares: atomic, private JSON files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def jsonable(x: Any) -> Any:
    """``x`` with every non-finite float turned into None (JSON has no NaN) and tuples into lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # a numpy scalar
        return jsonable(x.item())
    return x


def write_json(path: str | Path, doc: Any) -> None:
    """Write ``doc`` as JSON atomically and readable by the owner only (0600): a reader never
    sees half a file, and summaries may name hosts and nodes. Non-finite numbers become null."""
    doc = jsonable(doc)
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, default=str, allow_nan=False)
    os.replace(tmp, p)


def read_json(path: str | Path) -> Any:
    """A JSON file written by ``write_json``; None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
