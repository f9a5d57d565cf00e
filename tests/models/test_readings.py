"""Reading schema: metrics, series, columnar batches and range checks."""

from __future__ import annotations

import numpy as np
import pytest

from models.readings import (
    Quality,
    ReadingBatch,
    Reason,
    SeriesRegistry,
    check_ranges,
    metric,
    metrics,
)


def test_every_metric_has_unit_and_sane_range() -> None:
    for name, m in metrics().items():
        assert name == f"{m.measurement}.{m.field}"
        assert m.unit and m.lo < m.hi


def test_rack_power_range_is_relative_to_rating() -> None:
    reg = SeriesRegistry()
    rack = reg.id("power.power_w", rating=600e3, site="s", level="rack", id="r01")
    flow = reg.id("cooling.flow_lpm", site="s", loop="cdu-1")
    temp = reg.id("cooling.supply_c", site="s", loop="cdu-1")
    assert reg.id("power.power_w", rating=600e3, level="rack", id="r01", site="s") == rack  # tags sorted
    values = [450e3, 6e6, 720e3, 720_001.0, np.nan, -3.0, 30.5, np.inf]
    series = [rack, rack, rack, rack, rack, flow, temp, temp]
    b = ReadingBatch.of(1_000, series, values, registry=reg)
    r = check_ranges(b)
    assert list(r) == [Reason.OK, Reason.ABOVE_RANGE, Reason.OK, Reason.ABOVE_RANGE,
                       Reason.NOT_FINITE, Reason.BELOW_RANGE, Reason.OK, Reason.NOT_FINITE]


def test_a_level_of_series_at_once_is_what_one_at_a_time_gives() -> None:
    reg, one = SeriesRegistry(), SeriesRegistry()
    racks = ["r01", "r02", "r03"]
    pre = reg.id("power.power_w", rating=5e3, site="s", level="rack", id="r02")  # interned before: kept
    ids = reg.ids("power.power_w", "id", racks, [1e3, 5e3, 9e3], site="s", level="rack")
    assert ids.dtype == np.int32 and ids[1] == pre and len(reg) == 3
    for a in ("aa", "level", "zz"):  # the varying tag sorts first, between or last
        got = reg.ids("caps.cap_w", a, racks, **{k: "x" for k in ("b", "m") if k != a})
        want = [reg.id("caps.cap_w", **{a: r, **{k: "x" for k in ("b", "m") if k != a}}) for r in racks]
        assert got.tolist() == want
    for r, lim in zip(racks, [1e3, 5e3, 9e3], strict=True):
        one.id("power.power_w", rating=lim, site="s", level="rack", id=r)
    _lo, hi = reg.bounds()
    assert hi[ids].tolist() == one.bounds()[1][:3].tolist()
    with pytest.raises(ValueError, match="twice"):
        reg.ids("caps.cap_w", "id", racks, id="x")
    with pytest.raises(KeyError, match="unknown metric"):
        reg.ids("power.watts", "id", racks)


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown metric"):
        SeriesRegistry().id("power.watts", id="x")
    assert metric("grid.limit_w").unit == "W"


def test_batches_are_columnar_and_concatenate() -> None:
    reg = SeriesRegistry()
    a = reg.id("power.power_w", id="a")
    c = reg.id("power.power_w", id="c")
    b1 = ReadingBatch.of(np.array([1, 2], np.int64), [a, c], [1.0, 2.0], registry=reg)
    b2 = ReadingBatch.of(3, [a], [3.0], Quality.STALE, registry=reg)
    both = ReadingBatch.concat([b1, ReadingBatch.empty(reg), b2])
    assert len(both) == 3
    assert both.ts_ns.dtype == np.int64 and both.series.dtype == np.int32
    assert both.value.dtype == np.float64 and both.quality.dtype == np.uint8
    assert list(both.quality) == [0, 0, Quality.STALE]
    df = both.to_frame()
    assert list(df["id"]) == ["a", "c", "a"]
    assert list(df["value"]) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="different registries"):
        ReadingBatch.concat([b1, ReadingBatch.of(1, [0], [1.0], registry=SeriesRegistry())])
    with pytest.raises(ValueError, match="differ in length"):
        ReadingBatch(np.zeros(2, np.int64), np.zeros(1, np.int32), np.zeros(2), np.zeros(2, np.uint8), reg)
