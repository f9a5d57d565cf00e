"""GPU backends: how an agent sets and reads its node's GPU power limits.

One small protocol (``GpuBackend``). A backend works per *unit*: the GPUs of one node
(NVML on the node itself), or the GPUs of the nodes an agent serves in one rack (the
simulated backend, a rack-level management controller); all values are per GPU in watts,
in the rack layout's order (``controllers.actuation.layout``).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    power_ts_ns: int | None = None  # when the power was measured (None: now)


class GpuBackend(Protocol):
    """Sets and reads the GPU power limits of one unit (a node, or served nodes of a rack)."""

    name: str

    async def open(self) -> BoardLimits:
        """Connect to the GPUs and return their limit ranges."""

    async def apply(self, caps_w: Sequence[float]) -> tuple[float, ...]:
        """Set each GPU's power limit; return the limits now enforced (after the board's clamping)."""

    async def read(self) -> GpuReading:
        """Enforced limits and measured power now."""

    async def close(self) -> None:
        """Release the GPUs (limits stay as set)."""

