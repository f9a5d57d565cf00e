"""Validation of raw readings before anyone trusts them.

Checks, in order, per reading:

- ``NOT_FINITE``: NaN or infinity;
- ``BELOW_RANGE`` / ``ABOVE_RANGE``: outside the series' valid range from the reading
  schema, relative to the entity's rating where the metric has one (a 600 kW rack
  reading 6 MW, a negative flow);
- ``STUCK``: a gauge repeating the very same value for more polls than its metric allows
  (configured per metric, e.g. ``{"power.power_w": 60}``; states never count as stuck);
- ``COUNTER_DECREASE``: a counter going backwards is either a 32-bit wrap or a reset. It
  is never passed on as negative energy: the value is kept, flagged
  ``Quality.COUNTER_RESET`` so a consumer starts a new run of increases from it.

Rejected readings are dropped from the batch (the store never sees them as good) and
counted by reason; counter resets are kept but flagged and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from models.readings import MetricKind, Quality, ReadingBatch, Reason, SeriesRegistry, check_ranges, metric

_WRAP_32 = float(2**32)


class Validator:
    """Stateful per-series checks (stuck values, counter continuity) over successive batches."""

    def __init__(self, registry: SeriesRegistry, *, stuck_polls: Mapping[str, int] | None = None) -> None:
        self.registry = registry
        self.stuck_polls = dict(stuck_polls or {})
        for name, n in self.stuck_polls.items():
            if metric(name).kind == "state":
                raise ValueError(f"{name} is a state; states cannot be stuck")
            if n < 2:
                raise ValueError(f"stuck_polls[{name!r}] must be >= 2, got {n}")
        self._kind = np.zeros(0, np.uint8)  # MetricKind per series
        self._stuck_n = np.zeros(0, np.int64)  # 0 = never stuck
        self._last = np.zeros(0, np.float64)
        self._same = np.zeros(0, np.int64)
        self._seen = np.zeros(0, np.bool_)
        self.totals: Counter[Reason] = Counter()

    def _grow(self) -> None:
        n_old, n = self._kind.shape[0], len(self.registry)
        if n <= n_old:
            return
        keys = self.registry.keys()
        kind = np.array([MetricKind.of(metric(keys[i].metric).kind) for i in range(n_old, n)], np.uint8)
        stuck = np.array([self.stuck_polls.get(keys[i].metric, 0) for i in range(n_old, n)], np.int64)
        self._kind = np.concatenate([self._kind, kind])
        self._stuck_n = np.concatenate([self._stuck_n, stuck])
        self._last = np.concatenate([self._last, np.full(n - n_old, np.nan)])
        self._same = np.concatenate([self._same, np.zeros(n - n_old, np.int64)])
        self._seen = np.concatenate([self._seen, np.zeros(n - n_old, np.bool_)])

    def check(self, batch: ReadingBatch, now_ns: int) -> tuple[ReadingBatch, Counter[Reason]]:
        """The readings of ``batch`` that pass, and how many failed, by reason."""
        del now_ns  # checks are per poll; kept for time-based rules without an API change
        if batch.registry is not self.registry:
            raise ValueError("batch belongs to another series registry")
        if not len(batch):
            return batch, Counter()
        self._grow()
        reasons = check_ranges(batch)  # the one range check (the registry caches its bounds)
        v = batch.value
        quality = batch.quality.copy()
        # Readings of one series within a batch are processed in order (rare, but an
        # MQTT batch may hold several readings of one series).
        s = batch.series
        # Only counters and stuck-checked gauges carry state; everything else is done above.
        stateful = (self._kind[s] == MetricKind.COUNTER) | (self._stuck_n[s] > 0)
        idx = np.flatnonzero(stateful)
        if idx.size:
            idx = idx[np.argsort(s[idx], kind="stable")]
        for i in idx.tolist():
            sid = int(s[i])
            if reasons[i]:
                continue
            val = float(v[i])
            kind = self._kind[sid]
            last = self._last[sid]
            if kind == MetricKind.COUNTER and self._seen[sid] and val < last:
                reasons[i] = Reason.COUNTER_DECREASE
                quality[i] |= Quality.COUNTER_RESET
            n_stuck = self._stuck_n[sid]
            if n_stuck and kind == MetricKind.GAUGE:
                same = self._same[sid] + 1 if self._seen[sid] and val == last else 1
                self._same[sid] = same
                if same >= n_stuck:
                    reasons[i] = Reason.STUCK
            self._last[sid] = val
            self._seen[sid] = True
        keep = (reasons == Reason.OK) | (reasons == Reason.COUNTER_DECREASE)
        counts: Counter[Reason] = Counter()
        bad = reasons[reasons != Reason.OK]
        if bad.size:
            codes, n = np.unique(bad, return_counts=True)
            counts = Counter({Reason(int(c)): int(k) for c, k in zip(codes, n, strict=True)})
            self.totals.update(counts)
        out = ReadingBatch(batch.ts_ns[keep], s[keep], v[keep], quality[keep], batch.registry)
        return out, counts

    @staticmethod
    def is_wrap(prev: float, new: float, modulus: float = _WRAP_32) -> bool:
        """True if ``prev -> new`` looks like a counter wrapping at ``modulus`` rather than a reset."""
        return prev > 0.75 * modulus and new < 0.25 * modulus


def rejected_total(counts: Mapping[Reason, int]) -> int:
    """Number of readings rejected outright (counter resets are kept, so not counted)."""
    return sum(n for r, n in counts.items() if r not in (Reason.OK, Reason.COUNTER_DECREASE))
