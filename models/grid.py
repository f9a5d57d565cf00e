"""Grid signals: interconnect limit, demand-response events, frequency, price and carbon.

The twin publishes these over MQTT and the collectors read them back, so their JSON form
lives here, next to the types:

    grid/{site}/limit      {"ts": ms, "limit_kw": 5200.0}
    grid/{site}/frequency  {"ts": ms, "hz": 50.012}
    grid/{site}/price      {"ts": ms, "per_mwh": 95.2, "currency": "EUR"}
    grid/{site}/carbon     {"ts": ms, "g_per_kwh": 281.0}
    grid/{site}/dr         {"id": "...", "start": ms, "end": ms, "target_kw": 4300.0,
                            "state": "announced" | "active" | "ended"}       (retained)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

NS_PER_MS = 1_000_000
MAX_EPOCH_MS = 2**62 // NS_PER_MS  # year 2116: still an int64 in nanoseconds


def _epoch_ms(v: object, key: str) -> int:
    if type(v) is float and math.isfinite(v):
        v = int(v)
    if type(v) is not int:
        raise TypeError(f"{key} is {type(v).__name__}, not epoch milliseconds")
    if not 0 <= v <= MAX_EPOCH_MS:
        raise ValueError(f"{key} {v} is outside 0..{MAX_EPOCH_MS} epoch ms")
    return v

DrState = Literal["announced", "active", "ended"]


@dataclass(frozen=True, slots=True)
class DemandResponseEvent:
    """The site must stay at or under ``target_w`` (facility power) from start to end."""

    id: str
    start_ns: int
    end_ns: int
    target_w: float
    announced_ns: int | None = None

    def state(self, ts_ns: int) -> DrState | None:
        """Where the event stands at ``ts_ns`` (None before it is announced)."""
        if ts_ns >= self.end_ns:
            return "ended"
        if ts_ns >= self.start_ns:
            return "active"
        if self.announced_ns is None or ts_ns >= self.announced_ns:
            return "announced"
        return None

    def to_json(self, ts_ns: int) -> dict[str, Any]:
        """The MQTT payload of this event as seen at ``ts_ns``."""
        return {"id": self.id, "start": self.start_ns // NS_PER_MS, "end": self.end_ns // NS_PER_MS,
                "target_kw": round(self.target_w / 1e3, 3), "state": self.state(ts_ns)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DemandResponseEvent:
        """Parse an MQTT payload; raises KeyError/TypeError/ValueError on a bad one.

        Times are epoch ms in 0..MAX_EPOCH_MS (so they stay int64 nanoseconds), the target a
        finite positive kW, the id a string of at most 128 characters; a bool is not a number.
        """
        start, end = (_epoch_ms(doc[k], k) * NS_PER_MS for k in ("start", "end"))
        kw = doc["target_kw"]
        if type(kw) not in (int, float):
            raise TypeError(f"target_kw is {type(kw).__name__}, not a number")
        target = float(kw) * 1e3
        if end <= start or not math.isfinite(target) or target <= 0:
            raise ValueError("demand-response event needs end > start and target_kw > 0")
        ident = doc["id"]
        if type(ident) is not str or not 0 < len(ident) <= 128:
            raise ValueError("id must be a string of 1 to 128 characters")
        return cls(ident, start, end, target)


@dataclass(frozen=True, slots=True)
class GridSignals:
    """What the grid says at one instant."""

    ts_ns: int
    limit_w: float
    frequency_hz: float
    price_per_mwh: float
    carbon_g_per_kwh: float
    currency: str = "EUR"
    events: tuple[DemandResponseEvent, ...] = field(default=())

    def dr_target_w(self, ts_ns: int | None = None) -> float | None:
        """The lowest target of the events active at ``ts_ns`` (default: this instant)."""
        t = self.ts_ns if ts_ns is None else ts_ns
        targets = [e.target_w for e in self.events if e.state(t) == "active"]
        return min(targets) if targets else None

    def facility_limit_w(self, ts_ns: int | None = None) -> float:
        """What the site may draw: the interconnect limit, or a DR target below it."""
        dr = self.dr_target_w(ts_ns)
        return self.limit_w if dr is None else min(self.limit_w, dr)


def price_shape(hour: float) -> float:
    """Daily price shape in [-1, 1]: night trough, morning shoulder, midday solar dip, evening peak."""
    evening = math.exp(-((hour - 19.0) ** 2) / 4.0)
    morning = 0.5 * math.exp(-((hour - 8.0) ** 2) / 3.0)
    solar = 0.6 * solar_shape(hour)
    night = 0.5 * math.exp(-((hour - 3.5) ** 2) / 5.0)
    return max(-1.0, min(1.0, evening + morning - solar - night))


def solar_shape(hour: float) -> float:
    """Share of peak solar output at local ``hour`` (0 at night, 1 at noon)."""
    return max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0)) if 6.0 <= hour <= 18.0 else 0.0


def inference_load(hour: float) -> float:
    """Daily inference demand in [0.3, 1]: low at night, busy days, peak in the evening."""
    day = 0.5 * (1.0 - math.cos(2.0 * math.pi * (hour - 4.0) / 24.0))
    evening = 0.25 * math.exp(-((hour - 20.0) ** 2) / 6.0)
    return max(0.3, min(1.0, 0.3 + 0.55 * day + evening))
