"""Cross-check against HiGHS: priority-class totals of the same instance as an LP."""

from __future__ import annotations

import numpy as np
import pytest

from bench.capping import instance  # the benchmark's generated-site instance
from controllers.allocate import solve
from controllers.lp import class_gaps, class_totals, lexicographic_totals
from tests.controllers.instances import random_instance


@pytest.mark.parametrize("gpus", [3000, 10_000])
def test_generated_sites_match_the_lp_per_priority_class(gpus: int) -> None:
    _, prob, demand, cap = instance(gpus)
    s = prob.structure
    lo, hi = prob.floor_w, prob.ceiling_w
    a = solve(s, lo, demand, hi, cap)
    assert a.infeasible(cap).size == 0
    assert (a.bind >= 0).any()  # constraints bind, or the comparison is trivial
    lp = lexicographic_totals(s, lo, demand, cap)
    gaps = class_gaps(class_totals(s, a, demand, lo), lp.totals_w)
    assert np.all(np.abs(gaps) <= 1e-3), gaps


def test_crossing_hierarchies_class_zero_never_beats_the_lp() -> None:
    """With loops across the tree, max-min and max-total differ; the LP bounds class 0 from above."""
    worst = 0.0
    for seed in range(15):
        inst = random_instance(seed, n=50, classes=3, tight=0.6)
        a = solve(inst.s, inst.floor_w, inst.demand_w, inst.ceiling_w, inst.cap_w)
        if a.infeasible(inst.cap_w).size:
            continue
        lp = lexicographic_totals(inst.s, inst.floor_w, inst.demand_w, inst.cap_w)
        gaps = class_gaps(class_totals(inst.s, a, inst.demand_w, inst.floor_w), lp.totals_w)
        assert gaps[0] >= -1e-7
        worst = max(worst, float(gaps[0]))
    assert worst < 0.05  # measured: up to ~1.3 % on these adversarial random instances
