"""Load TOML files into frozen pydantic models, turning every problem into a ConfigError.

An operator who gets a file wrong sees ``FILE: key.path: what is wrong`` for every problem
at once — never a traceback. Key paths use TOML's own spelling: ``racks[3].row``.

Every file is bounded before it is trusted: at most ``MAX_FILE_BYTES`` (checked before
parsing) and ``MAX_DEPTH`` levels of tables and arrays (checked right after, without
recursion); values are echoed in messages cut to ``MAX_ECHO`` characters.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from models.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

MAX_FILE_BYTES = 8 << 20  # a generated 1,700-rack site is ~0.2 MiB
MAX_DEPTH = 16  # the deepest shipped file (an MQTT profile) nests 5 levels
MAX_ECHO = 80

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
            msg += f" (got {echo(err['input'])})"
        problems.append((key_path(_clean_loc(err["loc"])), msg))
    return problems


def echo(value: Any) -> str:
    """``repr(value)`` cut to ``MAX_ECHO`` characters: a 5 MB value must not become a 5 MB message."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + f"... ({len(text):,} characters)"


def too_deep(data: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """The key path of the first value nested deeper than ``max_depth`` tables/arrays, or None."""
    stack: list[tuple[Any, list[int | str]]] = [(data, [])]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, dict | list):
            if len(loc) >= max_depth:
                return key_path(loc) or "(top level)"
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((v, [*loc, k]) for k, v in items if isinstance(v, dict | list))
    return None


def parse_toml(text: bytes, where: str | Path, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Parse TOML bytes, bounded in depth; every problem becomes a ConfigError naming ``where``."""
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(where, [("", f"not UTF-8 text: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, [("", f"invalid TOML: {exc}")]) from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(where, [("", f"nested too deeply (at most {max_depth} levels)")]) from None
    deep = too_deep(data, max_depth)
    if deep is not None:
        raise ConfigError(where, [(deep, f"nested too deeply (at most {max_depth} levels)")])
    return data


def read_toml(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> dict[str, Any]:
    """Read a TOML file of at most ``max_bytes``; a missing, huge or malformed file becomes a ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            text = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(p, [("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(p, [("", "is a directory, not a file")]) from None
    except PermissionError:
        raise ConfigError(p, [("", "permission denied")]) from None
    except OSError as exc:
        raise ConfigError(p, [("", f"cannot read: {exc.strerror or exc}")]) from None
    if len(text) > max_bytes:
        raise ConfigError(p, [("", f"larger than {max_bytes:,} bytes (MAX_FILE_BYTES); "
                                   "not a configuration file, or a site beyond what powerplane supports")])
    return parse_toml(text, p)


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
