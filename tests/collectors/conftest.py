"""Fixtures for collector tests: the twin served on loopback, and its devices as DeviceConfigs."""

from __future__ import annotations

import asyncio
import heapq

from models.clock import ManualClock
from models.site import SiteConfig
from models.topology import Topology
from twin.runner import Twin


async def started_twin(site: SiteConfig, clock: ManualClock, topo: Topology | None = None,
                       mqtt: tuple[str, int] | None = None) -> Twin:
    """Start the twin's servers (the caller stops it)."""
    twin = Twin(site, clock, topo=topo, mqtt=mqtt)
    await twin.start()
    return twin


class StepClock:
    """Virtual time for runtime tests: sleepers wake in deadline order, only when the test says.

    ``run_until`` advances to the next deadline only once ``n_waiters`` tasks are asleep,
    so real I/O in between (a pymodbus round trip, a timeout) never races virtual time,
    and poll counts and timestamps are exact.
    """

    speed = 1.0

    def __init__(self, start_ns: int = 1_780_000_000 * 1_000_000_000) -> None:
        self._now_ns = start_ns
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now_ns(self) -> int:
        """Virtual now."""
        return self._now_ns

    async def sleep(self, seconds: float) -> None:
        """Wait until virtual time reaches now + seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self._now_ns + int(round(max(0.0, seconds) * 1e9)), self._seq, fut))
        await fut

    @property
    def waiting(self) -> int:
        """Tasks asleep right now."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def run_until(self, t_ns: int, n_waiters: int, wall_timeout_s: float = 60.0) -> None:
        """Advance deadline by deadline up to ``t_ns``, each time once ``n_waiters`` tasks sleep."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wall_timeout_s
        while True:
            while self.waiting < n_waiters:
                if loop.time() > give_up:
                    raise TimeoutError(f"only {self.waiting} of {n_waiters} tasks went to sleep")
                await asyncio.sleep(0.002)
            self._sleepers = [s for s in self._sleepers if not s[2].done()]
            heapq.heapify(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > t_ns:
                self._now_ns = max(self._now_ns, t_ns)
                return
            deadline = self._sleepers[0][0]
            self._now_ns = deadline
            while self._sleepers and self._sleepers[0][0] <= deadline:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)
            await asyncio.sleep(0)
