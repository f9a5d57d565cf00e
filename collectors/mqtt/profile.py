"""MQTT profiles: topic templates and payload keys -> metrics and tags, as TOML data.

    protocol = "mqtt"
    name = "bms-json"
    format = "json"                 # json | influx (line protocol)
    timestamp_unit = "ms"           # s | ms | us | ns: the unit of every timestamp in this profile's
                                    # payloads (default ms for JSON, ns for line protocol)

    [[subscriptions]]
    topic = "BMS/v1/PUB/Value/Rack/{point}/{site}/{row}/{rack}"   # {var} matches one level
    value = "value"                 # JSON key of the value (points may override with `field`)
    timestamp = "timestamp"         # JSON key of the timestamp ("" = time of arrival)
    timestamp_unit = "ms"           # optional: overrides the profile's timestamp_unit
    quality = "quality"             # JSON key of a quality string ("" = none)
    good = ["Good"]                 # quality values that are good; `bad` ones are rejected,
    bad = ["Bad"]                   # anything else is kept flagged UNCERTAIN
    tags = { level = "rack", id = "{rack}" }   # literals, {var} substituted from the topic

    [subscriptions.points.LiquidInletTemperature]    # keyed by the topic's {point} level
    metric = "cooling.inlet_c"      # plus scale, offset, tags, field, kind = "value" | "dr_event"

For ``format = "influx"`` the line's measurement.field is the metric (or ``metrics`` maps
it), the line's tags become tags, and ``points`` is not used.

A timestamp is checked against a window around the time of arrival (collectors/mqtt/parse.py):
a wrong ``timestamp_unit`` shows up as readings rejected with reason ``TIMESTAMP``, never as
readings stored in 1970.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from collectors.base import PointTarget
from collectors.profiles import STRICT, MetricName, Scale, validate_model
from models.errors import ProfileError
from models.readings import metric

_VAR = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_SUB = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
TimestampUnit = Literal["s", "ms", "us", "ns"]


class MqttPointSpec(BaseModel):
    """What one point of a subscription becomes."""

    model_config = STRICT

    kind: Literal["value", "dr_event"] = "value"
    metric: MetricName | None = None
    field: str | None = None
    scale: Scale = 1.0
    offset: Scale = 0.0
    tags: dict[str, str] = {}


class SubscriptionSpec(BaseModel):
    """One topic template."""

    model_config = STRICT

    topic: str
    value: str = "value"
    timestamp: str = ""
    timestamp_unit: TimestampUnit | None = None  # None: the profile's
    quality: str = ""
    good: list[str] = ["Good", "good", "GOOD"]
    bad: list[str] = ["Bad", "bad", "BAD"]
    tags: dict[str, str] = {}
    point_var: str = "point"
    points: dict[str, MqttPointSpec] = {}
    metrics: dict[str, str] = {}  # influx: "measurement.field" -> registered metric


class MqttProfileModel(BaseModel):
    """The whole profile file."""

    model_config = STRICT

    protocol: Literal["mqtt"]
    name: str
    description: str = ""
    vendor: str = ""
    format: Literal["json", "influx"] = "json"
    timestamp_unit: TimestampUnit | None = None  # None: ms for JSON, ns (line protocol's own) for influx
    qos: Literal[0, 1, 2] = 1
    subscriptions: list[SubscriptionSpec] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A topic with ``{var}`` levels: its subscription filter and a matcher."""

    text: str
    levels: tuple[tuple[bool, str], ...]  # (is_var, literal or var name)

    @classmethod
    def parse(cls, text: str) -> TopicTemplate:
        """Compile ``a/{x}/b``; ``#`` may end a template (matches the rest, no tags)."""
        levels = []
        parts = text.split("/")
        for i, part in enumerate(parts):
            m = _VAR.match(part)
            if m:
                levels.append((True, m.group(1)))
            elif "{" in part or "}" in part or "+" in part or ("#" in part and (part != "#" or i != len(parts) - 1)):
                raise ValueError(f"level {part!r}: use a whole level {{name}} (or a final #)")
            else:
                levels.append((False, part))
        return cls(text, tuple(levels))

    @property
    def filter(self) -> str:
        """The MQTT subscription filter (``{var}`` -> ``+``)."""
        return "/".join("+" if is_var else lit for is_var, lit in self.levels)

    @property
    def variables(self) -> tuple[str, ...]:
        """Names of the template's variables."""
        return tuple(lit for is_var, lit in self.levels if is_var)

    def match(self, topic: str) -> dict[str, str] | None:
        """The variables of ``topic``, or None if it does not match."""
        parts = topic.split("/")
        out: dict[str, str] = {}
        for i, (is_var, lit) in enumerate(self.levels):
            if lit == "#" and not is_var:
                return out if len(parts) >= i else None
            if i >= len(parts):
                return None
            if is_var:
                out[lit] = parts[i]
            elif parts[i] != lit:
                return None
        return out if len(parts) == len(self.levels) else None


