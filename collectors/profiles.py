"""Device profiles: TOML data that map a device's points to metrics, never code.

Profiles ship under ``collectors/profiles/<protocol>/<name>.toml`` and may be added or
overridden from the colon-separated directories in ``POWERPLANE_PROFILE_PATH`` (searched
first). Every profile starts with the same header::

    protocol = "modbus"            # chooses the parser in PROFILE_PARSERS
    name = "sunspec-meter-int"     # unique; what DeviceConfig.profile refers to
    description = "..."
    vendor = "SunSpec Alliance"

and the rest is protocol-specific. A wrong profile raises ``ProfileError`` naming the file
and every offending key path (``points[3].type: unknown type``).

Profile models are strict (a bool or a string is not a number) and their numbers finite:
``scale = nan`` or ``inf`` would turn every reading of the point into garbage that no
range check can tell from data (``STRICT`` below; ``Scale`` bounds a scale or offset).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from models.configfile import read_toml, validation_problems
from models.errors import ConfigError, ProfileError
from models.readings import metric

BUILTIN_DIR = Path(__file__).parent / "profiles"
PATH_ENV = "POWERPLANE_PROFILE_PATH"

M = TypeVar("M", bound=BaseModel)

# The model config of every profile model: frozen, no unknown keys, strict types, finite floats.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
# A scale or offset: finite and far from overflowing when a raw 64-bit value is multiplied by it.
Scale = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]


class Profile(Protocol):
    """What every parsed profile offers, whatever its protocol (frozen dataclasses fit)."""

    @property
    def name(self) -> str:
        """The profile's unique name."""
        ...

    @property
    def protocol(self) -> str:
        """modbus | snmp | mqtt."""
        ...

    @property
    def path(self) -> Path:
        """The file it was loaded from."""
        ...

    def describe(self) -> list[tuple[str, str, str]]:
        """Rows ``(point, metric, detail)`` for ``powerplane profiles show``."""
        ...


@dataclass(frozen=True, slots=True)
class ProfileInfo:
    """A profile's header, for listings."""

    name: str
    protocol: str
    vendor: str
    description: str
    path: Path


class Header(BaseModel):
    """The keys every profile has."""

    model_config = ConfigDict(extra="allow", frozen=True)

    protocol: str
    name: str
    description: str = ""
    vendor: str = ""


def known_metric(name: str) -> str:
    """``name`` if it is a registered metric, else a ValueError that says where they are."""
    try:
        metric(name)
    except KeyError:
        raise ValueError(f"unknown metric {name!r} (see models/readings.py)") from None
    return name


MetricName = Annotated[str, AfterValidator(known_metric)]


class TargetSpec(BaseModel):
    """Common point keys that choose the metric a value lands in (shared by all protocols)."""

    model_config = STRICT

    metric: MetricName
    scale: Scale = 1.0
    offset: Scale = 0.0
    tags: dict[str, str] = {}
    counter: bool = False


def validate_model(path: Path, data: dict[str, Any], model: type[M]) -> M:
    """Validate ``data`` into ``model``; every problem becomes a ProfileError naming its key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(path, validation_problems(exc)) from None


def _parse_modbus(path: Path, data: dict[str, Any]) -> Profile:
    from collectors.modbus.profile import parse_modbus_profile

    return parse_modbus_profile(path, data)


def _parse_mqtt(path: Path, data: dict[str, Any]) -> Profile:
    from collectors.mqtt.profile import parse_mqtt_profile

    return parse_mqtt_profile(path, data)


def _parse_snmp(path: Path, data: dict[str, Any]) -> Profile:
    from collectors.snmp.profile import parse_snmp_profile

    return parse_snmp_profile(path, data)


# Explicit on purpose: one line per protocol, no discovery by import side effects.
PROFILE_PARSERS: dict[str, Callable[[Path, dict[str, Any]], Profile]] = {
    # -- modbus, mqtt (helper A) --
    "modbus": _parse_modbus,
    "mqtt": _parse_mqtt,
    # -- snmp (helper B) --
    "snmp": _parse_snmp,
}


def read_profile_data(path: str | Path) -> dict[str, Any]:
    """Read a profile's TOML; file and syntax errors become ProfileError."""
    try:
        return read_toml(path)
    except ProfileError:
        raise
    except ConfigError as exc:
        raise ProfileError(exc.path, exc.problems) from None


def load_profile(path: str | Path) -> Profile:
    """Parse one profile file with the parser its ``protocol`` names."""
    p = Path(path)
    data = read_profile_data(p)
    header = validate_model(p, data, Header)
    parser = PROFILE_PARSERS.get(header.protocol)
    if parser is None:
        raise ProfileError(p, [("protocol", f"unknown protocol {header.protocol!r}; "
                                            f"one of {', '.join(sorted(PROFILE_PARSERS))}")])
    return parser(p, data)


def profile_dirs() -> list[Path]:
    """Directories searched for profiles: ``POWERPLANE_PROFILE_PATH`` first, then the shipped ones."""
    user = [Path(d) for d in os.environ.get(PATH_ENV, "").split(os.pathsep) if d]
    return [*user, BUILTIN_DIR]


def profile_files() -> Iterator[Path]:
    """Every profile file in the search path, in search order."""
    for d in profile_dirs():
        if d.is_dir():
            yield from sorted(d.rglob("*.toml"))


_HEADERS: dict[tuple[Path, float], ProfileInfo] = {}


def list_profiles() -> list[ProfileInfo]:
    """Headers of every profile found; a user profile hides a shipped one of the same name.

    A header is parsed once per file version (path and modification time): building a
    hundred pollers must not re-read every profile a hundred times.
    """
    seen: dict[str, ProfileInfo] = {}
    for f in profile_files():
        key = (f, f.stat().st_mtime)
        info = _HEADERS.get(key)
        if info is None:
            h = validate_model(f, read_profile_data(f), Header)
            info = _HEADERS[key] = ProfileInfo(h.name, h.protocol, h.vendor, h.description, f)
        if info.name not in seen:
            seen[info.name] = info
    return sorted(seen.values(), key=lambda i: (i.protocol, i.name))


_CACHE: dict[tuple[Path, float], Profile] = {}


def find_profile(name: str, protocol: str | None = None) -> Profile:
    """The profile called ``name`` (parsed once per file version); ProfileError if there is none."""
    for info in list_profiles():
        if info.name == name and (protocol is None or info.protocol == protocol):
            key = (info.path, info.path.stat().st_mtime)
            prof = _CACHE.get(key)
            if prof is None:
                prof = _CACHE[key] = load_profile(info.path)
            return prof
    where = ", ".join(str(d) for d in profile_dirs())
    raise ProfileError(name, [("", f"no {protocol + ' ' if protocol else ''}profile of that name in {where}")])
