"""Collector configuration: collect.toml, or the twin's endpoint inventory, -> DeviceConfig list.

collect.toml::

    site = "demo"                    # added as the site tag of every device

    [defaults]                       # any device key except name/protocol/profile/host
    interval_s = 1.0
    timeout_s = 1.0

    [validate]
    stuck_polls = { "power.power_w" = 60 }   # a gauge identical this many polls is stuck

    [[devices]]
    name = "meter-feed-a"
    protocol = "modbus"              # modbus | snmp | mqtt
    profile = "generic-meter-f32"    # see `powerplane profiles list`
    host = "10.0.0.5"
    port = 502
    interval_s = 1.0                 # optional: timeout_s, jitter_s, rating_w
    tags = { level = "feed", id = "feed-a" }  # entity tags (models/state.py); or { loop = "cdu-1" }
    [devices.options]                # protocol options (unit, framer, max_block, pause_s, ...)
    unit = 1
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from collectors.base import PROTOCOLS, DeviceConfig, Protocol_
from collectors.options import option_names, options_of
from collectors.profiles import find_profile
from models.configfile import read_toml, validation_problems
from models.errors import ConfigError, ProfileError
from models.readings import metric

if TYPE_CHECKING:
    from models.topology import Topology
    from models.twin.endpoints import Endpoint

# The twin's device models -> the shipped profiles that read them (SNMP models are profile names).
TWIN_PROFILES = {
    "sunspec-203": "sunspec-meter-int",
    "sunspec-213": "sunspec-meter-float",
    "generic-meter-f32": "generic-meter-f32",
    "busway-tapoff": "busway-tapoff",
    "cdu-aalc": "cdu-aalc",
    "grid-json": "grid-json",
    "bms-json": "bms-json",
}
POWER_LEVELS = ("feed", "ups", "hall", "row", "rack", "pdu", "node")
# TOML is typed: a bool or a string is not a number, and every number is finite and bounded.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class _DeviceModel(BaseModel):
    model_config = _STRICT

    name: str = Field(min_length=1)
    protocol: Protocol_
    profile: str
    host: str
    port: int = Field(ge=0, le=65535)
    interval_s: float = Field(1.0, gt=0, le=86_400)
    timeout_s: float = Field(1.0, gt=0, le=3_600)
    jitter_s: float = Field(0.0, ge=0, le=3_600)
    rating_w: float | None = Field(None, gt=0, le=1e12)
    tags: dict[str, str] = {}
    options: dict[str, Any] = {}


class _Defaults(BaseModel):
    model_config = _STRICT

    port: int | None = Field(None, ge=0, le=65535)
    interval_s: float | None = Field(None, gt=0, le=86_400)
    timeout_s: float | None = Field(None, gt=0, le=3_600)
    jitter_s: float | None = Field(None, ge=0, le=3_600)
    options: dict[str, Any] = {}


class _Validate(BaseModel):
    model_config = _STRICT

    stuck_polls: dict[str, int] = {}


class _CollectModel(BaseModel):
    model_config = _STRICT

    site: str = ""
    defaults: _Defaults = Field(default_factory=lambda: _Defaults.model_validate({}))
    validate_: _Validate = Field(default_factory=_Validate, alias="validate")
    devices: list[dict[str, Any]] = Field(min_length=1)


@dataclass(frozen=True)
class CollectConfig:
    """A parsed collect.toml."""

    devices: list[DeviceConfig]
    stuck_polls: Mapping[str, int] = field(default_factory=dict)


def load_collect_file(path: str | Path) -> CollectConfig:
    """Parse collect.toml; every problem is reported as ``FILE: key.path: problem``."""
    raw = read_toml(path)
    try:
        top = _CollectModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(path, validation_problems(exc)) from None
    problems: list[tuple[str, str]] = []
    for name, n in top.validate_.stuck_polls.items():
        try:
            if metric(name).kind == "state":
                problems.append((f"validate.stuck_polls.{name}", "a state cannot be stuck"))
        except KeyError:
            problems.append((f"validate.stuck_polls.{name}", "unknown metric"))
        if n < 2:
            problems.append((f"validate.stuck_polls.{name}", f"must be >= 2, got {n}"))
    devices: list[DeviceConfig] = []
    names: set[str] = set()
    d = top.defaults
    every = set().union(*(option_names(p) for p in PROTOCOLS))
    problems += [(f"defaults.options.{k}", "no protocol has this option") for k in d.options if k not in every]
    for i, entry in enumerate(top.devices):
        pairs = (("port", d.port), ("interval_s", d.interval_s), ("timeout_s", d.timeout_s), ("jitter_s", d.jitter_s))
        merged: dict[str, Any] = {k: v for k, v in pairs if v is not None}
        merged.update(entry)
        # [defaults].options apply to the devices whose protocol has that option (unit to
        # Modbus devices, keepalive_s to MQTT ones); a key no protocol has is reported below.
        known = option_names(str(entry.get("protocol", "")))
        merged["options"] = {**{k: v for k, v in d.options.items() if k in known}, **entry.get("options", {})}
        try:
            dev = _DeviceModel.model_validate(merged)
        except ValidationError as exc:
            problems += [(f"devices[{i}].{k}" if k else f"devices[{i}]", m)
                         for k, m in validation_problems(exc)]
            continue
        if dev.name in names:
            problems.append((f"devices[{i}].name", f"duplicate device name {dev.name!r}"))
        names.add(dev.name)
        try:
            find_profile(dev.profile, dev.protocol)
        except ProfileError as exc:
            problems += [(f"devices[{i}].profile", f"{exc.path}: {m}" if exc.path != dev.profile else m)
                         for _, m in exc.problems]
        if dev.timeout_s > dev.interval_s * 10:
            problems.append((f"devices[{i}].timeout_s", "longer than 10 intervals; the device would never keep up"))
        tags = dict(dev.tags)
        if top.site:
            tags.setdefault("site", top.site)
        if "level" in tags and tags["level"] in POWER_LEVELS and "id" not in tags:
            problems.append((f"devices[{i}].tags", "a power level needs an id tag"))
        device = DeviceConfig(dev.name, dev.protocol, dev.profile, dev.host, dev.port, dev.interval_s,
                              dev.timeout_s, dev.jitter_s, tuple(sorted(tags.items())), dev.rating_w,
                              MappingProxyType(dict(dev.options)))
        try:
            options_of(device)
        except ConfigError as exc:
            problems += [(f"devices[{i}].{k}", m) for k, m in exc.problems]
        devices.append(device)
    if problems:
        raise ConfigError(path, problems)
    return CollectConfig(devices, dict(top.validate_.stuck_polls))


def load_collect_config(path: str | Path) -> list[DeviceConfig]:
    """The devices of collect.toml (errors name the file and key)."""
    return load_collect_file(path).devices


def _entity_tags(level: str, entity: str, site: str) -> tuple[tuple[str, str], ...]:
    if level == "loop":
        return (("loop", entity), ("site", site))
    if level in POWER_LEVELS:
        return (("id", entity), ("level", level), ("site", site))
    return (("site", site),)


SNMP_INTERVAL_S = 30.0


def devices_from_twin(endpoints: Sequence[Endpoint], site: str, *, topo: Topology | None = None,
                      interval_s: float = 1.0, timeout_s: float = 1.0,
                      period_s: float | None = None) -> list[DeviceConfig]:
    """One DeviceConfig per twin endpoint, with its profile and entity tags.

    With ``topo``, busway tap-offs are tagged as their racks and power ratings set the
    range checks; without it tap-offs are sub-points of their row. With ``period_s`` (the
    control period) the polling follows a site's usual plan: CDUs every period (loop
    capacity moves fastest: a pump trips), PDUs and UPSes over SNMP every
    ``max(30 s, interval)`` (sites poll them every 10-60 s; server power, which the caps
    need every period, comes from the agents), everything else every ``interval_s``.
    """
    from models.topology import LEVELS

    out = []
    for ep in endpoints:
        tags = _entity_tags(ep.level, ep.entity, site)
        options: dict[str, Any] = {}
        rating: float | None = None
        if topo is not None and ep.level in POWER_LEVELS:
            try:
                n = topo.index(LEVELS.index(ep.level), ep.entity)
            except ValueError:
                n = -1
            if n >= 0 and float(topo.node_limit_w[n]) < float("inf"):
                rating = float(topo.node_limit_w[n])
        if ep.protocol == "modbus":
            profile = TWIN_PROFILES.get(ep.model, ep.model)
            options["unit"] = ep.unit if ep.unit is not None else 1
            if ep.level == "site":
                options["metric_map"] = {"power.power_w": "site.facility_w"}
            if ep.model == "busway-tapoff" and topo is not None:
                options["children"] = racks = _racks_of_row(topo, ep.entity)
                options["child_ratings_w"] = {
                    r: float(topo.node_limit_w[topo.index(LEVELS.index("rack"), r)]) for r in racks}
        elif ep.protocol == "snmp":
            profile = ep.model
            options.update(version="2c", community=ep.community or "public")
        else:
            profile = TWIN_PROFILES.get(ep.model, ep.model)
            options["topic"] = ep.topic
            if ep.username:  # its password comes from $POWERPLANE_MQTT_PASSWORD, as for the bus
                options["username"] = ep.username
        iv, to = interval_s, timeout_s
        if period_s is not None:
            if ep.level == "loop":
                iv, to = min(interval_s, period_s), min(timeout_s, period_s)
            elif ep.protocol == "snmp":
                iv, to = max(SNMP_INTERVAL_S, interval_s), max(timeout_s, 2.0)
        # With a site's polling plan, polls jitter by a tenth of the interval, as real pollers
        # drift: a meter read every 2 s on the dot sees a job that swings at 0.5 Hz at the same
        # phase every time, and its energy integral comes out biased by the swing (4 % in the demo).
        out.append(DeviceConfig(ep.device, ep.protocol, profile, ep.host, ep.port, iv, to,
                                0.1 * iv if period_s is not None else 0.0,
                                tags, rating, MappingProxyType(options)))
    return out


def _racks_of_row(topo: Topology, row: str) -> list[str]:
    from models.topology import L_RACK, L_ROW

    g = topo.index(L_ROW, row)
    parents = topo.node_parent[topo.level_slice(L_RACK)]
    return [topo.level_ids[L_RACK][i] for i in range(len(parents)) if int(parents[i]) == g]


def load_endpoints(path: str | Path) -> tuple[str, list[Endpoint]]:
    """The site and endpoints of a file written by ``powerplane twin`` (Twin.write_endpoints)."""
    from models.twin.endpoints import Endpoint

    p = Path(path)
    try:
        doc = json.loads(p.read_text())
        site = str(doc["site"])
        eps = [Endpoint(**e) for e in doc["endpoints"]]
    except FileNotFoundError:
        raise ConfigError(p, [("", "file not found")]) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(p, [("", f"not an endpoints file written by `powerplane twin`: {exc!r}")]) from None
    return site, eps
