"""The SNMP poller against real agents: net-snmp snmpd (v2c, v3), snmpsim recordings, the twin."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

import pytest

from collectors.base import DeviceConfig, PollResult
from collectors.registry import make_poller
from collectors.snmp.client import SnmpPoller, make_snmp_poller
from models.clock import ManualClock
from models.errors import ConfigError, DeviceProtocolError, DeviceTimeout, ProfileError
from models.readings import ReadingBatch, Reason, SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.twin.devices import PF
from testbed.realservers import Snmpd, Snmpsim
from twin.runner import Twin
from twin.servers import SNMP_V3_AUTH_KEY, SNMP_V3_PRIV_KEY, SNMP_V3_USER

pytestmark = pytest.mark.servers


def dev(name: str, profile: str, port: int, level: str = "pdu", entity: str | None = None,
        timeout_s: float = 2.0, **options: Any) -> DeviceConfig:
    return DeviceConfig(name=name, protocol="snmp", profile=profile, host="127.0.0.1", port=port,
                        timeout_s=timeout_s, tags=(("site", "t"), ("level", level), ("id", entity or name)),
                        options=options)


def values(batch: ReadingBatch) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for sid, v in zip(batch.series, batch.value, strict=True):
        key = batch.registry.key(int(sid))
        out[(key.metric, tuple((k, t) for k, t in key.tags if k not in ("site", "level", "id")))] = float(v)
    return out


def poll_once(device: DeviceConfig, reg: SeriesRegistry | None = None, ts_ns: int = 1) -> PollResult:
    async def go() -> PollResult:
        p = make_poller(device, reg or SeriesRegistry())
        try:
            return await p.poll(ts_ns)
        finally:
            await p.close()
    return asyncio.run(go())


# ---- net-snmp snmpd ----------------------------------------------------------------------------

UPS_SAMPLE = {  # ups-sample.snmprec, in our units
    ("ups.battery_charge_pct", ()): 98.0,
    ("ups.battery_runtime_s", ()): 17 * 60.0,
    ("power.voltage_v", (("side", "battery"),)): 541.2,
    ("power.power_w", ()): 154000.0 + 152500.0 + 155200.0,
    ("power.power_w", (("line", "2"),)): 152500.0,
    ("power.power_w", (("side", "input"),)): 160000.0 + 158000.0 + 161000.0,
    ("power.frequency_hz", (("line", "1"), ("side", "input"))): 50.0,
    ("power.load_pct", (("line", "3"),)): 62.0,
}


@pytest.mark.parametrize("version", ["2c", "3"])
def test_snmpd_ups_v2c_and_v3_authpriv(snmpd_ups: Snmpd, version: str) -> None:
    opts: dict[str, Any] = {"community": snmpd_ups.community} if version == "2c" else {
        "version": "3", "user": snmpd_ups.v3_user, "auth_key": snmpd_ups.v3_auth, "priv_key": snmpd_ups.v3_priv}
    r = poll_once(dev("ups-1", "ups-rfc1628", snmpd_ups.port, level="ups", **opts), ts_ns=42)
    v = values(r.batch)
    for key, want in UPS_SAMPLE.items():
        assert v[key] == pytest.approx(want), key
    assert v[("ups.on_battery", ())] == 0.0  # upsOutputSource normal(3)
    # the sample has no upsOutputFrequency: counted, not invented; and three of the profile's
    # columns have no rows at all in it: counted as absent
    assert r.rejected == {Reason.NOT_IMPLEMENTED: 1, Reason.ABSENT: 3}
    assert ("power.frequency_hz", (("side", "output"),)) not in v
    assert not r.errors and set(r.batch.ts_ns) == {42}


def test_snmpd_wrong_v3_key_is_a_protocol_error_and_wrong_community_a_timeout(snmpd_ups: Snmpd) -> None:
    bad_key = dev("ups-1", "ups-rfc1628", snmpd_ups.port, version="3", user=snmpd_ups.v3_user,
                  auth_key="not-the-key", priv_key=snmpd_ups.v3_priv)
    with pytest.raises(DeviceProtocolError, match="ups-1: GET"):
        poll_once(bad_key)
    with pytest.raises(DeviceTimeout, match="ups-1"):  # agents drop unknown communities silently
        poll_once(dev("ups-1", "ups-rfc1628", snmpd_ups.port, timeout_s=0.3, community="nope"))


# ---- snmpsim recordings ----------------------------------------------------------------------

def test_snmpsim_apc_rpdu2(snmpsim: Snmpsim) -> None:
    r = poll_once(dev("pdu-a7", "apc-rpdu2", snmpsim.port, community="apc-rpdu2", max_repetitions=10))
    v = values(r.batch)
    assert v[("power.power_w", ())] == 5230.0  # 523 x 0.01 kW
    assert v[("power.apparent_power_va", ())] == 5400.0
    assert v[("power.energy_wh", ())] == 12_345_600.0  # 123456 x 0.1 kWh
    assert v[("power.power_factor", ())] == pytest.approx(0.97)
    assert v[("power.power_w", (("phase", "2"),))] == 1750.0
    assert v[("power.current_a", (("phase", "3"),))] == pytest.approx(7.7)
    assert v[("power.current_a", (("bank", "6"),))] == pytest.approx(3.6)
    assert v[("power.power_w", (("outlet", "5"),))] == 195.0
    assert v[("power.energy_wh", (("outlet", "23"),))] == 2_300_000.0
    assert ("power.power_w", (("outlet", "24"),)) not in v  # -1: not supported
    assert r.rejected == {Reason.NOT_IMPLEMENTED: 1} and not r.errors


def test_snmpsim_apc_legacy_rpdu(snmpsim: Snmpsim) -> None:
    r = poll_once(dev("ap7900", "apc-rpdu-legacy", snmpsim.port, community="apc-rpdu-legacy"))
    v = values(r.batch)
    assert v[("power.power_w", ())] == 2300.0
    assert v[("power.power_factor", ())] == pytest.approx(0.95)  # 950 / 1000
    assert v[("power.apparent_power_va", ())] == 2420.0
    assert [v[("power.current_a", (("load", str(i)),))] for i in (1, 2, 3)] == pytest.approx([10.0, 9.5, 10.2])
    assert v[("power.current_a", (("outlet", "8"),))] == pytest.approx(1.8)
    assert not r.rejected and not r.errors


def test_snmpsim_raritan_digits(snmpsim: Snmpsim) -> None:
    r = poll_once(dev("px3", "raritan-pdu2", snmpsim.port, community="raritan-px3"))
    v = values(r.batch)
    assert v[("power.current_a", ())] == pytest.approx(24.1)  # 241 / 10^1
    assert v[("power.power_w", ())] == 16250.0
    assert v[("power.power_factor", ())] == pytest.approx(0.97)  # 97 / 10^2
    assert v[("power.frequency_hz", ())] == pytest.approx(50.0)
    assert v[("power.energy_wh", ())] == 98_765_432.0
    assert v[("power.power_w", (("phase", "3"),))] == 5403.0
    assert v[("power.current_a", (("outlet", "7"),))] == pytest.approx(1.007)  # 1007 / 10^3
    assert len([k for k in v if k[0] == "power.power_w" and k[1] and k[1][0][0] == "outlet"]) == 12
    assert not r.rejected and not r.errors


def test_snmpsim_sentry4_and_a_4000_oid_table(snmpsim: Snmpsim) -> None:
    r = poll_once(dev("st", "servertech-sentry4", snmpsim.port, community="sentry4"))
    v = values(r.batch)
    assert v[("power.power_w", ())] == 4100.0 + 4200.0  # sum of the two cords
    assert v[("power.energy_wh", (("cord", "2"), ("unit", "1")))] == 7_700_200.0
    assert v[("power.voltage_v", (("cord", "1"), ("outlet", "3"), ("unit", "1")))] == pytest.approx(208.0)
    assert v[("power.current_a", (("cord", "1"), ("line", "2"), ("unit", "1")))] == pytest.approx(11.02)
    reg = SeriesRegistry()

    async def big() -> tuple[PollResult, int]:
        p = make_poller(dev("big", "servertech-sentry4", snmpsim.port, community="sentry4-large",
                            max_repetitions=50), reg)
        assert isinstance(p, SnmpPoller)
        try:
            return await p.poll(1), p.requests
        finally:
            await p.close()
    r, requests = asyncio.run(big())
    outlets = [k for k in values(r.batch) if k[0] == "power.power_w" and ("outlet", "36") in k[1]]
    assert len(outlets) == 8  # daisy-chained units keep their outlets apart (unit, cord, outlet)
    # 288 outlet rows x 6 columns + 8 cords x 5 + 2 sums + 24 line currents + 24 phase voltages
    assert len(r.batch) == 288 * 6 + 8 * 5 + 2 + 24 + 24 and not r.errors
    assert len(set(r.batch.series.tolist())) == len(r.batch)
    assert values(r.batch)[("power.power_w", ())] == sum(4000 + 100 * c for c in (1, 2)) * 4
    # 13 columns side by side, many rows per GETBULK (snmpsim trims responses to its message size):
    # far fewer requests than the 288 a row-by-row GETNEXT walk of even one column would need
    assert requests < 288 // 4


# ---- the twin ----------------------------------------------------------------------------------

def twin_devices(twin: Twin, v3: bool) -> list[DeviceConfig]:
    out = []
    for e in twin.endpoints():
        if e.protocol != "snmp":
            continue
        opts: Mapping[str, Any] = {"community": e.community} if not v3 else {
            "version": "3", "user": SNMP_V3_USER, "auth_key": SNMP_V3_AUTH_KEY, "priv_key": SNMP_V3_PRIV_KEY,
            "context": e.community}
        out.append(DeviceConfig(name=e.device, protocol="snmp", profile=e.model, host=e.host, port=e.port,
                                tags=(("site", twin.site.site.name), ("level", e.level), ("id", e.entity)),
                                options=opts))
    return out


@pytest.mark.parametrize("v3", [False, True])
def test_twin_values_equal_the_simulation(demo_site: SiteConfig, v3: bool) -> None:
    reg = SeriesRegistry()

    async def go() -> tuple[Twin, list[tuple[DeviceConfig, PollResult]]]:
        twin = Twin(demo_site, ManualClock(), seed=3)  # a frozen clock: the sim stands still
        await twin.start()
        twin.sim.step(50)
        pollers = [make_poller(d, reg) for d in twin_devices(twin, v3)]
        try:
            results = await asyncio.gather(*(p.poll(7) for p in pollers))
        finally:
            for p in pollers:
                await p.close()
            await twin.stop()
        return twin, [(p.device, r) for p, r in zip(pollers, results, strict=True)]

    twin, results = asyncio.run(go())
    sim, topo = twin.sim, twin.topo
    index = {d.name: d for d in twin.devices}
    state = SiteState(topo, reg)
    for device, r in results:
        spec = index[device.name]
        assert not r.errors and not r.rejected, device.name
        v = values(r.batch)
        power = float(sim.node_power_w[spec.index])
        if spec.model == "apc-rpdu2":
            assert v[("power.power_w", ())] == round(power / 10) * 10
            assert v[("power.energy_wh", ())] == int(float(sim.node_energy_wh[spec.index]) / 100) * 100
            for i, node in enumerate(spec.children, start=1):
                assert v[("power.power_w", (("outlet", str(i)),))] == round(float(sim.node_power_w[node]))
        elif spec.model == "raritan-pdu2":
            assert v[("power.power_w", ())] == round(power)
            assert v[("power.power_factor", ())] == pytest.approx(PF)
            for i, node in enumerate(spec.children, start=1):
                assert v[("power.power_w", (("outlet", str(i)),))] == round(float(sim.node_power_w[node]))
        else:
            assert spec.model == "ups-rfc1628"
            assert v[("power.power_w", ())] == pytest.approx(power, abs=1.5)  # three lines rounded to W
            assert v[("ups.on_battery", ())] == 0.0
        state.ingest(r.batch)
    # entity totals route into SiteState (sub-points with phase/outlet tags do not)
    pdus = [d for d in twin.devices if d.protocol == "snmp" and d.level == "pdu"]
    for d in pdus:
        assert state.node_power_w[d.index] == pytest.approx(float(sim.node_power_w[d.index]), abs=5.0)


# ---- failures ----------------------------------------------------------------------------------

def test_dead_device_times_out_without_holding_up_a_live_one(snmpsim: Snmpsim) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody answers on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]

    async def go() -> tuple[list[str], BaseException | None]:
        reg = SeriesRegistry()
        live = make_poller(dev("live", "apc-rpdu2", snmpsim.port, community="apc-rpdu2"), reg)
        dead = make_poller(dev("dead", "apc-rpdu2", dead_port, timeout_s=1.0, community="apc-rpdu2"), reg)
        order: list[str] = []

        async def run(name: str, p: Any) -> None:
            try:
                await p.poll(1)
            finally:
                order.append(name)
        tasks = [asyncio.create_task(run("dead", dead)), asyncio.create_task(run("live", live))]
        done = await asyncio.gather(*tasks, return_exceptions=True)
        await live.close()
        await dead.close()
        return order, next((d for d in done if isinstance(d, BaseException)), None)

    order, err = asyncio.run(go())
    assert order == ["live", "dead"]
    assert isinstance(err, DeviceTimeout) and err.device == "dead"


def test_bad_options_and_wrong_profile_are_config_errors() -> None:
    with pytest.raises(ConfigError) as exc:
        poll_once(dev("u", "ups-rfc1628", 161, version="3"))
    assert "options" in str(exc.value) and "user" in str(exc.value)
    with pytest.raises(ConfigError, match=r"options\.max_repetitions"):
        poll_once(dev("u", "ups-rfc1628", 161, max_repetitions=0))
    with pytest.raises(ConfigError, match=r"options\.comunity: unknown key"):
        poll_once(dev("u", "ups-rfc1628", 161, comunity="public"))

    class NotSnmp:
        name, protocol = "m", "modbus"
        path = __import__("pathlib").Path("m.toml")

        def describe(self) -> list[tuple[str, str, str]]:
            return []
    with pytest.raises(ProfileError, match="is modbus"):
        make_snmp_poller(dev("u", "m", 161), NotSnmp(), SeriesRegistry())


# ---- counters across agent restarts ---------------------------------------------------------------

RARITAN_OUTLET_ENERGY = "1.3.6.1.4.1.13742.6.5.4.3.1.4.1.1.8"  # outlet 1 activeEnergy (Wh, Unsigned32)
APC_DEVICE_ENERGY = "1.3.6.1.4.1.318.1.1.26.4.3.1.9.1"  # rPDU2DeviceStatusEnergy (0.1 kWh)


def test_counter_wrap_and_reset_across_snmpd_restarts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The agent's counters change between polls as a real PDU's would: wrap, then an operator reset."""
    from collectors.validate import Validator
    from models.readings import Quality

    def conf(outlet_wh: int, apc_tenth_kwh: int) -> str:
        return "\n".join([
            "override .1.3.6.1.4.1.13742.6.3.5.4.1.7.1.1.8 unsigned 0",  # outletSensorDecimalDigits
            f"override .{RARITAN_OUTLET_ENERGY} unsigned {outlet_wh}",
            f"override .{APC_DEVICE_ENERGY} integer {apc_tenth_kwh}"])

    srv = Snmpd(tmp_path_factory.mktemp("snmpd-counters"), extra_conf=conf(4_294_967_000, 12345))
    reg = SeriesRegistry()
    validator = Validator(reg)
    seen: list[dict[str, tuple[float, bool]]] = []

    async def go() -> None:
        px = make_poller(dev("px", "raritan-pdu2", srv.port, community=srv.community), reg)
        apc = make_poller(dev("apc", "apc-rpdu2", srv.port, community=srv.community), reg)
        try:
            for outlet_wh, apc_raw in ((4_294_967_000, 12345), (200, 12346), (1_000, 3)):
                if seen:
                    srv.extra_conf = conf(outlet_wh, apc_raw)
                    srv.restart()
                got: dict[str, tuple[float, bool]] = {}
                for name, p in (("px", px), ("apc", apc)):
                    r = await p.poll(len(seen) + 1)
                    out, _ = validator.check(r.batch, len(seen) + 1)
                    for sid, v, q in zip(out.series, out.value, out.quality, strict=True):
                        if reg.key(int(sid)).metric == "power.energy_wh":
                            got[name] = (float(v), bool(q & Quality.COUNTER_RESET))
                seen.append(got)
        finally:
            await px.close()
            await apc.close()

    srv.start()
    try:
        asyncio.run(go())
    finally:
        srv.stop()
    assert [s["px"] for s in seen] == [(4_294_967_000.0, False), (4_294_967_496.0, False),  # 2^32 + 200
                                      (4_294_968_296.0, False)]
    assert [s["apc"] for s in seen] == [(1_234_500.0, False), (1_234_600.0, False), (300.0, True)]


