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
