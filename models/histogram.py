"""A fixed-bin histogram: whole-run percentiles that merge across processes and restarts."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


class Histogram:
    """Counts of values in fixed bins (``bin_s`` wide up to ``top_s``, one overflow bin); exact max.

    Percentiles are exact to one bin, cost nothing to keep for a whole run, and histograms
    of two runs (a controller before and after a restart) add up.
    """

    def __init__(self, bin_s: float = 0.05, top_s: float = 600.0) -> None:
        self.bin_s = bin_s
        self.top_s = top_s
        self.counts = np.zeros(int(round(top_s / bin_s)) + 1, np.int64)
        self.max = float("nan")
        self.sum = 0.0  # of every value counted (a Prometheus histogram's _sum)

    def add(self, values: F64) -> None:
        """Count ``values``."""
        if not values.size:
            return
        k = np.minimum((values / self.bin_s).astype(np.int64).clip(0), self.counts.size - 1)
        np.add.at(self.counts, k, 1)
        self.sum += float(values.sum())
        m = float(values.max())
        self.max = m if np.isnan(self.max) else max(self.max, m)

    def merge(self, other: Histogram) -> None:
        """Add another histogram with the same bins."""
        self.counts += other.counts
        self.sum += other.sum
        if not np.isnan(other.max):
            self.max = other.max if np.isnan(self.max) else max(self.max, other.max)

    @property
    def n(self) -> int:
        """Values counted."""
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (upper edge of its bin, at most the max); NaN when empty."""
        n = self.n
        if not n:
            return float("nan")
        k = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * n, side="left"))
        if k >= self.counts.size - 1:
            return self.max  # the overflow bin has no upper edge: the max is the only bound known
        return min((k + 1) * self.bin_s, self.max)

    def cumulative(self, bounds: list[float]) -> list[int]:
        """Values counted at or below each of ``bounds`` (exact to one bin: a bin counts where its upper
        edge falls), for a Prometheus histogram's buckets."""
        c = np.cumsum(self.counts)
        out = []
        for b in bounds:
            k = int(np.floor(b / self.bin_s + 1e-9)) - 1  # bins wholly at or below b
            out.append(int(c[min(k, c.size - 2)]) if k >= 0 else 0)
        return out

    def to_json(self) -> dict[str, Any]:
        """Sparse form for a summary file."""
        nz = np.flatnonzero(self.counts)
        return {"bin_s": self.bin_s, "top_s": self.top_s, "max": None if np.isnan(self.max) else self.max,
                "bins": {int(i): int(self.counts[i]) for i in nz}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Histogram:
        """Inverse of ``to_json`` (bins beyond this histogram's top go to its overflow bin)."""
        h = cls(float(d.get("bin_s", 0.05)), float(d.get("top_s", 600.0)))
        for i, c in d.get("bins", {}).items():
            h.counts[min(int(i), h.counts.size - 1)] += int(c)
        h.max = float("nan") if d.get("max") is None else float(d["max"])
        return h
