"""The Modbus poller against the twin's real pymodbus servers, with faults injected at the server."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from collectors.base import DeviceConfig
from collectors.config import devices_from_twin
from collectors.modbus.poller import ModbusPoller, make_modbus_poller
from collectors.modbus.profile import ModbusProfile, parse_modbus_profile
from collectors.profiles import find_profile
from collectors.registry import make_poller
from models.clock import ManualClock
from models.errors import DeviceBusy, DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from models.readings import ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.topology import L_RACK, Topology
from tests.collectors.conftest import started_twin

# real servers: a hang fails fast, with pytest-timeout's stack dump, instead of after 300 s
pytestmark = pytest.mark.timeout(120)


def values(batch: ReadingBatch) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reg = batch.registry
    return {(reg.key(int(s)).metric, reg.key(int(s)).tags): float(v)
            for s, v in zip(batch.series, batch.value, strict=True)}


def entity(batch: ReadingBatch, metric: str, **tags: str) -> float:
    want = tuple(sorted(tags.items()))
    return values(batch)[(metric, want)]


def test_every_twin_modbus_device_decodes_to_the_simulation(demo_site: SiteConfig, demo_topo: Topology,
                                                            clock: ManualClock) -> None:
    async def body() -> None:
        twin = await started_twin(demo_site, clock, demo_topo)
        try:
            clock.advance(5)
            twin.tick()
            sim, site = twin.sim, demo_site.site.name
            reg = SeriesRegistry()
            devs = {d.name: d for d in devices_from_twin(twin.endpoints(), site, topo=demo_topo)}
            batches = {}
            for name, d in devs.items():
                if d.protocol == "modbus":
                    p = make_poller(d, reg)
                    r = await p.poll(clock.now_ns())
                    assert not r.errors and not r.rejected, (name, r.errors, r.rejected)
                    assert (r.batch.ts_ns == clock.now_ns()).all()
                    batches[name] = r.batch
                    await p.close()
            b = batches["site-meter"]
            assert entity(b, "site.facility_w", site=site) == pytest.approx(sim.facility_w, abs=1000)  # W_SF = 3
            assert entity(b, "power.frequency_hz", site=site) == pytest.approx(sim.frequency_hz, abs=0.01)
            assert entity(b, "power.energy_wh", site=site) == pytest.approx(sim.facility_energy_wh, abs=1000)
            t = demo_topo
            for lv, prefix in ((0, "meter-"), (2, "meter-")):
                for i, ident in enumerate(t.level_ids[lv]):
                    got = entity(batches[prefix + ident], "power.power_w", site=site, level=("feed", "ups", "hall")[lv],
                                 id=ident)
                    assert got == pytest.approx(float(sim.node_power_w[int(t.level_offset[lv]) + i]), rel=1e-6)
            racks = sim.rack_power_w()
            rack_ids = t.level_ids[L_RACK]
            for row in t.level_ids[3]:
                b = batches[f"busway-{row}"]
                for (m, tags), v in values(b).items():
                    td = dict(tags)
                    if m == "power.power_w" and td.get("level") == "rack":
                        assert v == pytest.approx(float(racks[rack_ids.index(td["id"])]), abs=1)
            for k, lid in enumerate(t.loop_ids):
                b = batches[lid if lid.startswith("cdu") else f"cdu-{lid}"]
                close = pytest.approx
                assert entity(b, "cooling.supply_c", site=site, loop=lid) == close(sim.loop_supply_c[k], abs=0.01)
                assert entity(b, "cooling.return_c", site=site, loop=lid) == close(sim.loop_return_c[k], abs=0.01)
                assert entity(b, "cooling.flow_lpm", site=site, loop=lid) == close(sim.loop_flow_lpm[k], abs=0.1)
                assert entity(b, "cooling.dp_kpa", site=site, loop=lid) == close(sim.loop_dp_kpa[k], abs=0.1)
                assert entity(b, "cooling.heat_w", site=site, loop=lid) == pytest.approx(sim.loop_heat_w[k], rel=1e-5)
                assert entity(b, "cooling.capacity_w", site=site, loop=lid) == pytest.approx(
                    sim.loop_capacity_w[k], rel=1e-5)
                assert entity(b, "cooling.pumps_running", site=site, loop=lid) == sim.loop_pumps_running[k]
        finally:
            await twin.stop()

    asyncio.run(body())


def test_faults_busy_timeout_dead_and_recovery(demo_site: SiteConfig, clock: ManualClock) -> None:
    async def body() -> None:
        twin = await started_twin(demo_site, clock)
        try:
            site = demo_site.site.name
            d = next(x for x in devices_from_twin(twin.endpoints(), site) if x.name == "cdu-2")
            d = replace(d, timeout_s=0.3)
            srv = twin.modbus["cdu-2"]
            p = make_poller(d, SeriesRegistry())
            assert len((await p.poll(1)).batch) == 9
            srv.faults.exception = 6
            with pytest.raises(DeviceBusy, match=r"cdu-2: .*exception 6"):
                await p.poll(2)
            srv.faults.exception = None
            srv.faults.delay_s = 1.0
            with pytest.raises(DeviceTimeout, match=r"no answer within 0\.3 s"):
                await p.poll(3)
            srv.faults.delay_s = 0.0
            assert len((await p.poll(4)).batch) == 8  # reconnected; fast points only (slow every 10)
            await srv.stop()
            with pytest.raises((DeviceUnreachable, DeviceTimeout)):  # the open connection may just go quiet
                await p.poll(5)
            with pytest.raises(DeviceUnreachable, match="cannot connect"):
                await p.poll(5)
            await srv.start()
            assert len((await p.poll(6)).batch) == 8
            await p.close()
        finally:
            await twin.stop()

    asyncio.run(body())


def test_illegal_address_keeps_partial_results(demo_site: SiteConfig, clock: ManualClock, tmp_path: Path) -> None:
    data = {"protocol": "modbus", "name": "cdu-plus", "max_gap": 4, "points": [
        {"name": "supply", "address": 1, "type": "int16", "scale": 0.01, "metric": "cooling.supply_c"},
        {"name": "beyond", "address": 500, "type": "uint16", "metric": "cooling.flow_lpm"},
    ]}
    prof = parse_modbus_profile(tmp_path / "p.toml", data)

    async def body() -> None:
        twin = await started_twin(demo_site, clock)
        try:
            srv = twin.modbus["cdu-1"]
            d = DeviceConfig("cdu-1", "modbus", "cdu-plus", "127.0.0.1", srv.port,
                             tags=(("loop", "cdu-1"), ("site", "s")), options=MappingProxyType({"unit": 1}))
            p = ModbusPoller(d, prof, SeriesRegistry())
            r = await p.poll(1)
            assert len(r.batch) == 1 and float(r.batch.value[0]) == pytest.approx(twin.sim.loop_supply_c[0], abs=0.01)
            assert len(r.errors) == 1 and isinstance(r.errors[0], DeviceProtocolError)
            assert "illegal data address" in str(r.errors[0])
            await p.close()
        finally:
            await twin.stop()

    asyncio.run(body())


def test_sunspec_discovery_fails_cleanly_on_a_non_sunspec_device(demo_site: SiteConfig, clock: ManualClock) -> None:
    async def body() -> None:
        twin = await started_twin(demo_site, clock)
        try:
            srv = twin.modbus["cdu-1"]
            d = DeviceConfig("cdu-1", "modbus", "sunspec-meter-int", "127.0.0.1", srv.port)
            prof = find_profile("sunspec-meter-int")
            assert isinstance(prof, ModbusProfile)
            p = make_modbus_poller(d, prof, SeriesRegistry())
            with pytest.raises(DeviceProtocolError, match="no SunSpec marker at 40000, 0, 50000"):
                await p.poll(1)
            await p.close()
        finally:
            await twin.stop()

    asyncio.run(body())