@dataclass(frozen=True, slots=True)
class MqttPoint:
    """A resolved point of a subscription."""

    kind: str
    target: PointTarget | None
    field: str


@dataclass(frozen=True)
class Subscription:
    """A resolved subscription."""

    template: TopicTemplate
    spec: SubscriptionSpec
    points: dict[str, MqttPoint]
    timestamp_unit: str = "ms"  # resolved: the subscription's, else the profile's, else the format's default


@dataclass(frozen=True)
class MqttProfile:
    """A parsed MQTT profile."""

    name: str
    protocol: str
    path: Path
    vendor: str
    description: str
    format: str
    qos: int
    subscriptions: tuple[Subscription, ...]

    def describe(self) -> list[tuple[str, str, str]]:
        """Rows ``(point, metric, detail)`` for ``powerplane profiles show``."""
        rows = []
        for s in self.subscriptions:
            if self.format == "influx":
                rows.append((s.template.text, "measurement.field", "line protocol"))
            for name, p in s.points.items():
                what = p.target.metric if p.target is not None else f"({p.kind})"
                detail = f"{s.template.text} [{s.spec.point_var}={name}] .{p.field}"
                if p.target is not None and p.target.scale != 1.0:
                    detail += f" x{p.target.scale:g}"
                rows.append((name, what, detail))
        return rows


def substitute(template: str, variables: dict[str, str]) -> str:
    """``{var}`` in ``template`` replaced from ``variables``."""
    return _SUB.sub(lambda m: variables[m.group(1)], template)


def parse_mqtt_profile(path: Path, data: dict[str, Any]) -> MqttProfile:
    """Validate an MQTT profile; every problem is reported with its key path."""
    prof = validate_model(path, data, MqttProfileModel)
    problems: list[tuple[str, str]] = []
    subs = []
    for i, s in enumerate(prof.subscriptions):
        key = f"subscriptions[{i}]"
        try:
            tpl = TopicTemplate.parse(s.topic)
        except ValueError as exc:
            problems.append((f"{key}.topic", str(exc)))
            continue
        names = set(tpl.variables)
        for k, v in s.tags.items():
            for var in _SUB.findall(v):
                if var not in names:
                    problems.append((f"{key}.tags.{k}", f"{{{var}}} is not a variable of the topic"))
        if prof.format == "json" and s.points and s.point_var not in names and len(s.points) > 1:
            problems.append((f"{key}.point_var", f"{{{s.point_var}}} is not in the topic, so only one point fits"))
        if prof.format == "json" and not s.points:
            problems.append((f"{key}.points", "a JSON subscription needs at least one point"))
        for m_key, m_name in s.metrics.items():
            try:
                metric(m_name)
            except KeyError:
                problems.append((f"{key}.metrics.{m_key}", f"unknown metric {m_name!r}"))
        points = {}
        for name, p in s.points.items():
            if p.kind == "value" and p.metric is None:
                problems.append((f"{key}.points.{name}.metric", "a value point needs a metric"))
                continue
            target = None
            if p.metric is not None:
                target = PointTarget(p.metric, p.scale, p.offset, tuple(sorted(p.tags.items())),
                                     metric(p.metric).kind == "counter")
            points[name] = MqttPoint(p.kind, target, p.field or s.value)
        unit = s.timestamp_unit or prof.timestamp_unit or ("ns" if prof.format == "influx" else "ms")
        subs.append(Subscription(tpl, s, points, unit))
    if problems:
        raise ProfileError(path, problems)
    return MqttProfile(prof.name, "mqtt", path, prof.vendor, prof.description, prof.format, prof.qos, tuple(subs))
