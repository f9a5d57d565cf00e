"""The simulated GPU backend: drives the twin's GPUs over MQTT (wire format: ``models.twin.gpuwire``).

It behaves like NVML from the agent's side: ``apply`` returns once the twin's broker has
the new limits (QoS 1 PUBACK), the board clamps to its range, and ``read`` gives the
limits and power the twin last reported. One backend serves the nodes an agent serves in
one rack, with one message per apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence

import numpy as np

from bus.mqtt import Inbox, MqttLink
from controllers.actuation.backends import BoardLimits, GpuReading
from controllers.actuation.layout import RackLayout
from models.errors import ControlError
from models.twin.gpuwire import decode_mw, encode_mw, set_topic, state_topic

log = logging.getLogger("powerplane.agent.sim")
ACK_TIMEOUT_S = 5.0


class SimBoards:
    """The twin's boards, over the agent process's one MQTT connection (shared by its sim backends)."""

    def __init__(self, link: MqttLink, site: str) -> None:
        self.site = site
        self.link: MqttLink | None = link
        self.inbox = link.subscribe(state_topic(site, "+"), qos=0, inbox=Inbox(maxlen=10_000, max_bytes=1 << 20))
        self.state: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}  # rack -> (ts, limit W, power W)
        self.sizes: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the twin's board state (the host starts the connection)."""
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="sim-boards")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        while True:
            await self.inbox.wait()
            for topic, payload in self.inbox.drain():
                rack = topic.rsplit("/", 1)[-1]
                n = self.sizes.get(rack)
                if n is None:
                    continue
                try:
                    d = json.loads(payload)
                    ts = int(d["ts_ns"])
                    lim, pw = decode_mw(str(d["limit_mw"]), n), decode_mw(str(d["power_mw"]), n)
                    if lim is None or pw is None:
                        raise ValueError("wrong GPU count")
                    self.state[rack] = (ts, lim, pw)
                except (ValueError, KeyError, TypeError, RecursionError) as exc:
                    log.warning("bad twin board state on %s: %s", topic, str(exc)[:200])

    async def set(self, rack: str, nodes: list[int], caps_w: Sequence[float] | np.ndarray) -> None:
        """Send limits for ``nodes`` of ``rack`` to the twin and wait until the broker has them."""
        if self.link is None:
            raise ControlError("sim boards not started")
        body = json.dumps({"rack": rack, "nodes": nodes, "caps_mw": encode_mw(np.asarray(caps_w, np.float64))},
                          separators=(",", ":")).encode()
        if not await self.link.publish_acked(set_topic(self.site), body, timeout_s=ACK_TIMEOUT_S):
            raise ControlError(f"twin did not take {rack}'s limits within {ACK_TIMEOUT_S:g} s (broker down?)")


class SimBackend:
    """``GpuBackend`` for the nodes an agent serves in one rack of the twin."""

    name = "sim"

    def __init__(self, boards: SimBoards, layout: RackLayout, nodes: Sequence[int]) -> None:
        self.boards = boards
        self.layout = layout
        self.nodes = sorted(int(k) for k in nodes)
        self.all = len(self.nodes) == layout.n_nodes
        self.sel = np.concatenate([np.arange(layout.gpu_slice(k).start, layout.gpu_slice(k).stop)
                                   for k in self.nodes])
        boards.sizes[layout.rack] = layout.n_gpus
        self._applied: np.ndarray | None = None
        self._limits = BoardLimits(tuple(layout.min_w[self.sel].tolist()), tuple(layout.max_w[self.sel].tolist()))

    async def open(self) -> BoardLimits:
        """The GPUs' limit ranges (from the site file's rack type)."""
        return self._limits

    async def apply(self, caps_w: Sequence[float]) -> tuple[float, ...]:
        """Set the limits; the board clamps to its range."""
        caps = np.clip(np.asarray(caps_w, np.float64), self.layout.min_w[self.sel], self.layout.max_w[self.sel])
        await self.boards.set(self.layout.rack, [] if self.all else self.nodes, caps)
        self._applied = caps
        return tuple(caps.tolist())

    async def read(self) -> GpuReading:
        """The limits in force and the power the twin last reported (None before its first report).

        The enforced limit is what the board took at the last apply — as NVML reads it back
        at once — not the twin's periodic report, which can predate that apply.
        """
        st = self.boards.state.get(self.layout.rack)
        n = self.sel.size
        if st is None:
            return GpuReading((None,) * n, (None,) * n)
        enforced = self._applied if self._applied is not None else st[1][self.sel]
        return GpuReading(tuple(enforced.tolist()), tuple(st[2][self.sel].tolist()), st[0])

    async def close(self) -> None:
        """Nothing to release."""
