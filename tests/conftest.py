"""Shared fixtures: real servers on loopback, the demo site, and a frozen clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.clock import ManualClock
from models.site import SiteConfig, load_site
from models.topology import Topology, build_topology
from testbed.realservers import Etcd, InfluxDB1, Mosquitto, Snmpd, Snmpsim, VictoriaMetrics

ROOT = Path(__file__).resolve().parent.parent
DEMO_SITE = ROOT / "deploy" / "sites" / "demo.toml"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def demo_site() -> SiteConfig:
    """The demo hall."""
    return load_site(DEMO_SITE)


@pytest.fixture(scope="session")
def demo_topo(demo_site: SiteConfig) -> Topology:
    """The demo hall's topology arrays."""
    return build_topology(demo_site)


@pytest.fixture
def clock() -> ManualClock:
    """A frozen clock that moves only when advanced."""
    return ManualClock()


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private mosquitto with persistence (restartable on the same port)."""
    srv = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def influxdb1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """InfluxDB 1.x (InfluxQL); shared by the session, tests use their own databases."""
    srv = InfluxDB1(tmp_path_factory.mktemp("influxdb"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def victoriametrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A fresh VictoriaMetrics (accepts /api/v2/write)."""
    srv = VictoriaMetrics(tmp_path_factory.mktemp("vm"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def snmpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snmpd]:
    """net-snmp snmpd with community ``public`` and a v3 SHA/AES user."""
    srv = Snmpd(tmp_path_factory.mktemp("snmpd"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def snmpsim() -> Iterator[Snmpsim]:
    """snmpsim serving tests/data/snmprec (community = file name)."""
    srv = Snmpsim(DATA / "snmprec")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        srv.cleanup()


@pytest.fixture
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    """A private one-member etcd 3.4 (the v3 HTTP gateway on its client port)."""
    srv = Etcd(tmp_path_factory.mktemp("etcd"))
    srv.start()
    yield srv
    srv.stop()
