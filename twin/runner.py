"""Run the twin: step the simulation in site time and serve it over real protocols.

The simulation always advances in fixed steps (deterministic for a seed); the runner only
decides *how many* steps to take to catch up with the injected clock, so a ``--speed 20``
demo and a real-time run follow the same physics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from bus.mqtt import MqttAddress
from models.clock import NS_PER_S, Clock
from models.site import SiteConfig
from models.topology import L_HALL, L_RACK, L_ROW, Topology, build_topology
from models.twin.devices import bms_messages, grid_messages, inventory
from models.twin.endpoints import Endpoint
from models.twin.sim import TwinSim
from models.twin.truth import Truth
from twin.boards import GpuBoards
from twin.servers import (
    SNMP_V3_AUTH_KEY,
    SNMP_V3_PRIV_KEY,
    SNMP_V3_USER,
    ModbusDeviceServer,
    MqttPublisher,
    SnmpAgent,
)

log = logging.getLogger("powerplane.twin")

GRID_PERIOD_S = 1.0
BMS_PERIOD_S = 5.0
TICK_WALL_S = 0.02
VIEW_WALL_S = 0.25  # the live view's refresh


def view_topic(site: str) -> str:
    """Where the twin publishes its state for a live view (``view_doc``), QoS 0, retained."""
    return f"twin/{site}/view"


def view_doc(sim: TwinSim) -> dict[str, object]:
    """The twin's state for a live view: power against limits, grid, halls..racks, cooling loops."""
    t = sim.topo
    g = sim.grid()
    active = [e for e in g.events if e.state(g.ts_ns) in ("announced", "active")]

    def rows(level: int) -> list[list[object]]:
        sl = t.level_slice(level)
        return [[i, round(float(p), 1), float(lim)] for i, p, lim in
                zip(t.ids(level), sim.node_power_w[sl], t.node_limit_w[sl], strict=True)]

    loops = [[lid, round(float(sim.loop_supply_c[k]), 2), round(float(sim.loop_return_c[k]), 2),
              float(t.loop_max_return_c[k]), round(float(sim.loop_flow_lpm[k]), 1), round(float(sim.loop_heat_w[k]), 1),
              round(float(sim.loop_capacity_w[k]), 1), int(sim.loop_pumps_running[k]), int(t.loop_pumps[k])]
             for k, lid in enumerate(t.loop_ids)]
    return {"site": sim.site.site.name, "t_s": sim.t_s, "facility_w": sim.facility_w, "it_w": sim.it_w,
            "limit_w": g.limit_w, "dr_target_w": active[0].target_w if active else None,
            "dr_state": active[0].state(g.ts_ns) if active else None, "price_per_mwh": g.price_per_mwh,
            "currency": g.currency, "carbon_g_per_kwh": g.carbon_g_per_kwh, "frequency_hz": g.frequency_hz,
            "energy_mwh": sim.facility_energy_wh / 1e6, "halls": rows(L_HALL), "rows": rows(L_ROW),
            "racks": rows(L_RACK), "loops": loops}


