"""SunSpec discovery: "SunS" at 50000 after 40000 and 0 fail, model chain walked to model 204."""

from __future__ import annotations

import asyncio
import socket
from types import MappingProxyType

import pytest

from collectors.base import DeviceConfig
from collectors.modbus.poller import make_modbus_poller
from collectors.profiles import find_profile
from models.readings import Reason, SeriesRegistry
from models.registers import encode

# real servers: a hang fails fast, with pytest-timeout's stack dump, instead of after 300 s
pytestmark = pytest.mark.timeout(120)


def image() -> list[int]:
    """A delta meter (model 204) behind model 1 and a vendor model 64000, hand-built."""
    regs = [0x5375, 0x6E53, 1, 66] + [0] * 66
    regs += [64000, 4] + [7, 7, 7, 7]  # an unrelated model to skip over
    m = [0] * 105
    m[0], m[4] = 1234, encode(-1, "int16")[0]  # A = 123.4 A (A_SF -1)
    m[14], m[15] = 5001, encode(-2, "int16")[0]  # Hz = 50.01
    m[16], m[20] = 4321, 2  # W = 432,100 W (W_SF 2)
    m[31], m[35] = 0x8000, 0  # PF not implemented
    m[44:46] = encode(123456, "uint32")  # TotWhImp
    m[52] = 1  # TotWh_SF
    regs += [204, 105] + m + [0xFFFF, 0]
    return regs


def test_discovery_at_50000_and_model_chain() -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def body() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        server = ModbusTcpServer([SimDevice(1, simdata=[SimData(50000, values=image(), datatype=DataType.REGISTERS)])],
                                 address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        try:
            reg = SeriesRegistry()
            dev = DeviceConfig("m", "modbus", "sunspec-meter-int", "127.0.0.1", port, tags=(("site", "s"),),
                               options=MappingProxyType({"unit": 1}))
            p = make_modbus_poller(dev, find_profile("sunspec-meter-int"), reg)
            r = await p.poll(1)
            assert p.info["sunspec_base"] == "50000" and p.info["sunspec_model"] == "204"
            got = {reg.key(int(s)).metric: float(v) for s, v in zip(r.batch.series, r.batch.value, strict=True)
                   if not dict(reg.key(int(s)).tags).get("phase")}
            assert got["power.current_a"] == pytest.approx(123.4)
            assert got["power.frequency_hz"] == pytest.approx(50.01)
            assert got["power.power_w"] == pytest.approx(432_100)
            assert got["power.energy_wh"] == pytest.approx(1_234_560)
            assert "power.power_factor" not in got
            assert r.rejected[Reason.NOT_IMPLEMENTED] >= 1  # PF 0x8000
            await p.close()
        finally:
            await server.shutdown()

    asyncio.run(body())
