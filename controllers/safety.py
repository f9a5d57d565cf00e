"""Safety rules around the solver: pure functions and one small state machine on arrays.

* Caps fall at once and rise by at most ``ramp_w_per_s`` per second (per GPU).
* Hysteresis (Dynamo's three thresholds, as shares of a limit after margin): a constraint
  starts capping when its predicted demand exceeds ``cap``; while capping it holds its load
  at ``target`` (< cap), and it stops capping only when demand falls below ``release``.
* A consumer whose telemetry is stale is accounted at its last enforced cap (its ceiling if
  none was ever enforced) and its cap does not rise until fresh data arrives.
* A consumer that draws more than its cap (the cap did not take) is accounted at its
  measured draw, as a fixed load, and flagged.
* A consumer that draws at its cap is throttled: its true demand is unknown, so it is
  taken to be its ceiling (otherwise a capped job could never win power back).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
B = NDArray[np.bool_]

OVERDRAW_SHARE = 0.02  # draw this much above the cap (plus OVERDRAW_W) means the cap did not take
OVERDRAW_W = 5.0
THROTTLE_SHARE = 0.03  # draw within this share of the cap counts as held by the cap


@dataclass(frozen=True, slots=True, eq=False)
class Accounting:
    """Per consumer: what the solver is given, and why."""

    floor_w: F64
    demand_w: F64
    ceiling_w: F64
    stale: B
    overdraw: B
    throttled: B


def account(demand_w: F64, draw_w: F64, stale: B, enforced_w: F64, floor_w: F64, ceiling_w: F64,
            recently_throttled: B | None = None) -> Accounting:
    """Apply the stale, overdraw and throttling rules (per GPU of each consumer).

    ``recently_throttled`` keeps a consumer throttled through the dips of a swinging job.
    """
    known = np.isfinite(enforced_w)
    enforced = np.where(known, enforced_w, ceiling_w)
    fresh = ~stale & np.isfinite(draw_w)
    overdraw = fresh & known & (draw_w > enforced * (1.0 + OVERDRAW_SHARE) + OVERDRAW_W)
    throttled = fresh & known & ~overdraw & (enforced < ceiling_w) & \
        (draw_w >= enforced * (1.0 - THROTTLE_SHARE))
    if recently_throttled is not None:
        throttled = throttled | (fresh & ~overdraw & (enforced < ceiling_w) & recently_throttled)
    stale_all = ~fresh
    d = np.where(np.isfinite(demand_w), demand_w, enforced)
    d = np.where(throttled, ceiling_w, d)
    d = np.where(stale_all, enforced, d)
    hi = np.where(stale_all, np.maximum(enforced, floor_w), ceiling_w)
    lo = floor_w.copy()
    fixed = np.maximum(np.where(overdraw, draw_w, 0.0), floor_w)
    lo = np.where(overdraw, fixed, lo)
    hi = np.where(overdraw, fixed, hi)
    d = np.clip(np.where(overdraw, fixed, d), lo, hi)
    return Accounting(lo, d, hi, stale_all, overdraw, throttled)


def pin(acc: Accounting, pinned_w: F64) -> Accounting:
    """Account consumers with a finite or +inf ``pinned_w`` at that load (clipped to their
    range), as an overdrawing one: a node that does not follow its caps."""
    pin_mask = ~np.isnan(pinned_w)
    if not pin_mask.any():
        return acc
    fixed = np.clip(np.where(pin_mask, pinned_w, 0.0), acc.floor_w, None)
    fixed = np.where(np.isposinf(pinned_w), np.maximum(acc.ceiling_w, acc.floor_w), fixed)
    fixed = np.maximum(fixed, np.where(acc.overdraw, acc.floor_w, 0.0))
    return Accounting(np.where(pin_mask, fixed, acc.floor_w), np.where(pin_mask, fixed, acc.demand_w),
                      np.where(pin_mask, fixed, acc.ceiling_w), acc.stale, acc.overdraw | pin_mask,
                      acc.throttled & ~pin_mask)


def ramp(prev_w: F64, new_w: F64, dt_s: float, ramp_w_per_s: float) -> F64:
    """Caps fall at once; rises are limited to ``ramp_w_per_s * dt_s``."""
    up = prev_w + ramp_w_per_s * max(dt_s, 0.0)
    return np.where(np.isfinite(prev_w), np.minimum(new_w, up), new_w)


class Hysteresis:
    """Per constraint: capping or not, with cap/target/release thresholds."""

    def __init__(self, n: int, cap: float, target: float, release: float) -> None:
        if not release < target <= cap:
            raise ValueError("thresholds must satisfy release < target <= cap")
        self.active = np.zeros(n, bool)
        self.cap, self.target, self.release = cap, target, release

    def update(self, demand_load_w: F64, limit_w: F64) -> F64:
        """Update the states from predicted demand load; return each constraint's share of its limit."""
        with np.errstate(invalid="ignore"):
            start = demand_load_w > self.cap * limit_w
            stop = demand_load_w < self.release * limit_w
        self.active = (self.active | start) & ~stop
        return np.where(self.active, self.target, self.cap)


def gate(planned_w: F64, granted_violations: list[str], applied_w: F64 | None) -> F64 | None:
    """The caps to apply for a plan.

    A plan that grants more than a limit allows (``granted_violations`` from
    ``CapPlan.violations(of="caps")``) is a controller bug: apply only what lowers a cap,
    never raise one on a bad plan — and nothing at all before any plan was applied.
    """
    if not granted_violations:
        return planned_w
    if applied_w is None:
        return None
    return np.minimum(planned_w, applied_w)
