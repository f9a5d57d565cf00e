"""A real InfluxDB 1.x seeded once with a twin run of the demo hall (see seed.py)."""

from __future__ import annotations

import pytest

from models.site import SiteConfig
from models.topology import Topology
from testbed.realservers import InfluxDB1
from tests.dashboards.seed import Seeded, seed


@pytest.fixture(scope="session")
def seeded_influx(influxdb1: InfluxDB1, demo_site: SiteConfig, demo_topo: Topology) -> tuple[InfluxDB1, Seeded]:
    """The session InfluxDB with database ``dashboards`` holding the demo scenario."""
    return influxdb1, seed(influxdb1.url, "dashboards", demo_site, demo_topo)
