"""Power-tree consistency: does each metered parent agree with its metered children?

Every period, for each power node whose own reading and all of whose children's readings
are fresh and were taken within ``skew_s`` of each other, compare the parent with what its
children imply through the site's physics (a UPS carries its halls; a feed carries its
UPSes' *input*, output over efficiency; a rack carries its PDUs plus its fixed overhead; a
PDU carries its servers). A disagreement beyond ``share`` of the larger side plus
``floor_w`` makes the pair suspect — a meter that reads 0 W while its children draw
megawatts is the common case (an APC Smart-UPS's ``upsOutputPower`` reads 0 under load).

The controller then trusts the larger of the two: a parent that reads low is taken at its
children's sum (``worst_case``). Pure: arrays in, findings out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.topology import L_FEED, L_NODE, L_RACK, L_UPS, LEVELS, Topology

F64 = NDArray[np.float64]
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One parent whose reading disagrees with its children's."""

    node: int  # global power-node index of the parent
    parent_w: float
    children_w: float  # what the children imply at the parent (losses and overhead included)

    def describe(self, topo: Topology) -> str:
        """One line naming both sides."""
        lv = LEVELS[int(topo.node_level[self.node])]
        below = LEVELS[int(topo.node_level[self.node]) + 1]
        return (f"{lv} {topo.node_id(self.node)} reads {self.parent_w / 1e3:,.1f} kW but its {below}s add up to "
                f"{self.children_w / 1e3:,.1f} kW")


class TreeCheck:
    """The parent-children comparison of one topology, with its index arrays built once."""

    def __init__(self, topo: Topology, *, share: float = 0.05, floor_w: float = 2_000.0, skew_s: float = 2.0) -> None:
        self.topo = topo
        self.share, self.floor_w = share, floor_w
        self.skew_ns = int(skew_s * NS_PER_S)
        off = topo.level_offset
        # children of levels feed..pdu: every node below the feed level up to the servers
        self.child = np.arange(int(off[L_FEED + 1]), int(off[L_NODE + 1]))
        self.parent = topo.node_parent[self.child].astype(np.int64)
        self.gain = np.ones(self.child.size)
        ups = topo.level_slice(L_UPS)
        is_ups = (self.child >= ups.start) & (self.child < ups.stop)
        self.gain[is_ups] = 1.0 / topo.node_efficiency[self.child[is_ups]]  # a feed carries UPS input
        self.static = np.zeros(topo.n_nodes)
        self.static[topo.level_slice(L_RACK)] = topo.rack_overhead_w  # a rack carries its overhead too
        self.n_children = np.bincount(self.parent, minlength=topo.n_nodes)

    def check(self, power_w: F64, ts_ns: NDArray[np.int64], now_ns: int, max_age_s: float) -> list[Mismatch]:
        """Parents that disagree with their children now (readings older than ``max_age_s`` are not compared)."""
        n = self.topo.n_nodes
        fresh = (ts_ns > 0) & np.isfinite(power_w) & ((now_ns - ts_ns) <= int(max_age_s * NS_PER_S))
        c_ok = fresh[self.child]
        ok_children = np.bincount(self.parent, weights=c_ok.astype(np.float64), minlength=n)
        implied = np.bincount(self.parent, weights=np.where(c_ok, power_w[self.child] * self.gain, 0.0),
                              minlength=n) + self.static
        # the children's readings must be close in time to the parent's (loads swing)
        far = np.abs(ts_ns[self.child] - ts_ns[self.parent]) > self.skew_ns
        any_far = np.bincount(self.parent, weights=far.astype(np.float64), minlength=n) > 0
        comparable = fresh & (self.n_children > 0) & (ok_children == self.n_children) & ~any_far
        big = np.maximum(np.abs(power_w), implied)
        bad = comparable & (np.abs(np.nan_to_num(power_w) - implied) > self.share * big + self.floor_w)
        return [Mismatch(int(k), float(power_w[k]), float(implied[k])) for k in np.flatnonzero(bad)]

    @staticmethod
    def worst_case(power_w: F64, mismatches: list[Mismatch]) -> None:
        """In place: a parent that reads lower than its children is taken at their sum."""
        for m in mismatches:
            if m.children_w > m.parent_w:
                power_w[m.node] = m.children_w
