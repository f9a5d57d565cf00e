"""The pymodbus edge: one connection per device, reads translated into our error hierarchy.

Framers: ``tcp`` (Modbus/TCP, MBAP header), ``rtu-over-tcp`` (RTU frames with CRC through a
serial-to-Ethernet gateway), ``rtu`` (a serial port: ``host`` is the device path, e.g.
``/dev/ttyUSB0``, with ``baudrate``/``parity``/``stopbits`` options).

Workarounds per device (``DeviceConfig.options``):
    unit                  Modbus device id (default 1)
    pause_s               wait between requests (slow gateways, RS-485 turnaround)
    reconnect_on_timeout  drop the connection after a timeout (default true) so that a late
                          answer can never be taken for the next request's
    retries               resend a request that timed out this many times (default 0)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from collectors.base import DeviceConfig
from models.errors import DeviceBusy, DeviceError, DeviceProtocolError, DeviceTimeout, DeviceUnreachable

FRAMERS = ("tcp", "rtu-over-tcp", "rtu")
_EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                    4: "device failure", 5: "acknowledge", 6: "device busy", 10: "gateway path unavailable",
                    11: "gateway target failed to respond"}


_READ_FN = {"holding": "read_holding_registers", "input": "read_input_registers", "coil": "read_coils",
            "discrete": "read_discrete_inputs"}


class ModbusClient:
    """An asyncio Modbus client for one device (connects lazily, reconnects after failures)."""

    def __init__(self, device: DeviceConfig) -> None:
        self.device = device
        from collectors.options import ModbusOptions, options_of

        o = options_of(device)
        assert isinstance(o, ModbusOptions)
        self.options = o
        self.unit = o.unit
        self.framer = o.framer
        self.pause_s = o.pause_s
        self.retries = o.retries
        self.reconnect_on_timeout = o.reconnect_on_timeout
        self.requests = 0
        self._guard_s = device.timeout_s * (self.retries + 1) + 1.0
        self._client: Any = None
        self._sent_once = False

    def _make(self) -> Any:
        from pymodbus import FramerType
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

        # pymodbus logs every timeout at ERROR itself; the runtime reports device failures
        # once (ERROR) and repeats at DEBUG, so its own logging would drown that.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        d = self.device
        common: dict[str, Any] = {"timeout": d.timeout_s, "retries": self.retries, "reconnect_delay": 0}
        if self.framer == "rtu":
            return AsyncModbusSerialClient(d.host, framer=FramerType.RTU, baudrate=self.options.baudrate,
                                           parity=self.options.parity, stopbits=self.options.stopbits, **common)
        framer = FramerType.SOCKET if self.framer == "tcp" else FramerType.RTU
        return AsyncModbusTcpClient(d.host, port=d.port, framer=framer, **common)

    async def connect(self) -> None:
        """Open the connection if it is not open."""
        if self._client is not None and self._client.connected:
            return
        if self._client is None:
            self._client = self._make()
        try:
            ok = await asyncio.wait_for(self._client.connect(), timeout=self.device.timeout_s + 1.0)
        except (TimeoutError, OSError) as exc:
            await self.close()
            raise DeviceUnreachable(self.device.name, f"cannot connect to {self._where()}: {exc}") from exc
        if not ok:
            await self.close()
            raise DeviceUnreachable(self.device.name, f"cannot connect to {self._where()}")

    def _where(self) -> str:
        return self.device.host if self.framer == "rtu" else f"{self.device.host}:{self.device.port}"

    async def read(self, table: str, address: int, count: int) -> Sequence[int] | Sequence[bool]:
        """Read ``count`` registers (or bits) of ``table`` from ``address``."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        await self.connect()
        if self.pause_s > 0 and self._sent_once:
            await asyncio.sleep(self.pause_s)
        self._sent_once = True
        c = self._client
        fn = getattr(c, _READ_FN[table])
        self.requests += 1
        try:
            # the outer guard bounds a request even if the library's own timeout misfires
            async with asyncio.timeout(self._guard_s):
                rr = await fn(address, count=count, device_id=self.unit)
        except ConnectionException as exc:
            where = f"{table} {address}+{count}"
            await self.close()
            raise DeviceUnreachable(self.device.name, f"{where}: connection lost ({exc})") from exc
        except ModbusIOException as exc:
            where = f"{table} {address}+{count}"
            if "No response" in str(exc):
                if self.reconnect_on_timeout:
                    await self.close()
                raise DeviceTimeout(self.device.name, f"{where}: no answer within {self.device.timeout_s:g} s") from exc
            await self.close()
            raise DeviceProtocolError(self.device.name, f"{where}: {exc}") from exc
        except TimeoutError as exc:
            where = f"{table} {address}+{count}"
            await self.close()
            raise DeviceTimeout(self.device.name, f"{where}: no answer within {self.device.timeout_s:g} s") from exc
        except ModbusException as exc:
            where = f"{table} {address}+{count}"
            await self.close()
            raise DeviceProtocolError(self.device.name, f"{where}: {exc}") from exc
        except OSError as exc:
            where = f"{table} {address}+{count}"
            await self.close()
            raise DeviceUnreachable(self.device.name, f"{where}: {exc}") from exc
        if rr.isError():
            where = f"{table} {address}+{count}"
            code = int(getattr(rr, "exception_code", 0))
            text = f"{where}: exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')})"
            if code == 6:
                raise DeviceBusy(self.device.name, text)
            if code in (10, 11):
                raise DeviceUnreachable(self.device.name, text)
            raise DeviceProtocolError(self.device.name, text)
        if table in ("coil", "discrete"):
            return list(rr.bits[:count])
        regs = rr.registers
        if len(regs) != count:
            raise DeviceProtocolError(self.device.name, f"{table} {address}+{count}: got {len(regs)} registers")
        return regs  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the connection (the next read reconnects)."""
        c, self._client = self._client, None
        self._sent_once = False
        if c is not None:
            c.close()


def is_connection_error(exc: DeviceError) -> bool:
    """True when the error means the device is gone rather than one read being refused."""
    return isinstance(exc, DeviceUnreachable | DeviceTimeout)
