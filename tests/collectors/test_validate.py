"""Validator: every rejected value counted by reason and never passed on as good."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collectors.validate import Validator, rejected_total
from models.readings import Quality, ReadingBatch, Reason, SeriesRegistry


@pytest.fixture
def reg() -> SeriesRegistry:
    return SeriesRegistry()


def test_range_nan_and_rating(reg: SeriesRegistry) -> None:
    rack = reg.id("power.power_w", 600e3, site="s", level="rack", id="r1")
    flow = reg.id("cooling.flow_lpm", None, site="s", loop="l1")
    v = Validator(reg)
    b = ReadingBatch.of(1, [rack, rack, flow, flow], [6e6, 300e3, -1.0, math.nan], registry=reg)
    out, counts = v.check(b, 1)
    assert list(out.value) == [300e3]
    assert counts == {Reason.ABOVE_RANGE: 1, Reason.BELOW_RANGE: 1, Reason.NOT_FINITE: 1}
    assert rejected_total(counts) == 3


def test_stuck_gauge_rejected_after_n_polls_states_never(reg: SeriesRegistry) -> None:
    p = reg.id("power.power_w", None, site="s", level="rack", id="r1")
    pumps = reg.id("cooling.pumps_running", None, site="s", loop="l1")
    v = Validator(reg, stuck_polls={"power.power_w": 3})
    kept = []
    for t in range(5):
        out, counts = v.check(ReadingBatch.of(t, [p, pumps], [1000.0, 2.0], registry=reg), t)
        kept.append(len(out))
    assert kept == [2, 2, 1, 1, 1]  # third identical power reading is stuck; pumps never
    out, counts = v.check(ReadingBatch.of(9, [p], [1001.0], registry=reg), 9)
    assert len(out) == 1 and not counts
    with pytest.raises(ValueError, match="state"):
        Validator(reg, stuck_polls={"cooling.leak": 5})


def test_counter_reset_kept_but_flagged(reg: SeriesRegistry) -> None:
    e = reg.id("power.energy_wh", None, site="s", level="rack", id="r1")
    v = Validator(reg)
    v.check(ReadingBatch.of(1, [e], [5000.0], registry=reg), 1)
    out, counts = v.check(ReadingBatch.of(2, [e], [10.0], registry=reg), 2)
    assert list(out.value) == [10.0]
    assert out.quality[0] & Quality.COUNTER_RESET
    assert counts == {Reason.COUNTER_DECREASE: 1}
    assert rejected_total(counts) == 0
    out, counts = v.check(ReadingBatch.of(3, [e], [20.0], registry=reg), 3)
    assert out.quality[0] == 0 and not counts
    assert Validator.is_wrap(4.2e9, 100.0) and not Validator.is_wrap(5000.0, 10.0)


def test_series_repeated_within_one_batch_in_order(reg: SeriesRegistry) -> None:
    e = reg.id("power.energy_wh", None, site="s", level="rack", id="r1")
    v = Validator(reg)
    b = ReadingBatch(np.array([1, 2, 3], np.int64), np.array([e, e, e], np.int32),
                     np.array([10.0, 20.0, 5.0]), np.zeros(3, np.uint8), reg)
    out, _counts = v.check(b, 3)
    assert list(out.quality) == [0, 0, Quality.COUNTER_RESET]
    assert v.totals == {Reason.COUNTER_DECREASE: 1}


def test_foreign_registry_refused(reg: SeriesRegistry) -> None:
    with pytest.raises(ValueError, match="registry"):
        Validator(reg).check(ReadingBatch.of(1, [0], [1.0], registry=SeriesRegistry()), 1)
