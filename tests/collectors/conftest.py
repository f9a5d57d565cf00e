"""Fixtures for collector tests: the twin served on loopback, and its devices as DeviceConfigs."""

from __future__ import annotations

from models.clock import ManualClock
from models.site import SiteConfig
from models.topology import Topology
from models.twin.runner import Twin


async def started_twin(site: SiteConfig, clock: ManualClock, topo: Topology | None = None,
                       mqtt: tuple[str, int] | None = None) -> Twin:
    """Start the twin's servers (the caller stops it)."""
    twin = Twin(site, clock, topo=topo, mqtt=mqtt)
    await twin.start()
    return twin
