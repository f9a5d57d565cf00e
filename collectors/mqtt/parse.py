"""Pure MQTT payload parsing: (topic, payload) -> readings, by a profile's topic templates.

A malformed payload raises ``DecodeError`` (the intake counts, logs and skips it); a
well-formed message for a point the profile does not map is ignored and counted apart.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

from collectors.base import DeviceConfig, PointTarget, series_id
from collectors.mqtt.profile import UNIT_NS, MqttPoint, MqttProfile, Subscription, substitute
from models.errors import DecodeError
from models.grid import DemandResponseEvent
from models.readings import Quality, Reason, SeriesRegistry, metrics


@dataclass
class Parsed:
    """Readings and events from one message."""

    series: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    ts_ns: list[int] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    rejected: Counter[Reason] = field(default_factory=Counter)
    dr_events: list[DemandResponseEvent] = field(default_factory=list)
    ignored: int = 0  # well-formed but not mapped by the profile


_MAX_ROUTES = 100_000


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a topic goes, resolved once per topic."""

    ix: int
    sub: Subscription | None
    variables: dict[str, str]
    point: MqttPoint | None
    sid: int
    topic: str


class MessageParser:
    """Parses the messages of one MQTT device (a broker connection + profile)."""

    def __init__(self, profile: MqttProfile, device: DeviceConfig, registry: SeriesRegistry) -> None:
        self.profile = profile
        self.device = device
        self.registry = registry
        self._series: dict[tuple[int, str, tuple[str, ...]], int] = {}
        self._known = set(metrics())
        self._routes: dict[str, _Route] = {}

    def _sid(self, sub_ix: int, key: str, target: PointTarget, tags: dict[str, str]) -> int:
        ck = (sub_ix, key, tuple(tags.values()))
        sid = self._series.get(ck)
        if sid is None:
            sid = self._series[ck] = series_id(self.registry, self.device, target, tuple(tags.items()))
        return sid

    def parse(self, topic: str, payload: bytes, now_ns: int) -> Parsed:
        """Readings of one message; ``now_ns`` stamps values without their own timestamp."""
        out = Parsed()
        self.parse_into(out, topic, payload, now_ns)
        return out

    def parse_into(self, out: Parsed, topic: str, payload: bytes, now_ns: int) -> None:
        """Append the readings of one message to ``out`` (one Parsed per burst saves allocations).

        On DecodeError nothing of this message has been appended.
        """
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
            if len(self._routes) < _MAX_ROUTES:  # topics repeat; unbounded topic spaces just miss
                self._routes[topic] = route
        if route.sub is None:
            out.ignored += 1
        elif self.profile.format == "influx":
            self._influx(route.ix, route.sub, route.variables, payload, now_ns, out)
        elif route.point is None:
            out.ignored += 1
        else:
            self._json(route, payload, now_ns, out)

    def _route(self, topic: str) -> _Route:
        for ix, sub in enumerate(self.profile.subscriptions):
            variables = sub.template.match(topic)
            if variables is None:
                continue
            spec = sub.spec
            name = variables.get(spec.point_var) if spec.point_var in variables else next(iter(sub.points), None)
            point = sub.points.get(name or "")
            sid = -1
            if point is not None and point.target is not None:
                ck = (ix, name or "", tuple(variables.values()))
                sid = self._series.get(ck, -1)
                if sid < 0:
                    tags = {k: substitute(v, variables) for k, v in spec.tags.items()}
                    sid = self._series[ck] = series_id(self.registry, self.device, point.target, tuple(tags.items()))
            return _Route(ix, sub, variables, point, sid, topic)
        return _Route(-1, None, {}, None, -1, topic)

    def _json(self, route: _Route, payload: bytes, now_ns: int, out: Parsed) -> None:
        sub, point = route.sub, route.point
        assert sub is not None and point is not None
        spec = sub.spec
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecodeError(f"{route.topic}: not JSON: {exc}") from None
        if type(doc) is not dict:
            raise DecodeError(f"{route.topic}: JSON payload is not an object")
        if point.kind == "dr_event":
            try:
                out.dr_events.append(DemandResponseEvent.from_json(doc))
            except (KeyError, TypeError, ValueError) as exc:
                raise DecodeError(f"{route.topic}: bad demand-response event: {exc!r}") from None
            return
        raw = doc.get(point.field)
        kind = type(raw)
        if kind is not float and kind is not int:
            if kind is bool:
                raw = int(raw)  # type: ignore[arg-type]
            else:
                raise DecodeError(f"{route.topic}: {point.field!r} is {raw!r}, not a number")
        ts_ns = now_ns
        if spec.timestamp:
            ts = doc.get(spec.timestamp)
            if ts is not None:
                if type(ts) is int and ts >= 0:
                    ts_ns = ts * UNIT_NS[spec.timestamp_unit]
                elif type(ts) is float and math.isfinite(ts) and ts >= 0:
                    ts_ns = int(ts * UNIT_NS[spec.timestamp_unit])
                else:
                    raise DecodeError(f"{route.topic}: timestamp {ts!r} is not a number")
        quality = 0
        if spec.quality:
            q = doc.get(spec.quality)
            if q is not None:
                q = str(q)
                if q in spec.bad:
                    out.rejected[Reason.DEVICE_BAD] += 1
                    return
                if q not in spec.good:
                    quality = int(Quality.UNCERTAIN)
        t = point.target
        assert t is not None
        out.series.append(route.sid)
        out.values.append(float(raw) * t.scale + t.offset)  # type: ignore[arg-type]
        out.ts_ns.append(ts_ns)
        out.quality.append(quality)

    def _influx(self, ix: int, sub: Subscription, variables: dict[str, str], payload: bytes, now_ns: int,
                out: Parsed) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{topic_of(sub, variables)}: not UTF-8: {exc}") from None
        unit = UNIT_NS[sub.spec.timestamp_unit]
        base_tags = {k: substitute(v, variables) for k, v in sub.spec.tags.items()}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            measurement, tags, fields, ts = parse_line(line)
            ts_ns = now_ns if ts is None else ts * unit
            all_tags = {**base_tags, **tags}
            for fname, value in fields.items():
                name = f"{measurement}.{fname}"
                metric_name = sub.spec.metrics.get(name, name)
                if metric_name not in self._known or isinstance(value, str):
                    out.ignored += 1
                    continue
                target = PointTarget(metric_name)
                key = f"{name}|{','.join(f'{k}={v}' for k, v in sorted(all_tags.items()))}"
                out.series.append(self._sid(ix, key, target, dict(sorted(all_tags.items()))))
                out.values.append(float(value))
                out.ts_ns.append(ts_ns)
                out.quality.append(0)


