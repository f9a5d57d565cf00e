"""End-to-end properties of the control loop under arbitrary telemetry (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers.loop import ControlLoop
from models.readings import ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_NODE, Topology

S = 1_000_000_000
T0 = 1_700_000_000 * S


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), limit_kw=st.floats(1500, 6000), loop_share=st.floats(0.3, 1.2),
       nan_share=st.floats(0, 0.5), stale_share=st.floats(0, 0.5), hot=st.floats(0.3, 1.1))
def test_plans_are_safe_whatever_the_telemetry(demo_site: SiteConfig, demo_topo: Topology, seed: int,
                                               limit_kw: float, loop_share: float, nan_share: float,
                                               stale_share: float, hot: float) -> None:
    rng = np.random.default_rng(seed)
    topo = demo_topo
    reg = SeriesRegistry()
    state = SiteState(topo, reg)
    loop = ControlLoop(demo_site, topo, state, registry=reg)
    servers = topo.ids(L_NODE)
    node_sid = np.array([reg.id("power.power_w", site="s", level="node", id=i) for i in servers], np.int32)
    cap_sid = np.array([reg.id("cooling.capacity_w", site="s", loop=lid) for lid in topo.loop_ids], np.int32)
    lim_sid = reg.id("grid.limit_w", site="s")
    n = len(servers)
    prev = None
    for k in range(4):
        now = T0 + k * S
        per_gpu = rng.uniform(100, 900 * hot, n)
        server_w = (per_gpu * 4 + 350) / 0.97
        server_w[rng.random(n) < nan_share] = np.nan
        ts = np.where(rng.random(n) < stale_share, now - 30 * S, now)
        state.ingest(ReadingBatch(ts.astype(np.int64), node_sid, server_w, np.zeros(n, np.uint8), reg))
        state.ingest(ReadingBatch.of(now, np.append(cap_sid, lim_sid),
                                     np.append(np.full(topo.n_loops, 2.4e6 * loop_share), limit_kw * 1e3),
                                     registry=reg))
        plan = loop.step(now)
        assert np.all(plan.caps_w >= topo.gpu_min_w - 1e-9) and np.all(plan.caps_w <= topo.gpu_max_w + 1e-9)
        if not plan.infeasible:
            assert plan.violations(topo) == []
        if prev is not None:  # caps rise no faster than the ramp
            assert np.all(plan.caps_w <= prev + demo_site.controller.ramp_w_per_s * 1.0 + 1e-9)
        prev = plan.caps_w
