"""Cross-check against HiGHS: priority-class totals of the same instance as an LP."""

from __future__ import annotations

import numpy as np
import pytest

from bench.capping import instance  # the benchmark's generated-site instance
from controllers.allocate import solve
from controllers.budget import overhead_model
from controllers.problem import KIND_POWER, SiteProblem
from models.site import SiteConfig
from models.topology import Topology
from testbed.lp import class_gaps, class_totals, lexicographic_totals
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


@pytest.mark.parametrize(("loop_cap_w", "facility_w"), [
    ((2.4e6, 2.4e6), 5.2e6),  # rows bind
    ((1.85e6, 2.4e6), 5.2e6),  # cdu-1 pump down: loop and rows bind across the two hierarchies
    ((2.4e6, 2.4e6), 3.9e6),  # demand response: the site binds
    ((2.4e6, 1.68e6), 5.2e6),  # warm facility water on cdu-2
], ids=["rows", "pump", "dr", "warm"])
def test_demo_site_scenarios_match_the_lp(demo_site: SiteConfig, demo_topo: Topology,
                                          loop_cap_w: tuple[float, float], facility_w: float) -> None:
    prob = SiteProblem.build(demo_topo)
    rng = np.random.default_rng(3)
    demand = 120 + (prob.ceiling_w - 120) * rng.uniform(0.7, 1.0, prob.structure.n)
    lim = prob.limits_w(overhead_model(demo_site, demo_topo).it_budget_w(facility_w * 0.98),
                        np.array(loop_cap_w) * 0.98)
    lim[prob.con_kind == KIND_POWER] *= 0.98
    cap = prob.gpu_space_w(lim)
    a = solve(prob.structure, prob.floor_w, demand, prob.ceiling_w, cap)
    lp = lexicographic_totals(prob.structure, prob.floor_w, demand, cap)
    gaps = class_gaps(class_totals(prob.structure, a, demand, prob.floor_w), lp.totals_w)
    assert np.all(np.abs(gaps) <= 1e-3), gaps  # measured: <= 1e-8