def test_new_sensor_row_gets_its_decimal_digits_on_the_next_poll(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Digits are configuration (read once, re-read every digits_refresh_s) — but a new outlet is not guessed."""
    def conf(outlets: int) -> str:
        lines = []
        for o in range(1, outlets + 1):
            lines += [f"override .1.3.6.1.4.1.13742.6.3.5.4.1.7.1.{o}.1 unsigned 2",  # rmsCurrent, 2 digits
                      f"override .1.3.6.1.4.1.13742.6.5.4.3.1.4.1.{o}.1 unsigned {1234 * o}"]
        return "\n".join(lines)

    srv = Snmpd(tmp_path_factory.mktemp("snmpd-digits"), extra_conf=conf(1))
    got: list[tuple[dict[str, float], dict[Reason, int]]] = []

    async def go() -> None:
        p = make_poller(dev("px", "raritan-pdu2", srv.port, community=srv.community), SeriesRegistry())
        try:
            for t in range(3):
                if t == 1:
                    srv.extra_conf = conf(2)  # an outlet module was added
                    srv.restart()
                r = await p.poll(t + 1)
                # (the agent serves the outlet table only: the profile's other columns are absent)
                got.append(({dict(k[1])["outlet"]: v for k, v in values(r.batch).items()},
                            {k: n for k, n in r.rejected.items() if k != Reason.ABSENT}))
        finally:
            await p.close()

    srv.start()
    try:
        asyncio.run(go())
    finally:
        srv.stop()
    assert got[0] == ({"1": 12.34}, {})
    assert got[1] == ({"1": 12.34}, {Reason.DECODE: 1})  # outlet 2 has no digits yet: refused
    assert got[2] == ({"1": 12.34, "2": 24.68}, {})  # digits re-read at once, not after 600 s
