"""SiteState: series are routed to topology slots by their tags; the newest reading wins."""

from __future__ import annotations

import math

import numpy as np

from models.grid import DemandResponseEvent
from models.readings import Quality, ReadingBatch, SeriesRegistry
from models.state import SiteState
from models.topology import L_PDU, L_RACK, L_ROW, Topology


def test_routes_newest_wins_and_ignores_details(demo_topo: Topology) -> None:
    reg = SeriesRegistry()
    st = SiteState(demo_topo, reg)
    r03 = reg.id("power.power_w", level="rack", id="r03", site="demo-hall")
    row = reg.id("power.power_w", level="row", id="row-b1", site="demo-hall")
    pdu = reg.id("power.power_w", level="pdu", id="r02/pdu-b", site="demo-hall")
    phase = reg.id("power.power_w", level="rack", id="r03", phase="L1", site="demo-hall")
    ghost = reg.id("power.power_w", level="rack", id="r99", site="demo-hall")
    sup = reg.id("cooling.supply_c", loop="cdu-2", site="demo-hall")
    lim = reg.id("grid.limit_w", site="demo-hall")
    b = ReadingBatch.of(np.array([20, 10, 30, 5, 5, 5, 7, 7], np.int64),
                        [r03, r03, row, pdu, phase, ghost, sup, lim],
                        [500e3, 400e3, 1e6, 250e3, 1.0, 1.0, 31.5, 5.2e6], registry=reg)
    assert st.ingest(b) == 6
    assert st.node_power_w[demo_topo.index(L_RACK, "r03")] == 500e3  # ts 20 beats ts 10
    assert st.node_power_ts_ns[demo_topo.index(L_RACK, "r03")] == 20
    assert st.node_power_w[demo_topo.index(L_ROW, "row-b1")] == 1e6
    assert st.node_power_w[int(demo_topo.level_offset[L_PDU]) + 3] == 250e3
    assert st.loop("supply_c")[1] == 31.5 and math.isnan(st.loop("supply_c")[0])
    assert st.grid("limit_w") == (5.2e6, 7)
    # An older reading arriving late does not overwrite a newer one.
    st.ingest(ReadingBatch.of(15, [r03], [1.0], registry=reg))
    assert st.node_power_w[demo_topo.index(L_RACK, "r03")] == 500e3
    # Stale/uncertain and non-finite values never drive control.
    st.ingest(ReadingBatch.of(40, [r03, r03], [2.0, np.nan], np.array([Quality.STALE, 0], np.uint8),
                              registry=reg))
    assert st.node_power_w[demo_topo.index(L_RACK, "r03")] == 500e3
    age = st.age_s(st.node_power_ts_ns, 2 * 10**9)
    assert math.isinf(age[0]) and age[demo_topo.index(L_RACK, "r03")] > 1.9


def test_grid_signals_and_dr_events(demo_topo: Topology) -> None:
    reg = SeriesRegistry()
    st = SiteState(demo_topo, reg)
    st.ingest(ReadingBatch.of(1, [reg.id("grid.limit_w", site="s"), reg.id("grid.frequency_hz", site="s")],
                              [5.2e6, 50.01], registry=reg))
    st.add_dr_event(DemandResponseEvent("dr-1", 100, 200, 3.9e6))
    g = st.grid_signals(150)
    assert g.limit_w == 5.2e6 and g.frequency_hz == 50.01
    assert g.facility_limit_w() == 3.9e6
    assert st.grid_signals(250).events == ()
