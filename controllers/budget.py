"""Site budget and cooling capacity for one control period, read from the site state.

Facility power at the interconnect may not exceed the grid limit, nor any demand-response
target that is in force or about to be (``lead_s`` before its start, so that the caps are
down when it starts). The IT budget is what remains after the facility overhead that the
IT load itself causes: ``OverheadModel.it_budget_w`` inverts ``IT + overhead(IT) = limit``.

Loop capacity is read from the CDU (``cooling.capacity_w``) or, failing that, computed from
flow and supply temperature; stale or missing, the last known value (the design capacity
before anything is known). A falling capacity is extrapolated over the look-ahead (the
period plus the measured actuation lag), because a pump failure takes seconds to show fully
while the caps must hold until they have taken: linearly over one period, beyond that as a
first-order decay (``FALL_TAU_S``), so a long lag does not project every loop to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.clock import NS_PER_S
from models.physics import OverheadModel, loop_capacity_w_array
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_RACK, Topology

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Budget:
    """The site's budget for one period."""

    facility_w: float  # facility power allowed at the interconnect
    it_w: float  # IT power allowed after overhead and margin
    reason: str  # what sets it: "interconnect limit" or "demand response <id>"
    dr_target_w: float  # nan if no event is in force


def overhead_model(site: SiteConfig, topo: Topology) -> OverheadModel:
    """The site's overhead curve, rated at the sum of rack limits (as the twin rates it)."""
    f = site.facility
    return OverheadModel(f.overhead_fixed_kw * 1e3, f.overhead_linear, f.overhead_quadratic,
                         float(topo.node_limit_w[topo.level_slice(L_RACK)].sum()))


def site_budget(site: SiteConfig, state: SiteState, overhead: OverheadModel, now_ns: int, *,
                margin: float, lead_s: float, stale_after_s: float) -> Budget:
    """Facility and IT budget now."""
    limit, ts = state.grid("limit_w")
    fresh = ts > 0 and (now_ns - ts) / NS_PER_S <= stale_after_s and math.isfinite(limit) and limit > 0
    facility = limit if fresh else site.site.interconnect_limit_kw * 1e3
    reason = "interconnect limit"
    dr = math.nan
    lead_ns = int(lead_s * NS_PER_S)
    for ev in state.dr_events.values():
        if ev.start_ns - lead_ns <= now_ns < ev.end_ns and ev.target_w < facility:
            facility, reason, dr = ev.target_w, f"demand response {ev.id}", ev.target_w
    active, ts_a = state.grid("dr_active")
    target, ts_t = state.grid("dr_target_w")
    if active >= 0.5 and ts_t > 0 and (now_ns - ts_a) / NS_PER_S <= stale_after_s and 0 < target < facility:
        facility, reason, dr = target, "demand response (grid signal)", target
    return Budget(facility, overhead.it_budget_w(facility * (1.0 - margin)), reason, dr)


FALL_TAU_S = 3.0  # a failing pump's flow settles over seconds (the twin's spin-down, real pumps alike)


class LoopCapacity:
    """Loop heat capacity from telemetry, with trend look-ahead."""

    def __init__(self, topo: Topology, period_s: float = 1.0) -> None:
        self.topo = topo
        self.period_s = period_s
        t = topo
        self.design_w = loop_capacity_w_array(t.loop_flow_lpm, t.loop_supply_c, t.loop_max_return_c,
                                          t.loop_cp_j_per_kg_k, t.loop_density_kg_per_l, t.loop_hx_rated_w)
        self.last_w = self.design_w.copy()
        self._prev_w = np.full(t.n_loops, np.nan)
        self._prev_ns = 0
        self.stale = np.zeros(t.n_loops, bool)

    def estimate(self, state: SiteState, now_ns: int, *, stale_after_s: float, lookahead_s: float) -> F64:
        """Capacity each loop can be relied on to have until the next period."""
        t = self.topo

        def fresh(field: str) -> NDArray[np.bool_]:
            ts = state.loop_ts_ns(field)
            return (ts > 0) & ((now_ns - ts) / NS_PER_S <= stale_after_s) & np.isfinite(state.loop(field))

        cap = np.full(t.n_loops, np.inf)
        f_cap = fresh("capacity_w")
        cap = np.where(f_cap, state.loop("capacity_w"), cap)
        f_flow = fresh("flow_lpm") & fresh("supply_c")
        computed = loop_capacity_w_array(np.nan_to_num(state.loop("flow_lpm")), np.nan_to_num(state.loop("supply_c")),
                                     t.loop_max_return_c, t.loop_cp_j_per_kg_k, t.loop_density_kg_per_l,
                                     t.loop_hx_rated_w)
        cap = np.where(f_flow, np.minimum(cap, computed), cap)
        known = f_cap | f_flow
        self.stale = ~known
        # Stale: never more than what was last planned, nor than the latest reading however
        # old it is (a pump that tripped before the CDU went quiet stays tripped). A stale
        # loop's capacity can fall but never rise.
        seen_cap = (state.loop_ts_ns("capacity_w") > 0) & np.isfinite(state.loop("capacity_w"))
        seen_flow = (state.loop_ts_ns("flow_lpm") > 0) & (state.loop_ts_ns("supply_c") > 0) & \
            np.isfinite(state.loop("flow_lpm")) & np.isfinite(state.loop("supply_c"))
        latest = np.fmin(np.where(seen_cap, state.loop("capacity_w"), np.inf), np.where(seen_flow, computed, np.inf))
        cap = np.where(known, cap, np.fmin(self.last_w, latest))
        self.last_w = cap.copy()
        out = cap
        if self._prev_ns and now_ns > self._prev_ns:
            dt = (now_ns - self._prev_ns) / NS_PER_S
            slope = (cap - self._prev_w) / dt
            # A fall (a pump spinning down) slows as it settles: over a look-ahead longer than a
            # period it is projected as a first-order decay with time constant FALL_TAU_S, never
            # less than one period of the current slope.
            span = max(min(lookahead_s, self.period_s), FALL_TAU_S * (1.0 - math.exp(-lookahead_s / FALL_TAU_S)))
            out = np.where(slope < 0, np.maximum(cap + slope * span, 0.0), cap)
        self._prev_w, self._prev_ns = cap, now_ns
        return np.asarray(out, np.float64)
