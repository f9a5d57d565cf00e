"""Analytics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from powerplane.store.analytics import (
    downsample,
    dr_compliance,
    energy,
    energy_kwh,
    energy_kwh_by,
    headroom,
    level_summary,
    pue,
)

T0 = pd.Timestamp("2026-01-01T00:00:00Z")


def series(t_s: np.ndarray | list[float], v: np.ndarray | list[float]) -> pd.Series:
    idx = pd.DatetimeIndex(T0 + pd.to_timedelta(np.asarray(t_s, np.float64), unit="s"), name="time")
    return pd.Series(np.asarray(v, np.float64), index=idx)


def test_constant_power_for_an_hour_is_its_kwh() -> None:
    t = np.arange(0, 3601, 10.0)
    assert energy_kwh(series(t, np.full(t.size, 1000.0))) == pytest.approx(1.0, rel=1e-12)


def test_a_ramp_integrates_exactly_with_trapezoids() -> None:
    t = np.arange(0, 3601, 1.0)
    # ∫0..3600 t dt = 3600²/2 W·s = 6 480 000 W·s = 1.8 kWh
    assert energy_kwh(series(t, t)) == pytest.approx(1.8, rel=1e-12)


def test_no_integration_across_a_gap() -> None:
    t = np.concatenate([np.arange(0, 601, 10.0), np.arange(1200, 1801, 10.0)])
    e = energy(series(t, np.full(t.size, 1000.0)))
    # 600 s + 600 s integrated at 1 kW; the 600 s outage (60 × the 10 s median) is not.
    assert e.kwh == pytest.approx(1000 * 1200 / 3.6e6, rel=1e-12)
    assert (e.gaps, e.integrated_s, e.span_s) == (1, 1200.0, 1800.0)
    assert e.coverage == pytest.approx(2 / 3)
    # A 25 s hole in 10 s sampling is under 3 × median: bridged.
    t2 = np.array([0, 10, 20, 45, 55, 65.0])
    assert energy(series(t2, np.full(6, 3600.0))).kwh == pytest.approx(3600 * 65 / 3.6e6)


def test_nan_samples_are_ignored_and_short_series_are_zero() -> None:
    assert energy_kwh(series([0, 10, 20], [1000, np.nan, 1000])) == pytest.approx(1000 * 20 / 3.6e6)
    assert energy_kwh(series([0], [5.0])) == 0.0


def test_energy_per_entity_and_pue() -> None:
    t = np.arange(0, 3601, 60.0)
    frame = pd.concat([pd.DataFrame({"id": "r01", "value": 2000.0}, index=series(t, t).index),
                       pd.DataFrame({"id": "r02", "value": 500.0}, index=series(t, t).index)])
    assert energy_kwh_by(frame).to_dict() == pytest.approx({"r01": 2.0, "r02": 0.5})
    assert pue(series(t, np.full(t.size, 1300.0)), series(t, np.full(t.size, 1000.0))) == pytest.approx(1.3)
    assert np.isnan(pue(series(t, np.full(t.size, 1.0)), series(t, np.zeros(t.size))))


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


def test_dr_compliance() -> None:
    t = np.arange(0, 30, 1.0)
    fac = np.where((t >= 10) & (t < 15), 1000.0, 800.0)
    active = ((t >= 10) & (t < 20)).astype(float)
    target = np.where(active > 0, 900.0, 0.0)
    c = dr_compliance(series(t, fac), series(t, active), series(t, target))
    assert (c.active_s, c.over_s, c.max_excess_w) == (10.0, 5.0, 100.0)
    assert c.excess_kwh == pytest.approx(100 * 5 / 3.6e6)
    assert c.compliance == pytest.approx(0.5)
    none = dr_compliance(series(t, fac), series(t, np.zeros(t.size)), series(t, np.zeros(t.size)))
    assert (none.active_s, none.compliance) == (0.0, 1.0)


def test_downsample_per_tag() -> None:
    t = np.arange(0, 120, 10.0)
    idx = series(t, t).index
    frame = pd.concat([pd.DataFrame({"id": "a", "value": t}, index=idx),
                       pd.DataFrame({"id": "b", "value": 2 * t}, index=idx)])
    d = downsample(frame, "1min", by=("id",))
    assert d[d["id"] == "a"]["value"].tolist() == [25.0, 85.0]
    assert d[d["id"] == "b"]["value"].tolist() == [50.0, 170.0]
    assert downsample(frame[frame["id"] == "a"], "1min", "max")["value"].tolist() == [50.0, 110.0]
