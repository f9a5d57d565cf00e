"""The twin feed speaks the SiteState convention: what it emits, the state can route."""

from __future__ import annotations

import numpy as np

from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_NODE, L_RACK, Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim


def test_whole_site_batch_routes_into_state(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = TwinSim(demo_site, demo_topo, seed=1)
    sim.step(20)
    reg = SeriesRegistry()
    feed = TwinFeed(sim, demo_site.site.name, registry=reg)
    batch = feed.batch()
    state = SiteState(demo_topo, reg)
    assert state.ingest(batch) == len(batch)
    np.testing.assert_allclose(state.node_power_w, sim.node_power_w)
    np.testing.assert_allclose(state.loop("heat_w"), sim.loop_heat_w)
    assert state.site("it_w")[0] == sim.it_w
    assert state.grid("limit_w")[0] == sim.limit_w
    assert (state.node_power_ts_ns == sim.now_ns).all()


def test_node_feed_is_server_level_only(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = TwinSim(demo_site, demo_topo, seed=1)
    reg = SeriesRegistry()
    batch = TwinFeed.nodes(sim, demo_site.site.name, reg).batch()
    assert len(batch) == demo_topo.count(L_NODE)
    state = SiteState(demo_topo, reg)
    state.ingest(batch)
    assert state.server_power_known()
    assert np.isnan(state.node_power_w[demo_topo.level_slice(L_RACK)]).all()
