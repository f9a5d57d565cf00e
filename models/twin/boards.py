"""The twin's GPU boards over MQTT: what NVML is to a real node, for the simulated backend.

An agent with ``--backend sim`` runs in its own process; it sets its node's GPU power
limits by publishing to the twin, and reads enforced limits and power back, as the NVML
backend would on a real node::

    twin/<site>/gpu/set            agent -> twin  QoS 1  {"node": "r01/node-000", "caps_w": [...]}
    twin/<site>/gpu/state/<rack>   twin -> agents QoS 0, retained, every BOARD_PERIOD_S of site time
                                   {"ts_ns": ..., "nodes": {"r01/node-000": {"limit_w": [...], "power_w": [...]}}}

The twin applies a set at its next tick, clamped to each GPU's range as NVML does. The
paho network thread only queues what arrives; the twin's own loop applies it, so the
simulation is never touched from two threads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from typing import Any

import numpy as np

from models.topology import L_NODE, L_RACK, server_gpus
from models.twin.sim import TwinSim

log = logging.getLogger("powerplane.twin.boards")
BOARD_PERIOD_S = 2.0


def set_topic(site: str) -> str:
    """Where agents send GPU power limits to the twin."""
    return f"twin/{site}/gpu/set"


def state_topic(site: str, rack: str) -> str:
    """Where the twin reports a rack's GPU limits and power."""
    return f"twin/{site}/gpu/state/{rack}"


class GpuBoards:
    """Serves the twin's GPUs to simulated-backend agents through an MQTT broker."""

    def __init__(self, sim: TwinSim, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.sim = sim
        self.site = sim.site.site.name
        topo = sim.topo
        self._gpus = server_gpus(topo)
        rack_of_node = topo.node_parent[topo.level_slice(L_NODE)]
        # node -> rack goes through the PDU level; walk up to the rack.
        racks: dict[str, list[str]] = {}
        for k, nid in enumerate(topo.ids(L_NODE)):
            n = int(rack_of_node[k])
            while int(topo.node_level[n]) > L_RACK:
                n = int(topo.node_parent[n])
            racks.setdefault(topo.node_id(n), []).append(nid)
        self._racks = racks
        self._pending: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self.applied = 0
        self.rejected = 0
        self._next_state_ns = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"powerplane-twin-boards-{self.site}",
                                   clean_session=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 5)
        self._client.max_queued_messages_set(100_000)
        self.host, self.port = host, port

    def start(self) -> None:
        """Connect and start paho's network thread."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe(set_topic(self.site), qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            d = json.loads(msg.payload)
            node, caps = str(d["node"]), [float(x) for x in d["caps_w"]]
        except (ValueError, KeyError, TypeError) as exc:
            self.rejected += 1
            log.warning("twin boards: bad set message on %s: %s", msg.topic, exc)
            return
        with self._lock:
            self._pending.append((node, caps))

    def tick(self) -> None:
        """Apply what arrived; publish every rack's board state when due (twin loop only)."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        for node, caps in pending:
            gpus = self._gpus.get(node)
            if gpus is None or len(caps) != gpus.size:
                self.rejected += 1
                log.warning("twin boards: set for unknown node or wrong GPU count: %s (%d caps)", node, len(caps))
                continue
            self.sim.set_caps(np.asarray(caps, np.float64), gpus)
            self.applied += 1
        now = self.sim.now_ns
        if now < self._next_state_ns:
            return
        self._next_state_ns = now + int(BOARD_PERIOD_S * 1e9)
        cap, power = self.sim.gpu_cap_w, self.sim.gpu_power_w
        for rack, nodes in self._racks.items():
            doc = {"ts_ns": now, "nodes": {
                n: {"limit_w": np.round(cap[self._gpus[n]], 1).tolist(),
                    "power_w": np.round(power[self._gpus[n]], 1).tolist()} for n in nodes}}
            self._client.publish(state_topic(self.site, rack), json.dumps(doc, separators=(",", ":")),
                                 qos=0, retain=True)
