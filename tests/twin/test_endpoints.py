"""The twin's endpoints, read by stock clients over the real protocols.

pymodbus reads the meters, busways and CDUs; pysnmp (v2c and v3 authPriv) and net-snmp's
``snmpget``/``snmpbulkwalk`` read the PDUs and UPSs; paho and ``mosquitto_sub`` receive the
grid and BMS messages from a real mosquitto. Values must match the simulation and move
with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from models.clock import ManualClock
from models.site import SiteConfig
from models.topology import L_RACK
from testbed.realservers import Mosquitto, require
from twin.runner import Twin

APC_DEVICE_POWER = ".1.3.6.1.4.1.318.1.1.26.4.3.1.5.1"  # rPDU2DeviceStatusPower, 0.01 kW
RARITAN_INLET_POWER = ".1.3.6.1.4.1.13742.6.5.2.3.1.4.1.1.5"  # activePower, W (0 decimals)
UPS_OUT_POWER_1 = ".1.3.6.1.2.1.33.1.4.4.1.4.1"


def run(coro_fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    return asyncio.run(coro_fn(*args))


async def started_twin(site: SiteConfig, clock: ManualClock, mqtt_port: int | None = None) -> Twin:
    twin = Twin(site, clock, mqtt=("127.0.0.1", mqtt_port) if mqtt_port else None)
    await twin.start()
    return twin


def _f32(words: list[int]) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", *words))[0])


def test_modbus_meters_busways_and_cdus(demo_site: SiteConfig, clock: ManualClock) -> None:
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.pdu import ExceptionResponse

    async def body() -> None:
        twin = await started_twin(demo_site, clock)
        try:
            sim = twin.sim
            # SunSpec site meter: "SunS" at 40000, model 1 then 203; W (offset 16) * 10^W_SF.
            c = AsyncModbusTcpClient("127.0.0.1", port=twin.modbus["site-meter"].port)
            await c.connect()
            r = await c.read_holding_registers(40000, count=4, device_id=1)
            assert r.registers == [0x5375, 0x6E53, 1, 66]
            r = await c.read_holding_registers(40070, count=2 + 21, device_id=1)
            assert r.registers[:2] == [203, 105]
            w, w_sf = r.registers[2 + 16], struct.unpack(">h", struct.pack(">H", r.registers[2 + 20]))[0]
            assert w * 10**w_sf == pytest.approx(sim.facility_w, abs=1000)
            r = await c.read_holding_registers(0, count=2, device_id=1)
            assert isinstance(r, ExceptionResponse) and r.exception_code == 2  # nothing at 0
            c.close()
            # Busway: tap-off k power at 100 + 20 k, int32 word-swapped.
            c = AsyncModbusTcpClient("127.0.0.1", port=twin.modbus["busway-row-a1"].port)
            await c.connect()
            r = await c.read_holding_registers(100, count=22, device_id=1)
            lo, hi = r.registers[0], r.registers[1]
            assert (hi << 16 | lo) == pytest.approx(sim.rack_power_w()[0], abs=1)
            c.close()
            # CDU: supply/return in 0.01 C, flow 0.1 L/min, heat float32 kW.
            c = AsyncModbusTcpClient("127.0.0.1", port=twin.modbus["cdu-1"].port)
            await c.connect()
            r = await c.read_holding_registers(0, count=14, device_id=1)
            assert r.registers[1] / 100 == pytest.approx(sim.loop_supply_c[0], abs=0.01)
            assert r.registers[3] / 10 == pytest.approx(sim.loop_flow_lpm[0], abs=0.1)
            assert _f32(r.registers[10:12]) * 1e3 == pytest.approx(sim.loop_heat_w[0], rel=1e-5)
            ret0 = r.registers[2]
            clock.advance(30)
            twin.tick()
            r2 = await c.read_holding_registers(0, count=14, device_id=1)
            assert r2.registers[2] / 100 == pytest.approx(sim.loop_return_c[0], abs=0.01)
            assert twin.sim.t_s == pytest.approx(30)
            assert r2.registers != r.registers or r2.registers[2] != ret0
            c.close()
        finally:
            await twin.stop()

    run(body)


def test_modbus_fault_injection_and_dead_device(demo_site: SiteConfig, clock: ManualClock) -> None:
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.exceptions import ConnectionException
    from pymodbus.pdu import ExceptionResponse

    async def body() -> None:
        twin = await started_twin(demo_site, clock)
        try:
            srv = twin.modbus["cdu-2"]
            c = AsyncModbusTcpClient("127.0.0.1", port=srv.port, retries=0, timeout=0.5)
            await c.connect()
            srv.faults.exception = 6  # device busy
            r = await c.read_holding_registers(0, count=4, device_id=1)
            assert isinstance(r, ExceptionResponse) and r.exception_code == 6
            srv.faults.exception = None
            r = await c.read_holding_registers(0, count=4, device_id=1)
            assert not r.isError()
            c.close()
            await srv.stop()
            c = AsyncModbusTcpClient("127.0.0.1", port=srv.port, retries=0, timeout=0.5)
            assert not await c.connect()
            with pytest.raises(ConnectionException):
                await c.read_holding_registers(0, count=4, device_id=1)
            await srv.start()
            c = AsyncModbusTcpClient("127.0.0.1", port=srv.port, retries=0, timeout=0.5)
            assert await c.connect()
            assert not (await c.read_holding_registers(0, count=4, device_id=1)).isError()
            c.close()
        finally:
            await twin.stop()

    run(body)


def test_snmp_with_pysnmp_v2c_bulk_and_v3(demo_site: SiteConfig, clock: ManualClock) -> None:
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        UsmUserData,
        bulk_walk_cmd,
        get_cmd,
        usmAesCfb128Protocol,
        usmHMACSHAAuthProtocol,
    )

    async def body() -> None:
        twin = await started_twin(demo_site, clock)
        try:
            assert twin.snmp is not None
            eng = SnmpEngine()
            target = await UdpTransportTarget.create(("127.0.0.1", twin.snmp.port), timeout=2, retries=1)
            pdu = twin.topo.index(L_RACK, "r01") - twin.topo.level_offset[L_RACK]
            err, status, _, binds = await get_cmd(eng, CommunityData("r01-pdu-a"), target, ContextData(),
                                                  ObjectType(ObjectIdentity(APC_DEVICE_POWER)), lookupMib=False)
            assert err is None and not status
            first_pdu = int(twin.topo.rack_first_pdu[pdu])
            assert int(binds[0][1]) * 10 == pytest.approx(twin.sim.node_power_w[first_pdu], abs=10)
            # Outlet table by GETBULK: one row per server of the PDU.
            rows = [vb async for err, status, _, vbs in bulk_walk_cmd(
                eng, CommunityData("r01-pdu-a"), target, ContextData(), 0, 50,
                ObjectType(ObjectIdentity(".1.3.6.1.4.1.318.1.1.26.9.4.3.1.7")),
                lexicographicMode=False, lookupMib=False) for vb in vbs]
            assert len(rows) == 72
            # v3 authPriv (SHA/AES), device chosen by context name.
            v3 = UsmUserData("powerplane", "powerplane-auth", "powerplane-priv",
                             authProtocol=usmHMACSHAAuthProtocol, privProtocol=usmAesCfb128Protocol)
            err, status, _, binds = await get_cmd(eng, v3, target, ContextData(contextName=b"ups-a"),
                                                  ObjectType(ObjectIdentity(UPS_OUT_POWER_1)), lookupMib=False)
            assert err is None and not status and int(binds[0][1]) > 100_000
            # A wrong community gets no answer.
            bad = await UdpTransportTarget.create(("127.0.0.1", twin.snmp.port), timeout=0.3, retries=0)
            err, *_ = await get_cmd(eng, CommunityData("nope"), bad, ContextData(),
                                    ObjectType(ObjectIdentity(APC_DEVICE_POWER)), lookupMib=False)
            assert err is not None
            eng.close_dispatcher()
        finally:
            await twin.stop()

    run(body)


def test_snmp_with_net_snmp_clients(demo_site: SiteConfig, clock: ManualClock) -> None:
    snmpget, walk = require("snmpget"), require("snmpbulkwalk")
    env = {**os.environ, "MIBS": ""}

    async def body() -> None:
        twin = await started_twin(demo_site, clock)
        try:
            assert twin.snmp is not None
            port = twin.snmp.port

            def get(*args: str) -> str:
                r = subprocess.run([snmpget, "-On", "-Oqv", *args, f"127.0.0.1:{port}", RARITAN_INLET_POWER],
                                   capture_output=True, text=True, env=env, timeout=10)
                assert r.returncode == 0, r.stderr
                return r.stdout.strip()

            v1 = await asyncio.to_thread(get, "-v2c", "-c", "r02-pdu-a")
            p02a = int(twin.topo.rack_first_pdu[1])
            assert int(v1) == pytest.approx(twin.sim.node_power_w[p02a], abs=1)
            clock.advance(5)
            twin.tick()
            v2 = await asyncio.to_thread(get, "-v2c", "-c", "r02-pdu-a")
            assert v1 != v2  # the value moves with the simulation
            v3 = await asyncio.to_thread(get, "-v3", "-l", "authPriv", "-u", "powerplane", "-a", "SHA",
                                         "-A", "powerplane-auth", "-x", "AES", "-X", "powerplane-priv",
                                         "-n", "r02-pdu-a")
            assert int(v3) == pytest.approx(twin.sim.node_power_w[p02a], abs=1)
            r = await asyncio.to_thread(subprocess.run, [walk, "-v2c", "-c", "ups-b", "-On",
                                                         f"127.0.0.1:{port}", ".1.3.6.1.2.1.33.1.4.4.1.4"],
                                        capture_output=True, text=True, env=env, timeout=10)
            assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 3  # three output lines
        finally:
            await twin.stop()

    run(body)


def test_mqtt_grid_and_bms_with_paho_and_mosquitto_sub(demo_site: SiteConfig, clock: ManualClock,
                                                       mosquitto: Mosquitto) -> None:
    sub_exe = require("mosquitto_sub")
    got: dict[str, list[dict[str, Any]]] = {}
    connected = threading.Event()
    lock = threading.Lock()

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe([("grid/#", 1), ("BMS/#", 1)])
        connected.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.setdefault(msg.topic, []).append(json.loads(msg.payload))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    assert connected.wait(5)
    cli = subprocess.Popen([sub_exe, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-t", "grid/demo-hall/limit",
                            "-C", "1", "-W", "10"], stdout=subprocess.PIPE, text=True)

    async def body() -> None:
        twin = await started_twin(demo_site, clock, mosquitto.port)
        try:
            for _ in range(8):
                clock.advance(1.0)
                twin.tick()
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
        finally:
            await twin.stop()

    try:
        run(body)
        out, _ = cli.communicate(timeout=15)
    finally:
        client.loop_stop()
        client.disconnect()
    assert json.loads(out)["limit_kw"] == 5200.0
    freq = got["grid/demo-hall/frequency"]
    assert len(freq) >= 5 and all(49.5 < m["hz"] < 50.5 for m in freq)
    assert len({m["ts"] for m in freq}) == len(freq)  # a fresh timestamp each second
    inlet = [t for t in got if t.startswith("BMS/v1/PUB/Value/Rack/LiquidInletTemperature/demo-hall/")]
    assert len(inlet) == 8
    m = got[inlet[0]][0]
    assert set(m) == {"value", "timestamp", "quality"} and m["quality"] == "Good"
    assert 25 < m["value"] < 45


def test_endpoint_inventory_file(demo_site: SiteConfig, clock: ManualClock, tmp_path: Any) -> None:
    async def body() -> None:
        twin = await started_twin(demo_site, clock)
        try:
            twin.write_endpoints(tmp_path / "eps.json")
        finally:
            await twin.stop()

    run(body)
    doc = json.loads((tmp_path / "eps.json").read_text())
    eps = doc["endpoints"]
    models = {e["model"] for e in eps}
    assert {"sunspec-203", "sunspec-213", "generic-meter-f32", "busway-tapoff", "cdu-aalc",
            "apc-rpdu2", "raritan-pdu2", "ups-rfc1628"} <= models
    assert doc["snmp_v3"]["priv_protocol"] == "AES"
    assert len({e["port"] for e in eps if e["protocol"] == "modbus"}) == sum(
        1 for e in eps if e["protocol"] == "modbus")  # one port per Modbus device
