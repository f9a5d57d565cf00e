"""The collector contract: what a device is, where a decoded value goes, and what a poll returns.

Every protocol plugs in through one small protocol, ``Poller``: ``poll(ts_ns)`` reads one
device once and returns a ``PollResult`` whose batch holds raw (not yet validated)
readings stamped with the time the request was *sent*. A poller raises a ``DeviceError``
subclass when the whole poll failed and returns partial results with ``errors`` when only
some reads failed. The runtime schedules pollers, validates their batches and reports
per-device health; it never needs to know the protocol.

Series tags follow models/state.py: device tags carry the entity (``site``, ``level`` +
``id`` or ``loop``), point tags add detail (``phase``, ``outlet``...), so entity totals
route to SiteState and sub-points are only stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, get_args

from models.errors import DeviceError
from models.readings import ReadingBatch, Reason, SeriesRegistry

Tags = tuple[tuple[str, str], ...]
Protocol_ = Literal["modbus", "snmp", "mqtt"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol_)


@dataclass(frozen=True, slots=True)
class PointTarget:
    """Where a decoded value goes: ``value = raw * scale + offset`` into ``metric`` with ``tags``."""

    metric: str  # "power.power_w", registered in models/readings.py
    scale: float = 1.0  # applied after any scale-factor register
    offset: float = 0.0
    tags: Tags = ()  # point tags (phase, outlet, ...) added to the device tags
    counter: bool = False  # energy counters: wrap/reset handling in validate.py
    rating_w: float | None = None  # overrides the device rating for this point's range


@dataclass(frozen=True)
class DeviceConfig:
    """One device to collect, validated from collect.toml or built from the twin's endpoints."""

    name: str
    protocol: Protocol_
    profile: str  # profile name, see collectors/profiles.py
    host: str
    port: int
    interval_s: float = 1.0
    timeout_s: float = 1.0
    jitter_s: float = 0.0
    tags: Tags = ()  # entity tags per models/state.py: site, level+id or loop
    rating_w: float | None = None  # sets the range checks of power metrics
    # protocol-specific: modbus unit/framer/max_block/gap/pause_s/slow_every;
    # snmp version/community/user/auth/priv/context/max_repetitions; mqtt client_id/qos...
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def tag_dict(self) -> dict[str, str]:
        """The device tags as a dict."""
        return dict(self.tags)

    def option(self, key: str, default: Any = None) -> Any:
        """One protocol option, or ``default``."""
        return self.options.get(key, default)


def series_id(registry: SeriesRegistry, device: DeviceConfig, target: PointTarget, extra: Tags = ()) -> int:
    """Intern the series of ``target`` on ``device`` (device tags + point tags + ``extra``)."""
    tags = dict(device.tags)
    tags.update(target.tags)
    tags.update(extra)
    rating = target.rating_w if target.rating_w is not None else device.rating_w
    if rating is not None and not target.metric.startswith(("power.", "cooling.heat", "cooling.capacity")):
        rating = None  # ratings are in W; other units keep their absolute ranges
    return registry.id(target.metric, rating, **tags)


@dataclass
class PollResult:
    """What one poll produced: raw readings (``ts_ns`` = request sent; the runtime restamps them at
    the middle of the exchange) and partial failures."""

    batch: ReadingBatch
    errors: list[DeviceError] = field(default_factory=list)  # parts that failed; empty when all fine
    # values the decoder refused before validation (sentinels, undecodable bytes), by reason
    rejected: Counter[Reason] = field(default_factory=Counter)


class Intake(Protocol):
    """Takes messages from one subscribed device (MQTT) and hands them on; started and stopped
    by the runtime, which validates what it delivers exactly as for a poller's batches."""

    device: DeviceConfig

    async def start(self) -> None:
        """Connect and subscribe (in the background; reconnects on its own)."""
        ...

    async def stop(self) -> None:
        """Disconnect."""
        ...


class Poller(Protocol):
    """Reads one device; built once from (device, profile), then polled by the runtime."""

    device: DeviceConfig

    async def prepare(self) -> None:
        """Connect and discover what to read (a SunSpec model walk, say), so that the readings of
        the poll that follows are stamped when they are read; raise a ``DeviceError`` on failure."""
        ...

    async def poll(self, ts_ns: int) -> PollResult:
        """Read the device once; raise a ``DeviceError`` subclass if nothing could be read."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
