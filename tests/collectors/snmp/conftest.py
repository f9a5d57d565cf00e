"""SNMP fixtures: snmpd serving a UPS through ``override`` lines (v2c + v3 authPriv)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.realservers import Snmpd
from tests.conftest import DATA

_TYPES = {2: "integer", 65: "counter", 66: "unsigned", 67: "timeticks"}


def ups_overrides() -> str:
    """snmpd.conf ``override`` lines serving every numeric OID of ups-sample.snmprec."""
    lines = []
    for row in (DATA / "snmprec" / "ups-sample.snmprec").read_text().splitlines():
        oid, t, value = row.split("|", 2)
        if int(t) in _TYPES and oid.startswith("1.3.6.1.2.1.33"):
            lines.append(f"override .{oid} {_TYPES[int(t)]} {value}")
    return "\n".join(lines)


@pytest.fixture
def snmpd_ups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snmpd]:
    """net-snmp snmpd answering the UPS-MIB values of ups-sample.snmprec."""
    srv = Snmpd(tmp_path_factory.mktemp("snmpd-ups"), extra_conf=ups_overrides())
    srv.start()
    yield srv
    srv.stop()
