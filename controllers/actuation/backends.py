"""GPU backends: how an agent sets and reads its node's GPU power limits.

One small protocol (``GpuBackend``) and an explicit registry (``BACKENDS``). A backend
works per node; all values are per GPU in watts, in the node's GPU order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BoardLimits:
    """The power-limit range each GPU accepts (W)."""

    min_w: tuple[float, ...]
    max_w: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class GpuReading:
    """Enforced limit and measured draw of each GPU (``None`` where the board did not say)."""

    enforced_w: tuple[float | None, ...]
    power_w: tuple[float | None, ...]


class GpuBackend(Protocol):
    """Sets and reads one node's GPU power limits."""

    name: str

    async def open(self) -> BoardLimits:
        """Connect to the GPUs and return their limit ranges."""

    async def apply(self, caps_w: Sequence[float]) -> tuple[float, ...]:
        """Set each GPU's power limit; return the limits now enforced (after the board's clamping)."""

    async def read(self) -> GpuReading:
        """Enforced limits and measured power now."""

    async def close(self) -> None:
        """Release the GPUs (limits stay as set)."""


BackendFactory = Callable[..., GpuBackend]
