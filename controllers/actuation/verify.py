"""Verification: does each node enforce and follow the caps it was sent? All arrays, no per-node objects.

For every node the controller compares three things: the cap it **requested** (what the
publisher last sent), the limit the agent reports **enforced**, and the **measured** draw
(the GPU power in the agents' statuses). After a cap goes down, the node has
``[actuation].settle_s`` to acknowledge it (a status whose ``(epoch, seq)`` is at least the
command's) with an enforced limit at or below it and a draw, measured after the
acknowledgement, that follows; its settling time runs from the cut to that measurement.
A node that misses the deadline is non-compliant until it complies:

* it is flagged — one ``node_noncompliant`` event per rack and period for the nodes that
  became non-compliant in it (entity = rack, value = nodes, the node list in the hook
  detail), never one event per node;
* the controller accounts it at worst case — the higher of its measured draw and the
  limit it last reported enforcing (its ceiling if unknown) — through ``pinned_w``,
  which ``ControlLoop.step`` takes as the node's fixed load.

Statuses also tell when nodes fell back on their lease (``lease_fallback``, per rack).
Settling times go into a fixed-bin histogram, so percentiles cover the whole run and
merge across controller restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from controllers.actuation.messages import MODES, AgentStatus
from controllers.actuation.publisher import CapPublisher
from controllers.safety import OVERDRAW_SHARE, OVERDRAW_W
from models.clock import NS_PER_S
from models.events import EV_LEASE_FALLBACK, EV_NON_COMPLIANT, Event
from models.histogram import Histogram

F64 = NDArray[np.float64]
ENFORCE_TOL_W = 1.0
UNKNOWN = 255
M_STARTING, M_CONTROLLED, M_FALLBACK = (MODES.index(m) for m in ("starting", "controlled", "fallback"))
HookEvent = tuple[Event, dict[str, Any]]
Index = slice | NDArray[np.intp]


def _put(a: NDArray[Any], ix: Index, mask: NDArray[np.bool_], value: Any) -> None:
    """``a[ix][mask] = value``, through a view when ``ix`` is a slice."""
    if mask.all():
        a[ix] = value
    elif isinstance(ix, slice):
        a[ix][mask] = value
    elif mask.any():
        a[ix[mask]] = value


@dataclass
class VerifyStats:
    """Verification so far."""

    statuses: int = 0
    settled: int = 0
    settle: Histogram = field(default_factory=Histogram)
    noncompliant_now: int = 0
    noncompliant_episodes: int = 0  # nodes that became non-compliant, summed over episodes
    fallbacks: int = 0  # nodes that fell back on their lease
    modes: dict[str, int] = field(default_factory=dict)

    def settle_percentiles(self) -> tuple[float, float, float]:
        """p50, p95 and max settling time (s); NaN before the first."""
        return self.settle.percentile(50), self.settle.percentile(95), self.settle.max


class Verifier:
    """Tracks every node's acknowledgements and draw against what was sent."""

    def __init__(self, pub: CapPublisher) -> None:
        self.pub = pub
        self.site_id = pub.site_id
        self.layouts = pub.layouts
        topo = pub.topo
        n = int(pub.first.shape[0])
        self.ack_order = np.zeros(n, np.int64)
        self.ack_ns = np.full(n, -1, np.int64)
        self.status_ns = np.full(n, -1, np.int64)
        self.enforced_w = np.full(topo.n_gpus, np.nan)  # per GPU, as reported
        self.power_w = np.full(topo.n_gpus, np.nan)
        self.power_ns = np.full(n, -1, np.int64)  # per node: stamp of its GPU power
        self.mode = np.full(n, UNKNOWN, np.uint8)
        self.fallback_ns = np.full(n, -1, np.int64)  # when each node last fell back (its agent's clock)
        self.controlled_ns = np.full(n, -1, np.int64)  # when each node last came (back) under control
        self.settled_order = np.zeros(n, np.int64)  # the lowering already settled
        self.bad = np.zeros(n, bool)
        self.settle_s = float(pub.cfg.settle_s)
        self.stats = VerifyStats()
        self._new_fallback = np.zeros(n, bool)
        self._fallback_cap = np.zeros(n)
        self._gpu_ix: dict[tuple[str, tuple[int, ...]], tuple[Index, Index]] = {}

    def _indices(self, st: AgentStatus) -> tuple[Index, Index]:
        """Global node and GPU indices of a status's nodes: slices when they are contiguous (a rack
        agent's whole rack, a node agent's node), else index arrays (cached per rack and node list)."""
        lay = self.layouts[st.rack]
        if len(st.nodes) == lay.n_nodes and list(st.nodes) == lay.every_node:
            return slice(lay.node0, lay.node0 + lay.n_nodes), slice(lay.gpu0, lay.gpu0 + lay.n_gpus)
        if len(st.nodes) == 1:
            k = int(st.nodes[0])
            g0 = lay.gpu0 + int(lay.node_first[k])
            return slice(lay.node0 + k, lay.node0 + k + 1), slice(g0, g0 + int(lay.node_gpus[k]))
        key = (st.rack, tuple(st.nodes))
        hit = self._gpu_ix.get(key)
        if hit is not None:
            return hit
        local = np.asarray(st.nodes, np.intp)
        nodes = lay.node0 + local
        gpus = np.concatenate([np.arange(lay.gpu0 + lay.node_first[k], lay.gpu0 + lay.node_first[k]
                                         + lay.node_gpus[k]) for k in local.tolist()]).astype(np.intp)
        if len(self._gpu_ix) < 100_000:
            self._gpu_ix[key] = (nodes, gpus)
        return nodes, gpus

    def status(self, st: AgentStatus) -> None:
        """Take one (validated, topic-bound) agent status."""
        nodes, gpus = self._indices(st)
        self.stats.statuses += 1
        self.enforced_w[gpus] = st.enforced_w
        # A status without power (the acknowledgement of a cut, sent at once) keeps the last
        # measurement, and its stamp: settling waits for a draw measured after the cut.
        measured = np.isfinite(st.power_w)
        if measured.all():
            self.power_w[gpus] = st.power_w
            self.power_ns[nodes] = st.power_ts_ns or st.ts_ns
        elif measured.any():
            _put(self.power_w, gpus, measured, st.power_w[measured])
        self.status_ns[nodes] = st.ts_ns
        o = st.order
        newer = o > self.ack_order[nodes]  # when each node first acknowledged its newest command
        _put(self.ack_order, nodes, newer, o)
        _put(self.ack_ns, nodes, newer, st.ts_ns)
        m = MODES.index(st.mode)
        changed = self.mode[nodes] != m  # before the assignment: a slice is a view
        self.mode[nodes] = m
        if m == M_CONTROLLED:
            _put(self.controlled_ns, nodes, changed, st.since_ns or st.ts_ns)
        elif m == M_FALLBACK:
            _put(self.fallback_ns, nodes, changed, st.since_ns or st.ts_ns)
            _put(self._new_fallback, nodes, changed, True)
            _put(self._fallback_cap, nodes, changed, st.safe_cap_w)

    def fallback_events(self) -> list[HookEvent]:
        """One ``lease_fallback`` event per rack for the nodes that fell back since the last call."""
        idx = np.flatnonzero(self._new_fallback)
        self._new_fallback[idx] = False
        self.stats.fallbacks += int(idx.size)
        return self._per_rack(idx, lambda rack, names, k: (
            Event(int(self.fallback_ns[k].max()), EV_LEASE_FALLBACK, "warning", "agent",
                  f"{rack}: {len(names)} node(s) fell back to their safe cap "
                  f"({self._fallback_cap[k].max():.0f} W per GPU): no plan renewed their lease; "
                  f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}",
                  rack, {"value": float(len(names)), "safe_cap_w": float(self._fallback_cap[k].max())}),
            {"rack": rack, "nodes": names}))

    def _per_rack(self, idx: NDArray[np.intp], make: Any) -> list[HookEvent]:
        out: list[HookEvent] = []
        if not idx.size:
            return out
        racks = self.pub.node_rack[idx]
        for r in np.unique(racks).tolist():
            k = idx[racks == r]
            lay = self.layouts[self.pub.racks[r]]
            names = [lay.nodes[int(i) - lay.node0] for i in k.tolist()]
            out.append(make(lay.rack, names, k))
        return out

    def node_power_w(self) -> tuple[F64, NDArray[np.int64]]:
        """Per server: GPU power summed from the statuses (NaN where any GPU is unknown) and its stamp."""
        s = np.add.reduceat(self.power_w, self.pub.first)
        return s, self.power_ns

    def check(self, now_ns: int, draw_per_gpu_w: F64) -> tuple[list[HookEvent], F64]:
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
        req_node = np.minimum.reduceat(np.where(np.isnan(req), np.inf, req), first)
        req_mean = np.add.reduceat(np.nan_to_num(req, nan=0.0), first) / pub.count
        # The draw that counts is the agents' own measurement taken after they applied the
        # command they acknowledge: an older one (before the cut) neither settles nor condemns.
        draw = np.add.reduceat(self.power_w, first) / pub.count
        after = self.power_ns >= self.ack_ns
        over = draw > req_mean * (1 + OVERDRAW_SHARE) + OVERDRAW_W
        known = np.isfinite(draw)
        draw_ok = ~known | (after & ~over)  # never measured: the enforced limit is all there is
        draw_bad = known & after & over
        acked = self.ack_order >= pub.lowered_order
        waiting = (pub.lowered_order > self.settled_order) & (pub.lowered_ns >= 0)
        ok = acked & enf_ok & draw_ok
        # Settled: a lowering acknowledged, enforced and followed.
        done = np.flatnonzero(waiting & ok)
        # Settling time: from the cut to the measurement that shows it acknowledged, enforced
        # and followed (the agent's clock) — the actuation lag, not when this period noticed.
        seen_ns = np.where(known[done], np.maximum(self.power_ns[done], self.ack_ns[done]), self.ack_ns[done])
        seen_ns = np.clip(seen_ns, pub.lowered_ns[done], now_ns)
        self.stats.settle.add((seen_ns - pub.lowered_ns[done]) / NS_PER_S)
        self.stats.settled += int(done.size)
        self.settled_order[done] = pub.lowered_order[done]
        # Deadline: waiting longer than settle_s, or a settled node drifting out of compliance.
        late = waiting & ~ok & (now_ns - pub.lowered_ns >= int(self.settle_s * NS_PER_S))
        drift = ~waiting & (pub.lowered_ns >= 0) & acked & (~enf_ok | draw_bad)
        bad = late | drift
        new = np.flatnonzero(bad & ~self.bad)
        self.stats.noncompliant_episodes += int(new.size)

        def event(rack: str, names: list[str], k: NDArray[np.intp]) -> HookEvent:
            why = {"no acknowledgement": int((~acked[k]).sum()),
                   "enforced limit above the cap": int((acked[k] & ~enf_ok[k]).sum()),
                   "no draw measured since acknowledging": int((acked[k] & enf_ok[k] & known[k] & ~after[k]).sum()),
                   "draws over its cap": int((acked[k] & enf_ok[k] & draw_bad[k]).sum())}
            excess = np.where(known[k], np.maximum(draw[k] - req_mean[k], 0.0), 0.0)
            over_w = float((excess * pub.count[k]).sum())
            text = ", ".join(f"{n} {w}" for w, n in why.items() if n)
            k0 = int(k[0])
            g = slice(int(first[k0]), int(first[k0] + pub.count[k0]))
            enf0 = float(np.nanmax(enf[g])) if np.isfinite(enf[g]).any() else float("nan")
            state = f"waiting {(now_ns - pub.lowered_ns[k0]) / 1e9:.1f} s" if waiting[k0] else "had settled"
            text += f"; e.g. {names[0]}: draws {draw[k0]:.0f} W per GPU, enforces {enf0:.0f} W, {state}"
            return (Event(now_ns, EV_NON_COMPLIANT, "error", "controller",
                          f"{rack}: {len(names)} node(s) did not comply within {self.settle_s:g} s ({text}; "
                          f"cap {float(req_node[k].min()):.0f} W per GPU); accounted at worst case: "
                          f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}",
                          rack, {"value": float(len(names)), "over_w": over_w}),
                    {"rack": rack, "nodes": names, "reasons": {w: n for w, n in why.items() if n}})

        events = self._per_rack(new, event)
        self.bad = bad
        self.stats.noncompliant_now = int(bad.sum())
        counts = np.bincount(self.mode, minlength=256)
        self.stats.modes = {MODES[i]: int(counts[i]) for i in range(len(MODES)) if counts[i]}
        if counts[UNKNOWN]:
            self.stats.modes["unknown"] = int(counts[UNKNOWN])
        # Worst case of a non-compliant node: what it draws, or the limit it last reported
        # (its old, higher cap when it never acknowledged the cut).
        enf_node = np.maximum.reduceat(np.where(np.isnan(enf), -np.inf, enf), first)
        worst = np.fmax(np.where(np.isfinite(draw_per_gpu_w), draw_per_gpu_w, -np.inf), enf_node)
        worst = np.where(np.isnan(worst) | np.isneginf(worst), np.inf, worst)  # unknown: its ceiling
        pinned = np.where(bad, worst, np.nan)
        return events, pinned
