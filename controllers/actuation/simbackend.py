"""The simulated GPU backend: drives the twin's GPUs over MQTT (see ``models.twin.boards``).

It behaves like NVML from the agent's side: ``apply`` returns once the twin's broker has
the new limits (QoS 1 PUBACK), the board clamps to its range, and ``read`` gives the
limits and power the twin last reported for the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

from controllers.actuation.backends import BoardLimits, GpuReading
from controllers.actuation.link import MqttAddress, MqttLink
from models.errors import ControlError
from models.topology import Topology, server_gpus
from models.twin.boards import set_topic, state_topic

log = logging.getLogger("powerplane.agent.sim")
ACK_TIMEOUT_S = 5.0


class SimBoards:
    """One connection to the twin's boards, shared by the simulated backends of a process."""

    def __init__(self, addr: MqttAddress, site: str, client_id: str) -> None:
        self.addr = addr
        self.site = site
        self.client_id = client_id
        self.link: MqttLink | None = None
        self.state: dict[str, tuple[int, list[float], list[float]]] = {}  # node -> (ts, limit, power)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and follow the twin's board state."""
        self.link = MqttLink(self.addr, self.client_id)
        self.link.subscribe(state_topic(self.site, "+"), qos=0)
        self.link.start()
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="sim-boards")

    async def stop(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
        if self.link is not None:
            self.link.stop()

    async def _follow(self) -> None:
        assert self.link is not None
        while True:
            _topic, payload = await self.link.messages.get()
            try:
                d = json.loads(payload)
                ts = int(d["ts_ns"])
                for node, v in d["nodes"].items():
                    self.state[node] = (ts, v["limit_w"], v["power_w"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("bad twin board state: %s", exc)

    async def set(self, node: str, caps_w: Sequence[float]) -> None:
        """Send ``node``'s limits to the twin and wait until the broker has them."""
        if self.link is None:
            raise ControlError("sim boards not started")
        body = json.dumps({"node": node, "caps_w": [float(c) for c in caps_w]}, separators=(",", ":")).encode()
        if not await self.link.publish_acked(set_topic(self.site), body, timeout_s=ACK_TIMEOUT_S):
            raise ControlError(f"twin did not take {node}'s limits within {ACK_TIMEOUT_S:g} s (broker down?)")


class SimBackend:
    """``GpuBackend`` for one node of the twin."""

    name = "sim"

    def __init__(self, boards: SimBoards, topo: Topology, node: str) -> None:
        self.boards = boards
        self.node = node
        gpus = server_gpus(topo).get(node)
        if gpus is None or gpus.size == 0:
            raise ControlError(f"node {node} has no GPUs in the site file")
        self._limits = BoardLimits(tuple(float(x) for x in topo.gpu_min_w[gpus]),
                                   tuple(float(x) for x in topo.gpu_max_w[gpus]))

    async def open(self) -> BoardLimits:
        """The GPUs' limit ranges (from the site file's rack type)."""
        return self._limits

    async def apply(self, caps_w: Sequence[float]) -> tuple[float, ...]:
        """Set the limits; the board clamps to its range."""
        caps = tuple(min(max(c, lo), hi) for c, lo, hi in zip(caps_w, self._limits.min_w, self._limits.max_w,
                                                                strict=True))
        await self.boards.set(self.node, caps)
        return caps

    async def read(self) -> GpuReading:
        """Limits and power the twin last reported (None before its first report)."""
        st = self.boards.state.get(self.node)
        if st is None:
            n = len(self._limits.min_w)
            return GpuReading((None,) * n, (None,) * n)
        return GpuReading(tuple(st[1]), tuple(st[2]))

    async def close(self) -> None:
        """Nothing to release."""
