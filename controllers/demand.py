"""Demand prediction from server power telemetry: EWMA plus the recent peak, per consumer.

Server (node) input power is what a node agent or BMC reports; the GPU share of it is
``(P * psu_efficiency - base) / gpus``. Synchronous training swings at 0.1-20 Hz, so the
average alone under-predicts the peaks a cap must allow for: the prediction is the larger
of an exponentially weighted average (time constant ``ewma_s``) and the peak of the last
``peak_s`` seconds. A consumer whose reading is older than ``stale_after_s`` is stale.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from models.clock import NS_PER_S

F64 = NDArray[np.float64]


class DemandEstimator:
    """Per-consumer demand from successive (value, timestamp) observations."""

    def __init__(self, n: int, *, ewma_s: float, peak_s: float, period_s: float, stale_after_s: float) -> None:
        self.ewma_s = ewma_s
        self.stale_after_s = stale_after_s
        self.ewma_w = np.full(n, np.nan)
        self.last_ts_ns = np.zeros(n, np.int64)
        slots = max(1, math.ceil(peak_s / period_s))
        self._ring = np.full((slots, n), np.nan)
        self._slot = 0

    def update(self, draw_w: F64, ts_ns: NDArray[np.int64], now_ns: int) -> tuple[F64, NDArray[np.bool_]]:
        """Fold in readings newer than the last seen; return ``(demand_w, stale)``."""
        new = (ts_ns > self.last_ts_ns) & np.isfinite(draw_w)
        dt = np.where(self.last_ts_ns > 0, (ts_ns - self.last_ts_ns) / NS_PER_S, np.inf)
        a = 1.0 - np.exp(-np.maximum(dt, 0.0) / self.ewma_s)
        first = new & ~np.isfinite(self.ewma_w)
        self.ewma_w = np.where(first, draw_w, self.ewma_w)
        upd = new & ~first
        self.ewma_w = np.where(upd, self.ewma_w + a * (draw_w - self.ewma_w), self.ewma_w)
        self.last_ts_ns = np.where(new, ts_ns, self.last_ts_ns)
        self._ring[self._slot] = np.where(new, draw_w, np.nan)
        self._slot = (self._slot + 1) % self._ring.shape[0]
        with np.errstate(invalid="ignore"):
            ring = np.where(np.isnan(self._ring), -np.inf, self._ring)
            peak = ring.max(axis=0)
        demand = np.fmax(self.ewma_w, np.where(np.isfinite(peak), peak, np.nan))
        age_s = (now_ns - self.last_ts_ns) / NS_PER_S
        stale = (self.last_ts_ns == 0) | (age_s > self.stale_after_s)
        return demand, stale
