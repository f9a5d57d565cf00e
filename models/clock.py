"""Clocks: one injected notion of time for the twin, collectors, controller and store.

A demo that runs ten times faster than real time must stamp readings, integrate energy
and schedule polls in *site* time, so every periodic component takes a ``Clock`` rather
than calling ``time`` itself. Tests use ``ManualClock`` and advance it by hand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

NS_PER_S = 1_000_000_000


class Clock(Protocol):
    """Site time in integer nanoseconds since the Unix epoch, and sleeping in site seconds."""

    speed: float

    def now_ns(self) -> int:
        """Return the current site time in ns."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of site time."""
        ...


class SystemClock:
    """Wall-clock time."""

    speed = 1.0

    def now_ns(self) -> int:
        """Return wall-clock time in ns."""
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of wall time."""
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Site time that runs ``speed`` times faster than the wall clock from ``start_ns``."""

    def __init__(self, speed: float = 1.0, start_ns: int | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self._wall0 = time.monotonic_ns()
        self._site0 = time.time_ns() if start_ns is None else int(start_ns)

    def now_ns(self) -> int:
        """Return the scaled site time in ns."""
        return self._site0 + int((time.monotonic_ns() - self._wall0) * self.speed)

    @property
    def start_ns(self) -> int:
        """Site time when the clock started (site time 0 of a run)."""
        return self._site0

    def anchor(self) -> str:
        """``scaled:SPEED:SITE0_NS:MONO0_NS``: lets another process on this host share this clock
        (CLOCK_MONOTONIC is system-wide on Linux)."""
        return f"scaled:{self.speed!r}:{self._site0}:{self._wall0}"

    @classmethod
    def from_anchor(cls, text: str) -> ScaledClock:
        """The clock ``anchor()`` described; ValueError if ``text`` is not one."""
        kind, speed, site0, wall0 = text.split(":")
        if kind != "scaled":
            raise ValueError(f"not a scaled clock anchor: {text!r}")
        c = cls(float(speed), int(site0))
        c._wall0 = int(wall0)
        return c

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of site time (``seconds / speed`` of wall time)."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class ManualClock:
    """A frozen clock for tests: time moves only when ``advance`` is called."""

    speed = 1.0

    def __init__(self, start_ns: int = 1_780_000_000 * NS_PER_S) -> None:
        self._now_ns = int(start_ns)

    def now_ns(self) -> int:
        """Return the frozen time in ns."""
        return self._now_ns

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self._now_ns += int(round(seconds * NS_PER_S))

    async def sleep(self, seconds: float) -> None:
        """Advance the clock instead of sleeping, then yield to the loop once."""
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
