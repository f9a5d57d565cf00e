"""Load TOML files into frozen pydantic models, turning every problem into a ConfigError.

An operator who gets a file wrong sees ``FILE: key.path: what is wrong`` for every problem
at once — never a traceback. Key paths use TOML's own spelling: ``racks[3].row``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from models.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def key_path(loc: Sequence[int | str]) -> str:
    """Render a pydantic location tuple as a TOML key path: ``racks[3].row``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _clean_loc(loc: Sequence[int | str]) -> list[int | str]:
    # pydantic adds the name of a failing union member or validator to the location
    # ("float", "function-after[...]"); operators only care about their own keys.
    return [p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"float", "int", "str"}))]


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Turn a pydantic ValidationError into ``(key_path, message)`` pairs."""
    problems = []
    for err in exc.errors(include_url=False):
        msg = _MESSAGES.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err \
                and not isinstance(err["input"], dict | list):
            msg += f" (got {err['input']!r})"
        problems.append((key_path(_clean_loc(err["loc"])), msg))
    return problems


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing file or a syntax error becomes a ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(p, [("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(p, [("", "is a directory, not a file")]) from None
    except PermissionError:
        raise ConfigError(p, [("", "permission denied")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(p, [("", f"invalid TOML: {exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(p, [("", f"not UTF-8 text: {exc}")]) from None


def load_model(
    path: str | Path,
    model: type[M],
    check: Callable[[M], list[tuple[str, str]]] | None = None,
    data: dict[str, Any] | None = None,
) -> M:
    """Load ``path`` (or already-parsed ``data``) into ``model`` and run ``check`` on it."""
    raw = read_toml(path) if data is None else data
    try:
        obj = model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(path, validation_problems(exc)) from None
    if check is not None:
        problems = check(obj)
        if problems:
            raise ConfigError(path, problems)
    return obj
