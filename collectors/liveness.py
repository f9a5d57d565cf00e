"""Which collector processes are alive, as the receiving side (the controller) sees them.

Every collector process publishes its batches with its name (``src``) and a sequence number,
and its devices' health (``collector.up``, tagged ``device``) every ``health_s``. A collector
whose batches stop for ``timeout_s`` is **down**, and so are the devices it last reported:
one ``collector_down`` event names them, and their readings simply age — the controller
plans on them as it plans on any stale telemetry (a loop's capacity never rises, an old grid
limit gives way to the interconnect limit), never as zero. A collector that publishes again
is ``collector_up``. Gaps in the sequence (batches lost between a collector and here) are
counted. Pure: times are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.clock import NS_PER_S
from models.events import Event, EventKind
from models.readings import ReadingBatch, SeriesRegistry

MAX_SOURCES = 10_000


@dataclass
class Source:
    """One collector process as last heard from."""

    last_ns: int
    seq: int
    batches: int = 0
    readings: int = 0
    gaps: int = 0  # batches missing from the sequence
    up: bool = True
    devices: set[str] = field(default_factory=set)
    downs: int = 0


class SourceWatch:
    """Collector processes by name: alive, silent (down), their devices (see the module docstring)."""

    def __init__(self, registry: SeriesRegistry, site: str, timeout_s: float = 25.0) -> None:
        self.registry = registry
        self.site = site
        self.timeout_ns = int(timeout_s * NS_PER_S)
        self.sources: dict[str, Source] = {}
        self._device_of: dict[int, str | None] = {}  # series id -> the device of a collector.up series

    def seen(self, src: str, seq: int, now_ns: int, batch: ReadingBatch) -> None:
        """A batch from ``src`` numbered ``seq`` arrived at ``now_ns``."""
        s = self.sources.get(src)
        if s is None:
            if len(self.sources) >= MAX_SOURCES:
                return
            s = self.sources[src] = Source(now_ns, seq)
        elif seq > s.seq + 1:
            s.gaps += seq - s.seq - 1
        if seq < s.seq:  # a restarted collector counts from 1 again
            s.seq = 0
        s.seq = max(s.seq, seq)
        s.last_ns = max(s.last_ns, now_ns)
        s.batches += 1
        s.readings += len(batch)
        if len(batch):
            for sid in np.unique(batch.series).tolist():
                dev = self._device_of.get(sid, "")
                if dev == "":
                    key = self.registry.key(sid)
                    dev = dict(key.tags).get("device") if key.metric == "collector.up" else None
                    self._device_of[sid] = dev
                if dev is not None and len(s.devices) < 100_000:
                    s.devices.add(dev)

    def check(self, now_ns: int) -> list[Event]:
        """``collector_down`` for sources silent longer than the timeout, ``collector_up`` for returns."""
        out: list[Event] = []
        for src, s in self.sources.items():
            silent = now_ns - s.last_ns > self.timeout_ns
            if s.up and silent:
                s.up = False
                s.downs += 1
                devs = sorted(s.devices)
                out.append(Event(now_ns, EventKind.COLLECTOR_DOWN, "error", "controller",
                                 f"collector {src} silent for {(now_ns - s.last_ns) / NS_PER_S:.0f} s: its "
                                 f"{len(devs)} device(s) are down until it or its replacement publishes "
                                 f"({', '.join(devs[:8])}{' ...' if len(devs) > 8 else ''}); their readings age "
                                 "and are planned at worst case", src, {"devices": float(len(devs))}))
            elif not s.up and not silent:
                s.up = True
                out.append(Event(now_ns, EventKind.COLLECTOR_UP, "info", "controller",
                                 f"collector {src} publishes again", src, {"devices": float(len(s.devices))}))
        return out

    def down_devices(self) -> list[str]:
        """Devices of collectors that are down now."""
        return sorted({d for s in self.sources.values() if not s.up for d in s.devices})

    def summary(self) -> dict[str, Any]:
        """Per collector: up, batches, readings, sequence gaps, devices, times down."""
        return {src: {"up": s.up, "batches": s.batches, "readings": s.readings, "gaps": s.gaps, "seq": s.seq,
                      "devices": sorted(s.devices), "downs": s.downs, "last_ns": s.last_ns}
                for src, s in sorted(self.sources.items())}
