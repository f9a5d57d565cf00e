"""Private files: what powerplane writes on its own (dead letters, spool, store, summaries) is 0600.

Telemetry, hook payloads and delivery state are the site's business, not every local
user's. Files are *created* 0600 and directories powerplane creates are 0700, whatever the
umask; existing files and directories keep the mode an operator gave them (a data
directory shared with a log shipper on purpose stays shared).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | Path) -> Path:
    """Create ``path`` and any missing parents as 0700 directories; return it."""
    p = Path(path)
    missing: list[Path] = []
    q = p
    while not q.exists():
        missing.append(q)
        if q.parent == q:
            break
        q = q.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:  # created meanwhile (another writer); its mode is its creator's
            continue
        os.chmod(d, DIR_MODE)  # the umask may have taken bits away; it must not have added any
    return p


def open_private(path: str | Path, mode: str = "a", encoding: str | None = "utf-8") -> IO[Any]:
    """``open(path, mode)`` for ``a``/``w``/``x`` (``b`` allowed); a file it creates is 0600."""
    kind = mode.replace("b", "").replace("+", "")
    flags = {"a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
             "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}[kind]
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        return os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
    except BaseException:
        os.close(fd)
        raise


def touch_private(path: str | Path) -> Path:
    """Create ``path`` as an empty 0600 file if it does not exist (before a library opens it, e.g. SQLite)."""
    p = Path(path)
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE))
    return p


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
    """Write ``doc`` as JSON atomically, 0600: a reader never sees half a file, and summaries
    may name hosts and nodes. Non-finite numbers become null."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open_private(tmp, "w") as f:
        json.dump(jsonable(doc), f, default=str, allow_nan=False)
    os.replace(tmp, p)


def read_json(path: str | Path) -> Any:
    """A JSON file written by ``write_json``; None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
