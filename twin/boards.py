"""The twin's GPU boards over MQTT: what NVML is to a real node, for the simulated backend.

The wire format is ``models.twin.gpuwire``. The twin applies a set at its next tick, clamped to
each GPU's range as NVML does. The paho network thread only queues what arrives; the twin's
own loop applies it, so the simulation is never touched from two threads. Boards share the
twin's one MQTT connection.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from bus.mqtt import Inbox, MqttLink
from models.topology import L_RACK
from models.twin.gpuwire import BOARD_PERIOD_S, MAX_SET_BYTES, decode_mw, encode_mw, set_topic, state_topic
from models.twin.sim import TwinSim

log = logging.getLogger("powerplane.twin.boards")
class GpuBoards:
    """Serves the twin's GPUs to simulated-backend agents over the twin's MQTT connection."""

    def __init__(self, sim: TwinSim, link: MqttLink, *, period_s: float = BOARD_PERIOD_S) -> None:
        self.sim = sim
        self.site = sim.site.site.name
        topo = sim.topo
        self.period_s = period_s
        self.link = link
        self._rack_ids = topo.ids(L_RACK)
        self._rack_ix = {r: i for i, r in enumerate(self._rack_ids)}
        self._g0 = topo.rack_first_gpu.astype(np.int64)
        self._ng = topo.rack_gpus.astype(np.int64)
        off = int(topo.rack_first_node[0]) if topo.rack_first_node.size else 0
        self._n0 = topo.rack_first_node.astype(np.int64) - off
        self._nn = topo.rack_nodes.astype(np.int64)
        self._node_first = topo.node_first_gpu.astype(np.int64)
        self._node_gpus = topo.node_gpus.astype(np.int64)
        # The paho thread only queues what arrives (bounded); tick() applies it on the twin's loop.
        self.inbox = link.subscribe(set_topic(self.site), qos=1, inbox=Inbox(maxlen=100_000, max_bytes=MAX_SET_BYTES))
        self.applied = 0
        self.rejected = 0
        self._next_state_ns = 0

    def _parse(self, payload: bytes) -> tuple[int, list[int], str] | None:
        try:
            d = json.loads(payload)
            return self._rack_ix[str(d["rack"])], [int(k) for k in d.get("nodes") or []], str(d["caps_mw"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            self.rejected += 1
            log.warning("twin boards: bad set message: %s", str(exc)[:200])
            return None

    def gpus(self, r: int, nodes: list[int]) -> np.ndarray:
        """Global GPU indices of rack ``r``'s rack-local ``nodes`` ([] = all), in layout order."""
        if not nodes:
            return np.arange(self._g0[r], self._g0[r] + self._ng[r])
        local = np.asarray(nodes, np.int64)
        if (local < 0).any() or (local >= self._nn[r]).any():
            raise IndexError("node index outside the rack")
        n = self._n0[r] + local
        return np.concatenate([np.arange(self._node_first[k], self._node_first[k] + self._node_gpus[k])
                               for k in n.tolist()])

    def tick(self) -> None:
        """Apply what arrived; publish every rack's board state when due (twin loop only)."""
        for _topic, payload in self.inbox.drain():
            parsed = self._parse(payload)
            if parsed is None:
                continue
            r, nodes, text = parsed
            try:
                gpus = self.gpus(r, nodes)
            except (IndexError, ValueError):
                gpus = None
            caps = decode_mw(text, gpus.size) if gpus is not None else None
            if gpus is None or caps is None:
                self.rejected += 1
                log.warning("twin boards: set for rack %s: wrong node list or GPU count", self._rack_ids[r])
                continue
            self.sim.set_caps(caps, gpus)
            self.applied += 1
        now = self.sim.now_ns
        if now < self._next_state_ns:
            return
        self._next_state_ns = now + int(self.period_s * 1e9)
        cap, power = self.sim.gpu_cap_w, self.sim.gpu_power_w
        for r, rack in enumerate(self._rack_ids):
            sl = slice(int(self._g0[r]), int(self._g0[r] + self._ng[r]))
            doc = {"ts_ns": now, "limit_mw": encode_mw(cap[sl]), "power_mw": encode_mw(power[sl])}
            self.link.publish(state_topic(self.site, rack), json.dumps(doc, separators=(",", ":")).encode(),
                              qos=0, retain=True)
