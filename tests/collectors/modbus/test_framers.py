"""RTU framing over TCP (a serial-to-Ethernet gateway) against a real pymodbus RTU-framed server."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import MappingProxyType

import pytest

from collectors.base import DeviceConfig
from collectors.modbus.poller import ModbusPoller
from collectors.modbus.profile import parse_modbus_profile
from models.errors import ConfigError, DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from models.readings import SeriesRegistry
from models.registers import encode

# real servers: a hang fails fast, with pytest-timeout's stack dump, instead of after 300 s
pytestmark = pytest.mark.timeout(120)

PROFILE = {"protocol": "modbus", "name": "gw", "points": [
    {"name": "w", "address": 0, "type": "float32", "byte_order": "CDAB", "metric": "power.power_w"},
    {"name": "wh", "address": 2, "type": "uint64", "byte_order": "DCBA", "metric": "power.energy_wh"},
    {"name": "a", "address": 6, "type": "int16", "scale": 0.1, "metric": "power.current_a"},
]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rtu_over_tcp_framer(tmp_path: Path) -> None:
    from pymodbus import FramerType
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    regs = encode(1234.5, "float32", "CDAB") + encode(987654321, "uint64", "DCBA") + encode(125, "int16")
    prof = parse_modbus_profile(tmp_path / "gw.toml", PROFILE)

    async def body() -> None:
        port = free_port()
        server = ModbusTcpServer([SimDevice(7, simdata=[SimData(0, values=regs, datatype=DataType.REGISTERS)])],
                                 framer=FramerType.RTU, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        try:
            def dev(framer: str, unit: int = 7) -> DeviceConfig:
                return DeviceConfig("gw", "modbus", "gw", "127.0.0.1", port, timeout_s=0.5,
                                    options=MappingProxyType({"unit": unit, "framer": framer}))

            p = ModbusPoller(dev("rtu-over-tcp"), prof, SeriesRegistry())
            r = await p.poll(1)
            assert sorted(r.batch.value.tolist()) == pytest.approx([12.5, 1234.5, 987654321.0])
            await p.close()
            # the MBAP framer cannot talk to an RTU gateway: a clean device error, not a hang
            q = ModbusPoller(dev("tcp"), prof, SeriesRegistry())
            with pytest.raises((DeviceTimeout, DeviceProtocolError, DeviceUnreachable)):
                await q.poll(1)
            await q.close()
        finally:
            await server.shutdown()

    asyncio.run(body())


def test_unknown_framer_is_refused() -> None:
    from collectors.modbus.client import ModbusClient

    with pytest.raises(ConfigError, match=r"options\.framer: Input should be 'tcp', 'rtu-over-tcp' or 'rtu'"):
        ModbusClient(DeviceConfig("x", "modbus", "p", "h", 1, options=MappingProxyType({"framer": "ascii-art"})))
