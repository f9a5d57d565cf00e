"""Safety rules, demand prediction and the site budget."""

from __future__ import annotations

import numpy as np
import pytest

from controllers import safety
from controllers.budget import overhead_model, site_budget
from controllers.demand import DemandEstimator
from models.grid import DemandResponseEvent
from models.readings import ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import Topology

S = 1_000_000_000


def test_caps_fall_at_once_and_rise_under_the_ramp() -> None:
    prev = np.array([500.0, 500.0, np.nan])
    new = np.array([300.0, 800.0, 800.0])
    np.testing.assert_allclose(safety.ramp(prev, new, 2.0, 50.0), [300.0, 600.0, 800.0])


def test_hysteresis_caps_holds_at_target_and_releases_below_release() -> None:
    h = safety.Hysteresis(1, 1.0, 0.97, 0.92)
    lim = np.array([100.0])
    assert h.update(np.array([95.0]), lim)[0] == 1.0  # under the cap threshold: not capping
    assert h.update(np.array([101.0]), lim)[0] == 0.97  # over: capping, hold at target
    assert h.update(np.array([95.0]), lim)[0] == 0.97  # between release and cap: still capping
    assert h.update(np.array([91.0]), lim)[0] == 1.0  # below release: released
    with pytest.raises(ValueError):
        safety.Hysteresis(1, 0.9, 0.95, 0.5)


def test_accounting_rules() -> None:
    floor, ceiling = np.full(5, 200.0), np.full(5, 700.0)
    draw = np.array([400.0, 600.0, 450.0, np.nan, 300.0])
    enforced = np.array([600.0, 600.0, 400.0, 500.0, np.nan])
    stale = np.array([False, False, False, False, True])
    demand = np.array([420.0, 600.0, 450.0, 500.0, 300.0])
    a = safety.account(demand, draw, stale, enforced, floor, ceiling)
    # 0: under its cap -> its predicted demand. 1: at its cap -> throttled, wants its ceiling.
    # 2: over its cap -> fixed at the measured draw, flagged. 3: no reading -> stale at its cap.
    # 4: stale and never capped -> accounted at its ceiling.
    assert list(a.throttled) == [False, True, False, False, False]
    assert list(a.overdraw) == [False, False, True, False, False]
    assert list(a.stale) == [False, False, False, True, True]
    np.testing.assert_allclose(a.demand_w, [420.0, 700.0, 450.0, 500.0, 700.0])
    np.testing.assert_allclose(a.floor_w, [200.0, 200.0, 450.0, 200.0, 200.0])
    np.testing.assert_allclose(a.ceiling_w, [700.0, 700.0, 450.0, 500.0, 700.0])


def test_demand_is_ewma_or_recent_peak_and_goes_stale() -> None:
    est = DemandEstimator(2, ewma_s=5.0, peak_s=3.0, period_s=1.0, stale_after_s=2.5)
    ts = np.array([1 * S, 1 * S])
    d, stale = est.update(np.array([300.0, 500.0]), ts, 1 * S)
    np.testing.assert_allclose(d, [300.0, 500.0])
    d, stale = est.update(np.array([600.0, 500.0]), ts + S, 2 * S)
    assert d[0] == 600.0  # the peak leads the average
    for k in range(2, 6):
        d, stale = est.update(np.array([300.0, np.nan]), ts + k * S, (k + 1) * S)
    assert 300.0 < d[0] < 600.0  # the peak left the 3 s window; the average still remembers it
    assert list(stale) == [False, True]


def test_budget_from_limit_and_dr_with_lead(demo_site: SiteConfig, demo_topo: Topology) -> None:
    reg = SeriesRegistry()
    state = SiteState(demo_topo, reg)
    oh = overhead_model(demo_site, demo_topo)
    b = site_budget(demo_site, state, oh, 100 * S, margin=0.0, lead_s=10.0, stale_after_s=3.0)
    assert b.facility_w == 5_200_000.0 and b.reason == "interconnect limit"
    assert oh.facility_w(b.it_w) == pytest.approx(5_200_000.0)
    state.add_dr_event(DemandResponseEvent("dr", 200 * S, 300 * S, 3_900_000.0))
    assert site_budget(demo_site, state, oh, 185 * S, margin=0.0, lead_s=10.0, stale_after_s=3.0).facility_w \
        == 5_200_000.0
    b = site_budget(demo_site, state, oh, 191 * S, margin=0.02, lead_s=10.0, stale_after_s=3.0)
    assert b.facility_w == 3_900_000.0 and b.reason == "demand response dr"
    assert oh.facility_w(b.it_w) == pytest.approx(3_900_000.0 * 0.98)
    # A fresh grid limit below the configured one takes over.
    state.ingest(ReadingBatch.of(400 * S, [reg.id("grid.limit_w", site="demo-hall")], [4_000_000.0], registry=reg))
    assert site_budget(demo_site, state, oh, 401 * S, margin=0.0, lead_s=10.0, stale_after_s=3.0).facility_w \
        == 4_000_000.0
    assert site_budget(demo_site, state, oh, 410 * S, margin=0.0, lead_s=10.0, stale_after_s=3.0).facility_w \
        == 5_200_000.0  # stale: back to the contract
