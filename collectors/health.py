"""Per-device health: last success, consecutive failures, latency, rejected values — as telemetry.

``HealthTracker`` turns poll outcomes into state transitions the runtime logs once
(first failure at ERROR, repeats at DEBUG, recovery at INFO) and raises as events
(``device_down`` / ``device_up``); ``health_batch`` writes the state as ``collector.*``
readings tagged ``site``, ``device``, ``protocol``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from collectors.base import DeviceConfig
from models.clock import NS_PER_S
from models.readings import ReadingBatch, Reason, SeriesRegistry


class Transition(Enum):
    """What a poll outcome changed."""

    NONE = "none"
    DOWN = "down"  # first failure after success (or at start)
    STILL_DOWN = "still_down"
    UP = "up"  # first success after failures


@dataclass
class DeviceHealth:
    """The health of one device."""

    device: str
    protocol: str
    up: bool = False
    polls: int = 0
    consecutive_failures: int = 0
    last_success_ns: int = 0
    last_attempt_ns: int = 0
    latency_s: float = 0.0
    last_error: str = ""
    last_error_kind: str = ""
    readings: int = 0  # accepted
    rejected: Counter[Reason] = field(default_factory=Counter)
    partial_errors: int = 0  # polls that lost some blocks/tables
    messages_bad: int = 0  # MQTT: malformed payloads skipped
    skipped_slots: int = 0  # polls missed because the previous one overran

    @property
    def rejected_total(self) -> int:
        """Readings rejected for any reason (counter resets are kept, so not counted)."""
        return sum(n for r, n in self.rejected.items() if r != Reason.COUNTER_DECREASE)


class HealthTracker:
    """Keeps ``DeviceHealth`` of every device and reports transitions."""

    def __init__(self, devices: Sequence[DeviceConfig]) -> None:
        self.by_name = {d.name: DeviceHealth(d.name, d.protocol) for d in devices}
        self._ever_up: set[str] = set()

    def success(self, name: str, ts_ns: int, latency_s: float, accepted: int, rejected: Counter[Reason],
                partial_errors: int = 0) -> Transition:
        """Record a (possibly partial) successful poll."""
        h = self.by_name[name]
        was_down = h.consecutive_failures > 0
        h.up = True
        h.polls += 1
        h.consecutive_failures = 0
        h.last_success_ns = h.last_attempt_ns = ts_ns
        h.latency_s = latency_s
        h.readings += accepted
        h.rejected.update(rejected)
        h.partial_errors += 1 if partial_errors else 0
        self._ever_up.add(name)
        return Transition.UP if was_down else Transition.NONE

    def failure(self, name: str, ts_ns: int, latency_s: float, kind: str, message: str) -> Transition:
        """Record a poll that produced nothing."""
        h = self.by_name[name]
        h.up = False
        h.polls += 1
        h.consecutive_failures += 1
        h.last_attempt_ns = ts_ns
        h.latency_s = latency_s
        h.last_error, h.last_error_kind = message, kind
        return Transition.DOWN if h.consecutive_failures == 1 else Transition.STILL_DOWN

    def all(self) -> list[DeviceHealth]:
        """Health of every device, in configuration order."""
        return list(self.by_name.values())


def health_batch(health: Sequence[DeviceHealth], ts_ns: int, site: str, registry: SeriesRegistry) -> ReadingBatch:
    """``collector.*`` readings for every device (tags site, device, protocol)."""
    series: list[int] = []
    values: list[float] = []
    for h in health:
        tags = {"site": site, "device": h.device, "protocol": h.protocol}
        for name, v in (("up", 1.0 if h.up else 0.0), ("latency_s", h.latency_s),
                        ("consecutive_failures", float(h.consecutive_failures)),
                        ("last_success_s", h.last_success_ns / NS_PER_S), ("readings", float(h.readings)),
                        ("rejected", float(h.rejected_total)), ("messages_bad", float(h.messages_bad))):
            if name == "last_success_s" and h.last_success_ns == 0:
                continue  # never succeeded: no value rather than 1970
            series.append(registry.id(f"collector.{name}", None, **tags))
            values.append(v)
    return ReadingBatch.of(ts_ns, series, values, registry=registry)
