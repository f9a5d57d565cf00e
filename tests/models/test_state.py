"""SiteState: series are routed to topology slots by their tags; the newest reading wins."""

from __future__ import annotations

import math

import numpy as np
import pytest

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


def test_pue_is_energy_over_a_minute_not_the_ratio_of_two_readings() -> None:
    """Facility power swings with the GPUs at 0.5 Hz and its meter is read every 2 s on a
    drifting phase; IT power is known every second. The ratio of the latest readings jumps
    (here by more than 0.2); energy over a minute gives the true 1.12 — from the
    register, which counts what the readings miss."""
    from models.state import PueWindow

    true_pue, s = 1.12, 10**9

    def it_w(t: float) -> float:
        return 3e6 * (1 + 0.25 * np.sin(np.pi * t))  # 0.5 Hz

    def register_wh(t: float) -> float:  # ∫ true_pue * it_w dt, in Wh
        return true_pue * 3e6 * (t + 0.25 * (1 - np.cos(np.pi * t)) / np.pi) / 3600

    w = PueWindow(window_s=60.0)
    ratios = []
    assert w.value() is None
    for k in range(181):  # one period a second for 3 minutes
        w.add_it(k * s, it_w(k))
        if k % 2 == 0:
            t_meter = k - (k % 7) / 7  # read up to a second before the period, drifting
            w.add_register(round(t_meter * s), register_wh(t_meter))
            ratios.append(true_pue * it_w(t_meter) / it_w(k))
        if k == 20:
            assert w.value() is None  # not half a window yet
    assert max(ratios) - min(ratios) > 0.2  # what the ratio of the latest readings shows
    assert w.value() == pytest.approx(true_pue, abs=2e-3)
    w.add_register(181 * s, 0.0)  # the meter reset: start over
    assert w.value() is None
    w.add_it(200 * s, it_w(200))  # 19 s without IT power: the integral restarts
    assert w.value() is None
