"""Power-tree consistency against the twin's own physics: agreement when every meter is right,
a named mismatch when one reads wrong, and the parent taken at the larger side."""

from __future__ import annotations

import numpy as np

from controllers.consistency import TreeCheck
from models.clock import NS_PER_S
from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_FEED, L_UPS, Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim


def state_of(site: SiteConfig, topo: Topology) -> tuple[SiteState, TwinSim]:
    reg = SeriesRegistry()
    sim = TwinSim(site, topo, seed=3)
    sim.step(50)
    st = SiteState(topo, reg)
    st.ingest(TwinFeed(sim, site.site.name, registry=reg).batch())
    return st, sim


def test_the_twins_meters_agree_at_every_level(demo_site: SiteConfig, demo_topo: Topology) -> None:
    st, sim = state_of(demo_site, demo_topo)
    assert np.isfinite(st.node_power_w).all()
    assert TreeCheck(demo_topo).check(st.node_power_w, st.node_power_ts_ns, sim.now_ns, 30.0) == []


def test_a_ups_reading_zero_under_load_is_suspect_and_taken_at_its_halls(demo_site: SiteConfig,
                                                                         demo_topo: Topology) -> None:
    st, sim = state_of(demo_site, demo_topo)
    ups = demo_topo.level_slice(L_UPS).start
    true_w = float(st.node_power_w[ups])
    st.values[ups] = 0.0  # an APC Smart-UPS's upsOutputPower under load
    tc = TreeCheck(demo_topo)
    found = tc.check(st.node_power_w, st.node_power_ts_ns, sim.now_ns, 30.0)
    nodes = {m.node for m in found}
    feed = demo_topo.level_slice(L_FEED).start
    assert ups in nodes and feed in nodes  # the UPS against its halls, the feed against its UPSes' input
    m = next(m for m in found if m.node == ups)
    assert m.parent_w == 0.0 and abs(m.children_w - true_w) < 1e-6 * true_w
    assert "reads 0.0 kW but its halls add up to" in m.describe(demo_topo)
    tc.worst_case(st.values, found)
    assert st.node_power_w[ups] == m.children_w  # planned on the larger side


def test_readings_far_apart_in_time_are_not_compared(demo_site: SiteConfig, demo_topo: Topology) -> None:
    st, sim = state_of(demo_site, demo_topo)
    ups = demo_topo.level_slice(L_UPS).start
    st.values[ups] = 0.0
    st.ts_ns[ups] -= 10 * NS_PER_S  # polled 10 s before its halls: loads swing, no verdict
    found = TreeCheck(demo_topo, skew_s=2.0).check(st.node_power_w, st.node_power_ts_ns, sim.now_ns, 30.0)
    assert ups not in {m.node for m in found}