def topic_of(sub: Subscription, variables: dict[str, str]) -> str:
    """The concrete topic a template matched (for messages)."""
    return "/".join(variables.get(lit, lit) if is_var else lit for is_var, lit in sub.template.levels)


# ---- InfluxDB line protocol -------------------------------------------------------------

def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quotes and not escaped by a backslash."""
    parts, cur, quoted, i = [], [], False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if quoted:
        raise DecodeError("unterminated string")
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ' ,="\\':
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _field_value(raw: str) -> float | str:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise DecodeError(f"bad string field {raw!r}")
        return _unescape(raw[1:-1])
    if raw in ("t", "T", "true", "True", "TRUE"):
        return 1.0
    if raw in ("f", "F", "false", "False", "FALSE"):
        return 0.0
    try:
        if raw.endswith(("i", "u")):
            return float(int(raw[:-1]))
        return float(raw)
    except ValueError:
        raise DecodeError(f"bad field value {raw!r}") from None


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, float | str], int | None]:
    """``(measurement, tags, fields, timestamp)`` of one line-protocol line."""
    parts = [p for p in _split(line, " ") if p != ""]
    if len(parts) not in (2, 3):
        raise DecodeError(f"line protocol needs 'measurement[,tags] fields [timestamp]': {line[:80]!r}")
    head = _split(parts[0], ",")
    measurement = _unescape(head[0])
    if not measurement:
        raise DecodeError(f"empty measurement: {line[:80]!r}")
    tags: dict[str, str] = {}
    for kv in head[1:]:
        k, eq, v = kv.partition("=")
        if not eq or not k or not v:
            raise DecodeError(f"bad tag {kv!r}")
        tags[_unescape(k)] = _unescape(v)
    fields: dict[str, float | str] = {}
    for kv in _split(parts[1], ","):
        k, eq, v = kv.partition("=")
        if not eq or not k or not v:
            raise DecodeError(f"bad field {kv!r}")
        fields[_unescape(k)] = _field_value(v)
    ts: int | None = None
    if len(parts) == 3:
        try:
            ts = int(parts[2])
        except ValueError:
            raise DecodeError(f"bad timestamp {parts[2]!r}") from None
    return measurement, tags, fields, ts