class Twin:
    """The digital twin of a site, served on loopback (or any ``host``)."""

    def __init__(self, site: SiteConfig, clock: Clock, *, topo: Topology | None = None,
                 host: str = "127.0.0.1", mqtt: MqttAddress | tuple[str, int] | None = None,
                 seed: int | None = None, serve: bool = True, snmp_port: int = 0, start_capped: bool = False) -> None:
        self.site = site
        self.topo = topo if topo is not None else build_topology(site)
        self.clock = clock
        self.host = host
        self.sim = TwinSim(site, self.topo, start_ns=clock.now_ns(), seed=seed, start_capped=start_capped)
        self.devices = inventory(site, self.topo)
        self.serve = serve
        self.modbus: dict[str, ModbusDeviceServer] = {}
        self.snmp: SnmpAgent | None = None
        self._snmp_port = snmp_port
        self._mqtt_addr = MqttAddress(*mqtt) if isinstance(mqtt, tuple) else mqtt
        self.mqtt: MqttPublisher | None = None
        self.boards: GpuBoards | None = None
        self._next_grid_ns = 0
        self._next_bms_ns = 0
        self._next_view_wall = 0.0
        self.truth = Truth(self.sim)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start every server (Modbus, SNMP, MQTT publisher)."""
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        if not self.serve:
            return
        for dev in self.devices:
            if dev.protocol == "modbus":
                srv = ModbusDeviceServer(self.sim, dev, self.host)
                await srv.start()
                self.modbus[dev.name] = srv
        snmp_devs = [d for d in self.devices if d.protocol == "snmp"]
        if snmp_devs:
            self.snmp = SnmpAgent(self.sim, snmp_devs, self.host, self._snmp_port)
            await self.snmp.start()
        if self._mqtt_addr is not None:
            self.mqtt = MqttPublisher(self._mqtt_addr, client_id=f"powerplane-twin-{self.site.site.name}")
            self.mqtt.start()
            self.boards = GpuBoards(self.sim, self.mqtt.link)

    def tick(self) -> int:
        """Catch the simulation up with the clock and publish what is due; return steps taken."""
        n = self.sim.advance_to(self.clock.now_ns())
        now = self.sim.now_ns
        if self.boards is not None:
            self.boards.tick()
        if self.mqtt is not None:
            if now >= self._next_grid_ns:
                self.mqtt.publish(grid_messages(self.sim))
                self._next_grid_ns = now + int(GRID_PERIOD_S * NS_PER_S)
            if now >= self._next_bms_ns:
                self.mqtt.publish(bms_messages(self.sim))
                self._next_bms_ns = now + int(BMS_PERIOD_S * NS_PER_S)
            wall = time.monotonic()
            if wall >= self._next_view_wall:
                self._next_view_wall = wall + VIEW_WALL_S
                self.mqtt.publish([(view_topic(self.site.site.name), view_doc(self.sim), True)], qos=0)
        return n

    async def run(self, until_ns: int | None = None) -> None:
        """Tick until ``until_ns`` of site time (forever if None)."""
        while until_ns is None or self.sim.now_ns < until_ns:
            self.tick()
            await asyncio.sleep(TICK_WALL_S)

    def run_in_background(self) -> asyncio.Task[None]:
        """Start ``run()`` as a task."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="twin")
        return self._task

    async def stop(self) -> None:
        """Stop ticking and every server."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for srv in self.modbus.values():
            await srv.stop()
        if self.snmp is not None:
            await self.snmp.stop()
        if self.mqtt is not None:
            self.mqtt.stop()

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint the twin serves."""
        out = []
        for dev in self.devices:
            if dev.protocol == "modbus" and dev.name in self.modbus:
                out.append(Endpoint(dev.name, "modbus", dev.model, dev.level, dev.entity, self.host,
                                    self.modbus[dev.name].port, unit=1))
            elif dev.protocol == "snmp" and self.snmp is not None:
                out.append(Endpoint(dev.name, "snmp", dev.model, dev.level, dev.entity, self.host,
                                    self.snmp.port, community=dev.name))
        if self.mqtt is not None and self._mqtt_addr is not None:
            site = self.site.site.name
            for model, topic in (("grid-json", f"grid/{site}/#"), ("bms-json", "BMS/v1/PUB/Value/#")):
                out.append(Endpoint(f"mqtt-{model}", "mqtt", model, "site", site, self.mqtt.host,
                                    self.mqtt.port, topic=topic, username=self._mqtt_addr.username))
        return out

    def write_endpoints(self, path: str | Path) -> None:
        """Write the endpoint inventory as JSON (collectors can be configured from it)."""
        doc = {
            "site": self.site.site.name,
            "snmp_v3": {"user": SNMP_V3_USER, "auth_protocol": "SHA", "auth_key": SNMP_V3_AUTH_KEY,
                        "priv_protocol": "AES", "priv_key": SNMP_V3_PRIV_KEY},
            "endpoints": [asdict(e) for e in self.endpoints()],
        }
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")
