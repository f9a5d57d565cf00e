"""Verification: does each node enforce and follow the caps it was sent?

For every node the controller compares three things: the cap it **requested** (what the
publisher last sent), the limit the agent reports **enforced**, and the **measured**
draw (the server's power telemetry, per GPU). After a cap goes down, the node has
``[actuation].settle_s`` to acknowledge it (status seq at least the command's) with an
enforced limit at or below it and a draw that follows; the time this takes is its
settling time. A node that misses the deadline is non-compliant until it complies:

* it is flagged (``node_noncompliant`` event, once per episode, with the reason);
* the controller accounts it at worst case — the higher of its measured draw and the
  limit it last reported enforcing (the cap before the cut if it never acknowledged) —
  through ``pinned_w``, which ``ControlLoop.step`` takes as the node's fixed load.

Agent statuses also tell when a node fell back on its lease (``lease_fallback``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from controllers.actuation.messages import AgentStatus
from controllers.actuation.publisher import CapPublisher
from controllers.safety import OVERDRAW_SHARE, OVERDRAW_W
from models.clock import NS_PER_S
from models.events import EV_LEASE_FALLBACK, EV_NON_COMPLIANT, Event

F64 = NDArray[np.float64]
ENFORCE_TOL_W = 1.0


@dataclass
class VerifyStats:
    """Verification so far."""

    statuses: int = 0
    bad_statuses: int = 0
    settled: int = 0
    settle_s: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    noncompliant_now: int = 0
    noncompliant_episodes: int = 0
    fallbacks: int = 0
    modes: dict[str, int] = field(default_factory=dict)

    def settle_percentiles(self) -> tuple[float, float, float]:
        """p50, p95 and max settling time (s); NaN before the first."""
        if not self.settle_s:
            return (float("nan"),) * 3
        a = np.asarray(self.settle_s)
        return float(np.percentile(a, 50)), float(np.percentile(a, 95)), float(a.max())


class Verifier:
    """Tracks every node's acknowledgements and draw against what was sent."""

    def __init__(self, pub: CapPublisher) -> None:
        self.pub = pub
        self.site_id = pub.site_id
        n = len(pub.nodes)
        self.index = {node: k for k, node in enumerate(pub.nodes)}
        self.ack_seq = np.zeros(n, np.int64)
        self.ack_ns = np.full(n, -1, np.int64)
        self.enforced_w = np.full(pub.topo.n_gpus, np.nan)  # per GPU, as reported
        self.mode = np.array(["unknown"] * n, dtype=object)
        self.fallback_ns = np.full(n, -1, np.int64)  # when each node last fell back (its own clock)
        self.controlled_ns = np.full(n, -1, np.int64)  # when each node last came (back) under control
        self.settled_seq = np.zeros(n, np.int64)  # the lowering already settled (or being waited for)
        self.bad = np.zeros(n, bool)
        self.reason: dict[int, str] = {}
        self.settle_s = float(pub.cfg.settle_s)
        self.stats = VerifyStats()

    def status(self, st: AgentStatus) -> list[Event]:
        """Take one agent status; return events it raises (a lease fallback)."""
        k = self.index.get(st.node)
        if k is None or st.site != self.site_id:
            self.stats.bad_statuses += 1
            return []
        self.stats.statuses += 1
        lo, hi = int(self.pub.first[k]), int(self.pub.first[k] + self.pub.count[k])
        if len(st.enforced_w) == hi - lo:
            self.enforced_w[lo:hi] = [np.nan if x is None else x for x in st.enforced_w]
        if st.seq >= self.ack_seq[k]:
            self.ack_seq[k] = st.seq
            self.ack_ns[k] = st.ts_ns
        was = self.mode[k]
        self.mode[k] = st.mode
        if st.mode == "controlled" and was != "controlled":
            self.controlled_ns[k] = st.mode_since_ns or st.ts_ns
        if st.mode == "fallback" and was != "fallback":
            self.fallback_ns[k] = st.mode_since_ns or st.ts_ns
            self.stats.fallbacks += 1
            return [Event(int(self.fallback_ns[k]), EV_LEASE_FALLBACK, "warning", "agent",
                          f"{st.node} fell back to its safe cap {st.safe_cap_w:.0f} W per GPU: no plan renewed "
                          f"its lease (plan {st.plan_id})", st.node, {"value": st.safe_cap_w})]
        return []

    def check(self, now_ns: int, draw_per_gpu_w: F64) -> tuple[list[Event], F64]:
        """Settle and deadline checks at ``now_ns``; return events and ``pinned_w`` per server.

        ``draw_per_gpu_w``: each server's measured draw per GPU (NaN where unknown).
        ``pinned_w`` is NaN where a server complies, else the per-GPU load to account it at.
        """
        pub = self.pub
        first = pub.first
        req = pub.sent_w
        enf = self.enforced_w
        enf_ok_gpu = np.isfinite(enf) & (enf <= req + ENFORCE_TOL_W)
        enf_ok = np.minimum.reduceat(enf_ok_gpu.astype(np.int8), first) > 0
        req_node = np.minimum.reduceat(np.where(np.isnan(req), np.inf, req), first)  # per-GPU cap (spread evenly)
        req_mean = np.add.reduceat(np.nan_to_num(req, nan=0.0), first) / pub.count
        draw_ok = ~np.isfinite(draw_per_gpu_w) | (draw_per_gpu_w <= req_mean * (1 + OVERDRAW_SHARE) + OVERDRAW_W)
        acked = self.ack_seq >= pub.lowered_seq
        waiting = (pub.lowered_seq > self.settled_seq) & (pub.lowered_ns >= 0)
        ok = acked & enf_ok & draw_ok
        events: list[Event] = []
        # Settled: a lowering acknowledged, enforced and followed.
        done = np.flatnonzero(waiting & ok)
        for k in done.tolist():
            self.stats.settle_s.append((now_ns - int(pub.lowered_ns[k])) / NS_PER_S)
        self.stats.settled += int(done.size)
        self.settled_seq[done] = pub.lowered_seq[done]
        # Deadline: waiting longer than settle_s, or a settled node drifting out of compliance.
        late = waiting & ~ok & (now_ns - pub.lowered_ns >= int(self.settle_s * NS_PER_S))
        drift = ~waiting & (pub.lowered_ns >= 0) & acked & ~(enf_ok & draw_ok)
        bad = late | drift
        for k in np.flatnonzero(bad & ~self.bad).tolist():
            why = ("no acknowledgement" if not acked[k] else
                   "enforced limit above the cap" if not enf_ok[k] else "draws over its cap")
            over = max(0.0, float(draw_per_gpu_w[k] - req_mean[k])) * float(pub.count[k]) \
                if np.isfinite(draw_per_gpu_w[k]) else 0.0
            self.reason[k] = why
            self.stats.noncompliant_episodes += 1
            events.append(Event(now_ns, EV_NON_COMPLIANT, "error", "controller",
                                f"{pub.nodes[k]} did not comply within {self.settle_s:g} s: {why} "
                                f"(cap {req_node[k]:.0f} W per GPU); accounted at worst case", pub.nodes[k],
                                {"value": over}))
        for k in np.flatnonzero(~bad & self.bad).tolist():
            self.reason.pop(k, None)
        self.bad = bad
        self.stats.noncompliant_now = int(bad.sum())
        modes, counts = np.unique(self.mode, return_counts=True)
        self.stats.modes = {str(m): int(c) for m, c in zip(modes, counts, strict=True)}
        # Worst case of a non-compliant node: what it draws, or the limit it last reported
        # (its old, higher cap when it never acknowledged the cut).
        enf_node = np.maximum.reduceat(np.where(np.isnan(enf), -np.inf, enf), first)
        worst = np.fmax(np.where(np.isfinite(draw_per_gpu_w), draw_per_gpu_w, -np.inf), enf_node)
        worst = np.where(np.isnan(worst) | np.isneginf(worst), np.inf, worst)  # unknown: its ceiling
        pinned = np.where(bad, worst, np.nan)
        return events, pinned
