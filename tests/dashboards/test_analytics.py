"""Analytics against values computed by hand: exact integrals, gaps, alignment, PUE, DR."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboards.analytics import (
    Spans,
    align,
    counter_energy_kwh,
    counter_trace,
    coverage,
    downsample,
    dr_compliance,
    energy,
    energy_kwh_by,
    headroom,
    integral,
    least_headroom,
    level_summary,
    min_headroom_w,
    peak_demand_kw,
    pue,
    trace,
)

T0 = pd.Timestamp("2026-01-01T00:00:00Z")
T0_NS = T0.value
S = 10**9


def series(t_s: np.ndarray | list[float], v: np.ndarray | list[float] | float) -> pd.Series:
    t = np.asarray(t_s, np.float64)
    idx = pd.DatetimeIndex(T0 + pd.to_timedelta(np.round(t * 1e9).astype(np.int64), unit="ns"), name="time")
    return pd.Series(np.broadcast_to(np.asarray(v, np.float64), t.shape).copy(), index=idx)


def win(a_s: float, b_s: float) -> tuple[int, int]:
    return T0_NS + round(a_s * S), T0_NS + round(b_s * S)


def test_constant_power_for_an_hour_is_its_kwh() -> None:
    t = np.arange(0, 3601, 10.0)
    e = energy(series(t, 1000.0))
    assert e.kwh == pytest.approx(1.0, rel=1e-12)
    assert (e.coverage.share, e.coverage.missing_s, e.coverage.interval_s) == (1.0, 0.0, 10.0)


def test_a_ramp_integrates_exactly_with_trapezoids() -> None:
    t = np.arange(0, 3601, 1.0)
    # ∫0..3600 t dt = 3600²/2 W·s = 6 480 000 W·s = 1.8 kWh
    assert energy(series(t, t)).kwh == pytest.approx(1.8, rel=1e-12)


def test_a_gap_longer_than_k_intervals_is_missing_and_reported() -> None:
    t = np.concatenate([np.arange(0, 601, 10.0), np.arange(1200, 1801, 10.0)])
    e = energy(series(t, 1000.0))
    # 600 s + 600 s integrated at 1 kW; the 600 s outage (60 × the 10 s interval) is not.
    assert e.kwh == pytest.approx(1000 * 1200 / 3.6e6, rel=1e-12)
    c = e.coverage
    assert (c.covered_s, c.window_s, c.missing_s) == (1200.0, 1800.0, 600.0)
    assert c.share == pytest.approx(2 / 3)
    assert c.gaps.start.tolist() == [600.0] and c.gaps.end.tolist() == [1200.0]


def test_a_gap_up_to_k_intervals_is_bridged_linearly() -> None:
    # A 30 s hole in 10 s sampling is exactly 3 × the interval: bridged, linearly.
    t = np.array([0, 10, 20, 50, 60, 70.0])
    v = np.array([0, 0, 0, 3000, 3000, 3000.0])
    e = energy(series(t, v))
    assert e.coverage.share == 1.0
    assert e.kwh == pytest.approx((0.5 * 3000 * 30 + 3000 * 20) / 3.6e6, rel=1e-12)
    # 31 s is not: that stretch is missing.
    t2 = np.array([0, 10, 20, 51, 61, 71.0])
    e2 = energy(series(t2, 3600.0))
    assert e2.coverage.missing_s == pytest.approx(31.0) and e2.kwh == pytest.approx(3600 * 40 / 3.6e6)
    # and the factor is a parameter
    assert energy(series(t2, 3600.0), gap_factor=4).coverage.missing_s == 0.0


def test_window_edges_interpolate_with_neighbours_and_hold_without() -> None:
    ramp = series(np.arange(0, 101, 10.0), np.arange(0, 101, 10.0))
    # Neighbours on both sides: ∫5..15 t dt = (15² - 5²) / 2 = 100 W·s, exactly.
    a, b = win(5, 15)
    tr = trace(ramp, a, b)
    assert integral(tr, tr.known) == pytest.approx(100.0, rel=1e-12)
    # No sample before 0 or after 100: within 3 intervals of an edge, the nearest sample holds.
    a, b = win(-20, 125)
    tr = trace(ramp, a, b)
    assert coverage(tr).share == 1.0
    assert integral(tr, tr.known) == pytest.approx(0 * 20 + 100**2 / 2 + 100 * 25, rel=1e-12)
    # Further than that, the edge is missing.
    a, b = win(-40, 100)
    tr = trace(ramp, a, b)
    assert coverage(tr).missing_s == pytest.approx(40.0) and tr.known.start.tolist() == [40.0]


def test_nan_samples_are_ignored_and_short_series_cover_nothing() -> None:
    assert energy(series([0, 10, 20], [1000, np.nan, 1000])).kwh == pytest.approx(1000 * 20 / 3.6e6)
    one = energy(series([0], [5.0]), *win(0, 10))
    assert one.kwh == 0.0 and one.coverage.covered_s == 0.0


def test_pue_integrates_facility_and_it_over_the_same_spans() -> None:
    # IT: a 1 s ramp from 1000 W, phase-shifted by 0.3 s, missing from 100 to 200 s.
    # Facility: 1.25 × IT + 100 W, sampled every 2 s from 0.5 s, complete. Window: 0.5..298.5 s.
    a, b = win(0.5, 298.5)
    t_it = np.concatenate([np.arange(0.3, 100, 1.0), np.arange(200.3, 300, 1.0)])
    t_fac = np.arange(0.5, 300, 2.0)

    def it_w(t: np.ndarray) -> np.ndarray:
        return 1000.0 + 2.0 * t

    fac = trace(series(t_fac, 1.25 * it_w(t_fac) + 100.0), a, b)
    it = trace(series(t_it, it_w(t_it)), a, b)
    p = pue(fac, it)
    both = fac.known & it.known  # seconds from the window start
    assert both.start.tolist() == pytest.approx([0.0, 199.8]) and both.end.tolist() == pytest.approx([98.8, 298.0])

    def f(lo: float, hi: float) -> float:  # ∫ 1000 + 2t dt
        return 1000 * (hi - lo) + (hi**2 - lo**2)

    it_ws = f(0.5, 99.3) + f(200.3, 298.5)
    fac_ws = 1.25 * it_ws + 100 * p.basis_s
    assert p.basis_s == pytest.approx(98.8 + 98.2)
    assert p.it_kwh == pytest.approx(it_ws / 3.6e6, rel=1e-9)
    assert p.facility_kwh == pytest.approx(fac_ws / 3.6e6, rel=1e-9)
    assert p.value == pytest.approx(fac_ws / it_ws, rel=1e-9)
    # Facility energy over its own coverage would have given a PUE half again as high.
    assert integral(fac, fac.known) / (p.it_kwh * 3.6e6) > 1.5 * p.value
    assert np.isnan(pue(fac, trace(series(t_it, 0.0), a, b)).value)


def test_least_headroom_is_aligned_not_a_sawtooth() -> None:
    # Two racks with limits 100 kW, at 60 and 90 kW, polled 1 s apart every 2 s: combined
    # point by point, the least headroom would alternate between 40 and 10 kW.
    ta, tb = np.arange(0, 60, 2.0), np.arange(1, 61, 2.0)
    frame = pd.concat([pd.DataFrame({"id": "a", "value": 60e3}, index=series(ta, 0).index),
                       pd.DataFrame({"id": "b", "value": 90e3}, index=series(tb, 0).index)])
    room = least_headroom(frame, pd.Series({"a": 100e3, "b": 100e3}), *win(0, 60))
    assert len(room) == 30 and (room == 10e3).all()


def test_align_puts_every_trace_on_one_grid_with_gaps_as_nan() -> None:
    a, b = win(0, 20)
    fac = trace(series(np.arange(0, 21, 2.0), np.arange(0, 21, 2.0)), a, b)
    lim = trace(series([0, 10.0, 20], [5.0, 7.0, 7.0]), a, b, hold=True)
    gap = trace(series([0, 1, 2, 3, 10, 11, 12, 13.0], 1.0), a, b)
    g = align({"fac": fac, "lim": lim, "gap": gap}, a, step_s=1.0)
    assert len(g) == 20 and g.index[1] - g.index[0] == pd.Timedelta(1, "s")
    assert g["fac"].tolist() == list(np.arange(0, 20.0))
    assert g["lim"].tolist() == [5.0] * 10 + [7.0] * 10
    # 3..10 s and 13..20 s are 7 s without a sample, over 3 × the 1 s interval: missing.
    assert g["gap"].isna().tolist() == [False] * 4 + [True] * 6 + [False] * 4 + [True] * 6


def test_min_headroom_against_a_stepped_limit_is_exact() -> None:
    a, b = win(0, 40)
    power = trace(series(np.arange(0, 41, 10.0), [50, 80, 60, 60, 95.0]), a, b)
    limit = trace(series([0, 15, 30.0], [100, 70, 100.0]), a, b, hold=True)
    # 15 s: the limit drops to 70 while power, between 80 (10 s) and 60 (20 s), is at 70.
    assert min_headroom_w(power, limit) == pytest.approx(0.0)
    limit2 = trace(series([0, 15, 30.0], [100, 90, 100.0]), a, b, hold=True)
    assert min_headroom_w(power, limit2) == pytest.approx(5.0)  # 100 - 95 at 40 s


def test_spans_algebra() -> None:
    x = Spans(np.array([0.0, 10.0]), np.array([5.0, 20.0]))
    y = Spans(np.array([3.0]), np.array([12.0]))
    z = x & y
    assert (z.start.tolist(), z.end.tolist(), z.total_s) == ([3.0, 10.0], [5.0, 12.0], 4.0)
    c = x.complement(0.0, 30.0)
    assert (c.start.tolist(), c.end.tolist()) == ([5.0, 20.0], [10.0, 30.0])
    assert x.contains(np.array([-1, 0, 7, 20, 21.0])).tolist() == [False, True, False, True, False]


# ---- demand response ---------------------------------------------------------------------------
def _dr_signals(t_end: float, on: tuple[float, float], target_w: float, every_s: float = 1.0
                ) -> tuple[pd.Series, pd.Series]:
    t = np.arange(0, t_end, every_s)
    active = ((t >= on[0]) & (t < on[1])).astype(float)
    return series(t, active), series(t, np.where(active > 0, target_w, 0.0))


def test_dr_compliance_is_exact_on_linear_pieces() -> None:
    a, b = win(0, 60)
    act, tgt = _dr_signals(61, (10, 40), 900.0)
    # Facility: 800 W, ramps to 1000 W over 20..30 s, back to 800 W at 40 s; sampled every 2 s.
    t = np.arange(0, 61, 2.0)
    f = np.interp(t, [0, 20, 30, 40, 60], [800, 800, 1000, 800, 800])
    c = dr_compliance(trace(series(t, f), a, b), trace(act, a, b, hold=True), trace(tgt, a, b, hold=True))
    # Over 900 W from 25 to 35 s (10 s); the excess is a triangle of 100 W × 10 s / 2.
    assert (c.events, c.active_s, c.unknown_s, c.status) == (1, 30.0, 0.0, "exceeded")
    assert c.over_s == pytest.approx(10.0) and c.compliant_s == pytest.approx(20.0)
    assert c.max_excess_w == pytest.approx(100.0)
    assert c.excess_kwh == pytest.approx(500.0 / 3.6e6)
    assert c.compliance == pytest.approx(20 / 30)


def test_dr_time_in_a_gap_is_unknown_not_compliant() -> None:
    a, b = win(0, 60)
    act, tgt = _dr_signals(61, (10, 40), 900.0)
    t = np.concatenate([np.arange(0, 21, 2.0), np.arange(30, 61, 2.0)])  # site meter silent 20..30 s
    c = dr_compliance(trace(series(t, 850.0), a, b), trace(act, a, b, hold=True), trace(tgt, a, b, hold=True))
    assert (c.active_s, c.compliant_s, c.unknown_s, c.over_s) == (30.0, 20.0, 10.0, 0.0)
    assert c.compliance == pytest.approx(2 / 3) and c.status == "unknown"


def test_dr_signal_lost_inside_an_event_counts_as_unknown() -> None:
    a, b = win(0, 60)
    act, tgt = _dr_signals(61, (10, 40), 900.0)
    keep = ~((act.index >= T0 + pd.Timedelta(20, "s")) & (act.index < T0 + pd.Timedelta(30, "s")))
    c = dr_compliance(trace(series(np.arange(0, 61, 2.0), 850.0), a, b), trace(act[keep], a, b, hold=True),
                      trace(tgt[keep], a, b, hold=True))
    # The controller wrote no DR state from 20 to 30 s (it held 19 s until 30 s: 19..30 is an 11 s gap).
    assert c.events == 1 and c.active_s == pytest.approx(30.0)
    assert c.unknown_s == pytest.approx(11.0) and c.compliant_s == pytest.approx(19.0)
    assert c.signal_missing_s == 0.0


def test_no_dr_event_is_no_event_not_full_compliance() -> None:
    a, b = win(0, 60)
    t = np.arange(0, 61, 1.0)
    c = dr_compliance(trace(series(t, 850.0), a, b), trace(series(t, 0.0), a, b, hold=True),
                      trace(series(t, 0.0), a, b, hold=True))
    assert (c.events, c.active_s, c.compliance, c.status) == (0, 0.0, None, "no event")


def test_two_dr_events_are_counted() -> None:
    a, b = win(0, 100)
    t = np.arange(0, 101, 1.0)
    on = (((t >= 10) & (t < 20)) | ((t >= 50) & (t < 70))).astype(float)
    c = dr_compliance(trace(series(t, 850.0), a, b), trace(series(t, on), a, b, hold=True),
                      trace(series(t, 900 * on), a, b, hold=True))
    assert (c.events, c.active_s, c.compliance, c.status) == (2, 30.0, 1.0, "compliant")


# ---- per entity ------------------------------------------------------------------------------
def test_energy_per_entity() -> None:
    t = np.arange(0, 3601, 60.0)
    idx = series(t, t).index
    frame = pd.concat([pd.DataFrame({"id": "r01", "value": 2000.0}, index=idx),
                       pd.DataFrame({"id": "r02", "value": 500.0}, index=idx)])
    assert energy_kwh_by(frame).to_dict() == pytest.approx({"r01": 2.0, "r02": 0.5})


def test_headroom_and_level_summary() -> None:
    idx = series([0, 1, 2], [0, 0, 0]).index
    frame = pd.concat([pd.DataFrame({"id": "a", "value": [10.0, 80.0, 30.0]}, index=idx),
                       pd.DataFrame({"id": "b", "value": [50.0, 60.0, 95.0]}, index=idx)])
    h = headroom(frame, pd.Series({"a": 100.0, "b": 100.0}))
    assert h.loc["a"].to_dict() == {"peak_w": 80.0, "mean_w": 40.0, "limit_w": 100.0, "min_headroom_w": 20.0,
                                    "peak_pct": 80.0}
    assert h.loc["b", "min_headroom_w"] == pytest.approx(5.0)
    s = level_summary(frame, pd.Series({"a": 100.0, "b": 100.0}))
    assert s.to_dict() == {"entities": 2, "peak_w": 95.0, "min_headroom_w": pytest.approx(5.0), "tightest": "b"}


def test_downsample_per_tag() -> None:
    t = np.arange(0, 120, 10.0)
    idx = series(t, t).index
    frame = pd.concat([pd.DataFrame({"id": "a", "value": t}, index=idx),
                       pd.DataFrame({"id": "b", "value": 2 * t}, index=idx)])
    d = downsample(frame, "1min", by=("id",))
    assert d[d["id"] == "a"]["value"].tolist() == [25.0, 85.0]
    assert d[d["id"] == "b"]["value"].tolist() == [50.0, 170.0]
    assert downsample(frame[frame["id"] == "a"], "1min", "max")["value"].tolist() == [50.0, 110.0]


def test_an_energy_register_covers_its_own_gaps_but_not_past_its_last_reading() -> None:
    """A 1 MW meter's register (Wh) read every 2 s, silent for 60 s in the middle, reset once,
    and last read 5 s before the window ends (within the 3 intervals
    a power series would hold): the silence is covered exactly by the register's
    difference, the reset is missing, and so are the 5 s after the last reading — holding the
    register there would count them as covered at zero power (a takeover demo read -4 %)."""
    t = np.concatenate([np.arange(0, 101, 2.0), np.arange(160, 301, 2.0), np.arange(302, 391, 2.0)])
    wh = t * 1e6 / 3600
    wh[t >= 302] -= wh[t == 302][0]  # the meter reset between 300 s and 302 s
    reg = counter_trace(series(t, wh), *win(0, 395))
    assert reg.known.start.tolist() == [0.0, 302.0] and reg.known.end.tolist() == [300.0, 390.0]
    assert counter_energy_kwh(reg, reg.known) == pytest.approx(1e3 * (300 + 88) / 3600, rel=1e-9)
    assert coverage(reg).missing_s == pytest.approx(7.0)  # the reset's 2 s and the last 5 s
    kw, at = peak_demand_kw(reg, 60.0)  # whole minutes the register covers: all read 1 MW
    assert kw == pytest.approx(1e3, rel=1e-9) and at in (0.0, 60.0, 120.0, 180.0, 240.0)
