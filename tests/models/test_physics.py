"""Physics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from models.physics import (
    COOLANTS,
    OverheadModel,
    flow_for_heat_lpm,
    heat_removed_w,
    line_current_a,
    loop_capacity_w,
)

WATER = COOLANTS["water"]


def test_600kw_rack_flow_matches_the_design_brief() -> None:
    # Q = m_dot cp dT  ->  m_dot = 600e3 / (4186 * 10) = 14.33 kg/s ~ 862 L/min at 0.997 kg/L.
    lpm = flow_for_heat_lpm(600e3, 10.0, WATER)
    assert lpm == pytest.approx(600e3 / (4186 * 10) / 0.997 * 60, rel=1e-12)
    assert 855 < lpm < 870


def test_heat_removed_is_mass_flow_times_cp_times_dt() -> None:
    q = heat_removed_w(3200.0, 30.0, 45.0, WATER)
    assert q == pytest.approx(3200 / 60 * 0.997 * 4186 * 15)


def test_loop_capacity_falls_with_flow_and_supply_temperature() -> None:
    full = loop_capacity_w(3200, 30, 45, WATER, hx_rated_w=1e9)
    half_flow = loop_capacity_w(1600, 30, 45, WATER, hx_rated_w=1e9)
    warm = loop_capacity_w(3200, 38, 45, WATER, hx_rated_w=1e9)
    assert half_flow == pytest.approx(full / 2)
    assert warm == pytest.approx(full * 7 / 15)
    assert loop_capacity_w(3200, 30, 45, WATER, hx_rated_w=2.4e6) == 2.4e6
    assert loop_capacity_w(0, 30, 45, WATER, 2.4e6) == 0.0
    assert loop_capacity_w(3200, 50, 45, WATER, 2.4e6) == 0.0


def test_pg25_carries_less_heat_than_water() -> None:
    pg = loop_capacity_w(3200, 30, 45, COOLANTS["pg25"], 1e9)
    w = loop_capacity_w(3200, 30, 45, WATER, 1e9)
    assert pg == pytest.approx(w * (3930 * 1.020) / (4186 * 0.997))


def test_overhead_pue_and_budget_inversion() -> None:
    m = OverheadModel(fixed_w=120e3, linear=0.06, quadratic=0.04, it_rated_w=4.8e6)
    it = 4.0e6
    overhead = 120e3 + 0.06 * it + 0.04 * it * it / 4.8e6
    assert m.overhead_w(it) == pytest.approx(overhead)
    assert m.pue(it) == pytest.approx((it + overhead) / it)
    assert math.isinf(m.pue(0))
    for limit in (1e5, 3.9e6, 5.2e6, 50e6):
        budget = m.it_budget_w(limit)
        assert m.facility_w(budget) == pytest.approx(limit, rel=1e-12) or budget == 0.0
    assert m.it_budget_w(100e3) == 0.0  # below the fixed overhead nothing is left for IT
    linear = OverheadModel(100.0, 0.25, 0.0, 1.0)
    assert linear.it_budget_w(1100.0) == pytest.approx(800.0)


def test_three_phase_current() -> None:
    # The design brief: 600 kW at 415 V, PF 0.95 -> ~880 A.
    assert line_current_a(600e3, 415.0, 0.95) == pytest.approx(878.6, abs=0.1)
