"""Seed a store with the demo twin's telemetry (TwinFeed over a TwinSim run)."""

from __future__ import annotations

from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.topology import Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim
from store.base import Sink

T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def seed(sink: Sink, site: SiteConfig, topo: Topology, seconds: int, every_s: int = 2) -> TwinSim:
    """Write ``seconds`` of the twin's site time, one snapshot every ``every_s``; return the sim."""
    sim = TwinSim(site, topo, start_ns=T0_NS)
    feed = TwinFeed(sim, site.site.name, registry=SeriesRegistry())
    steps = round(every_s / sim.step_s)
    for _ in range(seconds // every_s + 1):
        sink.write(feed.batch())
        sim.step(steps)
    return sim
