"""Pure MQTT payload parsing: (topic, payload) -> readings, by a profile's topic templates.

Every payload is hostile until parsed, and one bad item never costs another:

* a JSON message that cannot be read — not UTF-8, not JSON, over ``max_payload_bytes``,
  nested deeper than ``MAX_JSON_DEPTH``, an integer of more than ``MAX_INT_DIGITS``
  digits, a value that is not a number — raises ``DecodeError`` with nothing of it
  appended (the intake counts it as ``DECODE``, logs it and goes on with the burst);
* in line protocol each *line* is one item: a bad line is counted as ``DECODE`` and the
  other lines of the message are kept;
* a reading whose timestamp lies outside ``[now - timestamp_max_age_s, now +
  timestamp_max_ahead_s]`` is rejected and counted as ``Reason.TIMESTAMP`` (an epoch in
  seconds read as ms lands in 1970, one in µs read as ms in the year 55,000: both are
  refused, not stored). The unit comes from the profile's ``timestamp_unit``;
* a well-formed message for a point the profile does not map is ignored and counted apart.

The window and the payload cap are device options (collect.toml ``[devices.options]``):
``timestamp_max_age_s`` (default 1 day), ``timestamp_max_ahead_s`` (default 5 minutes),
``max_payload_bytes`` (default 64 KiB), ``max_series`` (default 100,000 series a device
may create from topic levels and line-protocol tags).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from collectors.base import DeviceConfig, PointTarget, series_id
from collectors.mqtt.profile import UNIT_NS, MqttPoint, MqttProfile, Subscription, substitute
from models.clock import NS_PER_S
from models.errors import DecodeError
from models.grid import DemandResponseEvent
from models.readings import Quality, Reason, SeriesRegistry, metrics

MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 32  # beyond any timestamp in ns or counter; int() of 4,301+ digits raises ValueError
# Device options (name, default, upper bound) of the payload edge.
EDGE_OPTIONS = ("timestamp_max_age_s", "timestamp_max_ahead_s", "max_payload_bytes", "max_series")


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
    bad_items: int = 0  # lines of line protocol rejected on their own (the rest of the message was kept)
    timestamp_note: str = ""  # the first timestamp rejected, for the log


def edge_options(device: DeviceConfig) -> dict[str, float]:
    """The payload-edge options of ``device`` (validated with its other options, ``collectors.options``)."""
    from collectors.options import options_of

    o = options_of(device)
    return {k: float(getattr(o, k)) for k in EDGE_OPTIONS}


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"integer of {digits:,} digits")
    return int(text)


def _depth_ok(payload: bytes, limit: int) -> bool:
    """Whether JSON ``payload`` nests at most ``limit`` deep (strings skipped); cheap when it has few brackets."""
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return True
    depth = 0
    in_str = escaped = False
    for c in payload:
        if in_str:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif c in (0x5D, 0x7D):
            depth -= 1
    return True


def load_json(payload: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a JSON payload within the depth and integer-size bounds; ValueError (with why) otherwise."""
    if not _depth_ok(payload, max_depth):
        raise ValueError(f"nested deeper than {max_depth}")
    try:
        return json.loads(payload.decode("utf-8"), parse_int=_bounded_int)
    except RecursionError:  # cannot happen within the depth bound; kept as the last line of defence
        raise ValueError("nested too deeply") from None


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
        opts = edge_options(device)
        self.max_age_ns = int(opts["timestamp_max_age_s"] * NS_PER_S)
        self.max_ahead_ns = int(opts["timestamp_max_ahead_s"] * NS_PER_S)
        self.max_payload_bytes = int(opts["max_payload_bytes"])
        self.max_series = int(opts["max_series"])
        self._series: dict[tuple[int, str, tuple[str, ...]], int] = {}
        self._known = set(metrics())
        self._routes: dict[str, _Route] = {}

    def _sid(self, sub_ix: int, key: str, target: PointTarget, tags: dict[str, str]) -> int:
        ck = (sub_ix, key, tuple(tags.values()))
        sid = self._series.get(ck)
        if sid is None:
            if len(self._series) >= self.max_series:  # tags come off the wire: bound what they can create
                raise DecodeError(f"{self.device.name}: more than {self.max_series:,} series (max_series)")
            sid = self._series[ck] = series_id(self.registry, self.device, target, tuple(tags.items()))
        return sid

    def _timestamp_ns(self, ts: object, unit: str, now_ns: int, where: str, out: Parsed) -> int | None:
        """``ts`` in ``unit`` as ns if it lies in the window around ``now_ns``; None (counted) if not.

        A timestamp that is not a number at all raises DecodeError: the message is malformed.
        """
        if type(ts) is int:
            ts_ns = ts * UNIT_NS[unit]
        elif type(ts) is float and math.isfinite(ts):
            ts_ns = int(ts * UNIT_NS[unit])
        else:
            raise DecodeError(f"{where}: timestamp {str(ts)[:40]!r} is not a number")
        if now_ns - self.max_age_ns <= ts_ns <= now_ns + self.max_ahead_ns:
            return ts_ns
        out.rejected[Reason.TIMESTAMP] += 1
        if not out.timestamp_note:
            age_s = (now_ns - ts_ns) / NS_PER_S
            out.timestamp_note = (f"{where}: timestamp {str(ts)[:40]} ({unit}) is "
                                  f"{f'{age_s:,.0f} s old' if age_s > 0 else f'{-age_s:,.0f} s ahead'}; "
                                  f"accepted: {self.max_age_ns / NS_PER_S:g} s old to "
                                  f"{self.max_ahead_ns / NS_PER_S:g} s ahead (timestamp_unit wrong?)")
        return None

    def parse(self, topic: str, payload: bytes, now_ns: int) -> Parsed:
        """Readings of one message; ``now_ns`` stamps values without their own timestamp."""
        out = Parsed()
        self.parse_into(out, topic, payload, now_ns)
        return out

    def parse_into(self, out: Parsed, topic: str, payload: bytes, now_ns: int) -> None:
        """Append the readings of one message to ``out`` (one Parsed per burst saves allocations).

        On DecodeError nothing of this message has been appended.
        """
        if len(payload) > self.max_payload_bytes:
            raise DecodeError(f"{topic[:200]}: payload of {len(payload):,} bytes exceeds max_payload_bytes "
                              f"({self.max_payload_bytes:,})")
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
                    if len(self._series) >= self.max_series:  # topic levels come off the wire too
                        raise DecodeError(f"{self.device.name}: more than {self.max_series:,} series (max_series)")
                    tags = {k: substitute(v, variables) for k, v in spec.tags.items()}
                    sid = self._series[ck] = series_id(self.registry, self.device, point.target, tuple(tags.items()))
            return _Route(ix, sub, variables, point, sid, topic)
        return _Route(-1, None, {}, None, -1, topic)

    def _json(self, route: _Route, payload: bytes, now_ns: int, out: Parsed) -> None:
        sub, point = route.sub, route.point
        assert sub is not None and point is not None
        spec = sub.spec
        try:
            doc = load_json(payload)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise DecodeError(f"{route.topic}: not JSON: {str(exc)[:200]}") from None
        if type(doc) is not dict:
            raise DecodeError(f"{route.topic}: JSON payload is not an object")
        if point.kind == "dr_event":
            try:
                ev = DemandResponseEvent.from_json(doc)
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise DecodeError(f"{route.topic}: bad demand-response event: {str(exc)[:200]}") from None
            # A DR event may be announced days ahead, but not one that ended before the window.
            if ev.end_ns < now_ns - self.max_age_ns or ev.start_ns > now_ns + 366 * 86_400 * NS_PER_S:
                out.rejected[Reason.TIMESTAMP] += 1
                out.timestamp_note = out.timestamp_note or f"{route.topic}: demand-response event {ev.id!r} " \
                                                           f"lies outside the accepted window"
                return
            out.dr_events.append(ev)
            return
        raw = doc.get(point.field)
        kind = type(raw)
        if kind is not float and kind is not int:
            if kind is bool:
                raw = int(raw)  # type: ignore[arg-type]
            else:
                raise DecodeError(f"{route.topic}: {point.field!r} is {str(raw)[:40]!r}, not a number")
        ts_ns = now_ns
        if spec.timestamp:
            ts = doc.get(spec.timestamp)
            if ts is not None:
                checked = self._timestamp_ns(ts, sub.timestamp_unit, now_ns, route.topic, out)
                if checked is None:
                    return
                ts_ns = checked
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
        value = float(raw) * t.scale + t.offset  # type: ignore[arg-type]  # <= 32 digits: no OverflowError
        out.series.append(route.sid)
        out.values.append(value)
        out.ts_ns.append(ts_ns)
        out.quality.append(quality)

    def _influx(self, ix: int, sub: Subscription, variables: dict[str, str], payload: bytes, now_ns: int,
                out: Parsed) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{topic_of(sub, variables)}: not UTF-8: {exc}") from None
        unit = sub.timestamp_unit
        base_tags = {k: substitute(v, variables) for k, v in sub.spec.tags.items()}
        where = topic_of(sub, variables)
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:  # one line is one item: a bad line costs only itself
                self._influx_line(ix, sub, base_tags, line, unit, now_ns, where, out)
            except DecodeError:
                out.rejected[Reason.DECODE] += 1
                out.bad_items += 1

    def _influx_line(self, ix: int, sub: Subscription, base_tags: dict[str, str], line: str, unit: str,
                     now_ns: int, where: str, out: Parsed) -> None:
        measurement, tags, fields, ts = parse_line(line)
        ts_ns = now_ns
        if ts is not None:
            checked = self._timestamp_ns(ts, unit, now_ns, where, out)
            if checked is None:
                return
            ts_ns = checked
        all_tags = {**base_tags, **tags}
        for fname, value in fields.items():
            name = f"{measurement}.{fname}"
            metric_name = sub.spec.metrics.get(name, name)
            if metric_name not in self._known or isinstance(value, str):
                out.ignored += 1
                continue
            target = PointTarget(metric_name)
            key = f"{name}|{','.join(f'{k}={v}' for k, v in sorted(all_tags.items()))}"
            sid = self._sid(ix, key, target, dict(sorted(all_tags.items())))
            out.series.append(sid)
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
            raise DecodeError(f"bad string field {raw[:40]!r}")
        return _unescape(raw[1:-1])
    if raw in ("t", "T", "true", "True", "TRUE"):
        return 1.0
    if raw in ("f", "F", "false", "False", "FALSE"):
        return 0.0
    try:
        if raw.endswith(("i", "u")):
            return float(_bounded_int(raw[:-1]))
        return float(raw)
    except ValueError:
        raise DecodeError(f"bad field value {raw[:40]!r}") from None


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
            raise DecodeError(f"bad tag {kv[:40]!r}")
        tags[_unescape(k)] = _unescape(v)
    fields: dict[str, float | str] = {}
    for kv in _split(parts[1], ","):
        k, eq, v = kv.partition("=")
        if not eq or not k or not v:
            raise DecodeError(f"bad field {kv[:40]!r}")
        fields[_unescape(k)] = _field_value(v)
    ts: int | None = None
    if len(parts) == 3:
        try:
            ts = _bounded_int(parts[2])
        except ValueError:
            raise DecodeError(f"bad timestamp {parts[2][:40]!r}") from None
    return measurement, tags, fields, ts
