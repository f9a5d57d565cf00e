"""The twin's protocol edge: Modbus TCP servers, an SNMP agent and an MQTT publisher.

These only put the pure encoders of ``models.twin.devices`` on the wire, reading the
simulation's current state when a request arrives:

* Modbus: one pymodbus TCP server per device (so one dead device is really dead), serving
  the device's register image as holding and input registers; the image is re-encoded at
  most once per simulation step. ``faults`` injects delays and exception responses.
* SNMP: one pysnmp agent on one UDP port; each device is a context, selected by its v2c
  community (= device name) or by the v3 context name, as snmpsim does.
* MQTT: a paho client publishing grid signals and BMS points with QoS 1.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.mqtt import MqttAddress, MqttLink
from models.errors import ConfigError, TwinError
from models.twin.devices import MODBUS_ENCODERS, SNMP_ENCODERS, DeviceSpec, OidRow
from models.twin.sim import TwinSim

log = logging.getLogger("powerplane.twin")

SNMP_V3_USER = "powerplane"
SNMP_V3_AUTH_KEY = "powerplane-auth"
SNMP_V3_PRIV_KEY = "powerplane-priv"


def bound_socket(host: str, port: int, kind: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0 picks a free one)."""
    sock = socket.socket(socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TwinError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    return sock


# ---------------------------------------------------------------------------------------
# Modbus


@dataclass
class ModbusFaults:
    """Faults a Modbus device injects into every request."""

    delay_s: float = 0.0  # answer late (a timeout when above the client's timeout)
    exception: int | None = None  # answer with this Modbus exception code (6 = busy)


class ModbusDeviceServer:
    """One Modbus TCP device backed by the simulation."""

    def __init__(self, sim: TwinSim, dev: DeviceSpec, host: str, port: int = 0) -> None:
        self.sim = sim
        self.dev = dev
        self.host = host
        self.port = port
        self.faults = ModbusFaults()
        self.requests = 0
        self._encode = MODBUS_ENCODERS[dev.model]
        self._encoded_step = -1
        self._server: Any = None

    async def start(self) -> None:
        """Start serving (again, after ``stop``, on the same port)."""
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        img = self._encode(self.sim, self.dev)
        self._start_address = img.start
        device = SimDevice(0, simdata=[SimData(img.start, values=list(img.regs),
                                               datatype=DataType.REGISTERS)], action=self._action)
        if self.port == 0:  # reserve a free port, then let pymodbus bind it
            probe = bound_socket(self.host, 0, socket.SOCK_STREAM)
            self.port = probe.getsockname()[1]
            probe.close()
        self._server = ModbusTcpServer([device], address=(self.host, self.port))
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError as exc:
            raise TwinError(f"modbus device {self.dev.name}: cannot listen on {self.host}:{self.port}") from exc

    async def stop(self) -> None:
        """Stop serving: the device is dead until ``start`` is called again."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    @property
    def running(self) -> bool:
        """True while the server listens."""
        return self._server is not None

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> Any:
        from pymodbus.constants import ExcCodes

        self.requests += 1
        if self.faults.delay_s > 0:
            await asyncio.sleep(self.faults.delay_s)
        if self.faults.exception is not None:
            return ExcCodes(self.faults.exception)
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # meters are read-only
        if self._encoded_step != self.sim.steps:
            img = self._encode(self.sim, self.dev)
            off = img.start - start_address
            registers[off:off + len(img.regs)] = img.regs
            self._encoded_step = self.sim.steps
        return None


# ---------------------------------------------------------------------------------------
# SNMP


# Real PDUs and UPSes refresh their SNMP values about once a second; so does the twin. It
# keeps a table walk (several GETBULKs) consistent and keeps re-encoding off the hot path.
SNMP_REFRESH_S = 1.0


class _DeviceMib:
    """MIB instrumentation serving one device's OID table, refreshed every SNMP_REFRESH_S."""

    def __init__(self, sim: TwinSim, dev: DeviceSpec) -> None:
        self.sim = sim
        self.dev = dev
        self._encode = SNMP_ENCODERS[dev.model]
        self._step = -1
        self._snap_ns = -(1 << 62)
        self._oids: list[tuple[int, ...]] = []
        self._values: list[Any] = []
        self._index: dict[tuple[int, ...], int] = {}
        self.requests = 0

    def _refresh(self) -> None:
        if self._step == self.sim.steps or self.sim.now_ns - self._snap_ns < SNMP_REFRESH_S * 1e9:
            return
        from pysnmp.proto import rfc1902

        rows: list[OidRow] = sorted(self._encode(self.sim, self.dev), key=lambda r: r[0])
        conv: dict[str, Callable[[Any], Any]] = {
            "int": rfc1902.Integer32, "gauge": rfc1902.Gauge32, "counter": rfc1902.Counter32,
            "counter64": rfc1902.Counter64, "str": rfc1902.OctetString, "ticks": rfc1902.TimeTicks,
            "oid": rfc1902.ObjectIdentifier,
        }
        oids = [r[0] for r in rows]
        if oids != self._oids:
            self._oids = oids
            self._index = {o: i for i, o in enumerate(oids)}
        self._values = [conv[kind](value) for _, kind, value in rows]
        self._step = self.sim.steps
        self._snap_ns = self.sim.now_ns

    def read_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        """GET: the value of each OID, or noSuchObject/noSuchInstance."""
        from pysnmp.proto import rfc1902, rfc1905

        self.requests += 1
        self._refresh()
        out = []
        for name, _ in var_binds:
            key = tuple(name)
            i = self._index.get(key)
            if i is not None:
                out.append((rfc1902.ObjectName(key), self._values[i]))
            else:
                # An object (table column / scalar) that exists without this instance is
                # noSuchInstance; an unknown object is noSuchObject (RFC 3416 4.2.1).
                j = bisect.bisect_left(self._oids, key)
                parent = key[:-1]
                exists = any(0 <= k < len(self._oids) and self._oids[k][:len(parent)] == parent
                             for k in (j - 1, j))
                out.append((rfc1902.ObjectName(key), rfc1905.noSuchInstance if exists else rfc1905.noSuchObject))
        return out

    def read_next_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        """GETNEXT/GETBULK: the next OID after each one, or endOfMibView."""
        from pysnmp.proto import rfc1902, rfc1905

        self.requests += 1
        self._refresh()
        out = []
        for name, _ in var_binds:
            j = bisect.bisect_right(self._oids, tuple(name))
            if j < len(self._oids):
                out.append((rfc1902.ObjectName(self._oids[j]), self._values[j]))
            else:
                out.append((name, rfc1905.endOfMibView))
        return out

    def write_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        """SET is refused: the twin's devices are read-only."""
        from pysnmp.smi import error

        raise error.NotWritableError(idx=0)


class SnmpAgent:
    """One UDP port serving every SNMP device of the twin (v2c community or v3 context)."""

    def __init__(self, sim: TwinSim, devices: list[DeviceSpec], host: str, port: int = 0) -> None:
        self.sim = sim
        self.devices = devices
        self.host = host
        self.port = port
        self.mibs: dict[str, _DeviceMib] = {}
        self._engine: Any = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Bind the port and register every device."""
        from pysnmp.carrier.asyncio.dgram import udp
        from pysnmp.entity import config, engine
        from pysnmp.entity.rfc3413 import cmdrsp, context

        self._sock = bound_socket(self.host, self.port, socket.SOCK_DGRAM)
        self.port = self._sock.getsockname()[1]
        eng = engine.SnmpEngine()
        config.add_transport(eng, udp.DOMAIN_NAME, udp.UdpTransport().open_server_mode(sock=self._sock))
        config.add_v3_user(eng, SNMP_V3_USER, config.USM_AUTH_HMAC96_SHA, SNMP_V3_AUTH_KEY,
                           config.USM_PRIV_CFB128_AES, SNMP_V3_PRIV_KEY)
        ctx = context.SnmpContext(eng)
        for dev in self.devices:
            mib = _DeviceMib(self.sim, dev)
            self.mibs[dev.name] = mib
            config.add_v1_system(eng, dev.name, dev.name, contextName=dev.name.encode())
            ctx.register_context_name(dev.name.encode(), mib)  # type: ignore[arg-type]
        for responder in (cmdrsp.GetCommandResponder, cmdrsp.NextCommandResponder,
                          cmdrsp.BulkCommandResponder):
            responder(eng, ctx)
        self._engine = eng

    async def stop(self) -> None:
        """Close the agent's port."""
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# ---------------------------------------------------------------------------------------
# MQTT


class MqttPublisher:
    """Publishes twin messages as JSON over one MQTT connection (``bus.mqtt.MqttLink``)."""

    def __init__(self, addr: MqttAddress, client_id: str) -> None:
        self.host = addr.host
        self.port = addr.port
        self.published = 0
        self.link = MqttLink(addr, client_id, clean_session=True, max_queued=100_000, keepalive_s=30)

    def start(self) -> None:
        """Connect (asynchronously) and start paho's network thread."""
        try:
            self.link.start()
        except ConfigError as exc:
            raise TwinError(f"MQTT broker {self.host}:{self.port}: {exc}") from exc

    def publish(self, messages: list[tuple[str, dict[str, object], bool]], qos: int = 1) -> None:
        """Publish ``(topic, payload, retain)`` messages as JSON."""
        for topic, payload, retain in messages:
            self.link.publish(topic, json.dumps(payload, separators=(",", ":")).encode(), qos=qos, retain=retain)
            self.published += 1

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self.link.stop()
