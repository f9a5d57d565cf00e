"""The allocation kernel against its NumPy reference, and its invariants as properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers import safety
from controllers.allocate import Allocation, Method, Structure, solve
from tests.controllers.instances import Instance, random_instance

TOL = 1e-6
METHODS: tuple[Method, ...] = ("numba", "numpy")


def _saturated(inst: Instance, a: Allocation) -> np.ndarray:
    cap = inst.cap_w
    return a.load_w >= cap - (1e-7 * np.abs(cap) + TOL)


def check_invariants(inst: Instance, a: Allocation) -> None:
    """Feasibility, bounds, priority order and no stranded power."""
    s, cap = inst.s, inst.cap_w
    lo, hi = inst.floor_w, inst.ceiling_w
    d = np.clip(inst.demand_w, lo, hi)
    assert np.all(a.x_w >= lo - TOL) and np.all(a.x_w <= hi + TOL)
    infeasible = np.zeros(cap.shape[0], bool)
    infeasible[a.infeasible(cap)] = True
    slack = 1e-7 * np.abs(cap) + TOL
    # Feasible constraints hold; infeasible ones carry floors only.
    assert np.all(a.load_w[~infeasible] <= cap[~infeasible] + slack[~infeasible])
    assert np.allclose(a.load_w[infeasible], a.floor_load_w[infeasible])
    sat = _saturated(inst, a)
    for i in range(s.n):
        cs = s.mem[i][s.mem[i] >= 0]
        if a.x_w[i] < hi[i] - TOL:  # no stranded power: something saturated holds it
            assert sat[cs].any(), f"consumer {i} below its ceiling with no saturated constraint"
            assert a.bind[i] in cs and sat[a.bind[i]]
        if a.x_w[i] < d[i] - TOL:  # priority: where it is held, lower priorities are at their floor
            ok = False
            for c in cs[sat[cs]]:
                members = np.flatnonzero((s.mem == c).any(axis=1))
                lower = members[s.priority[members] > s.priority[i]]
                ok |= bool(np.all(a.x_w[lower] <= lo[lower] + TOL))
            assert ok, f"consumer {i} cut below demand while a lower priority has more than its floor"


@pytest.mark.parametrize("seed", range(60))
def test_kernel_matches_numpy_reference(seed: int) -> None:
    inst = random_instance(seed, n=5 + 7 * seed, depth=2 + seed % 4, classes=1 + seed % 5,
                           tight=0.3 + (seed % 9) / 9, loops=1 + seed % 4, int_counts=seed % 2 == 0)
    a = solve(inst.s, inst.floor_w, inst.demand_w, inst.ceiling_w, inst.cap_w, "numba")
    b = solve(inst.s, inst.floor_w, inst.demand_w, inst.ceiling_w, inst.cap_w, "numpy")
    np.testing.assert_allclose(a.x_w, b.x_w, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(a.load_w, b.load_w, rtol=1e-9, atol=1e-4)
    check_invariants(inst, a)


def test_stale_and_nan_telemetry_through_accounting_in_both() -> None:
    """NaN draws and stale consumers are accounted before solving; both solvers agree."""
    rng = np.random.default_rng(5)
    for seed in range(20):
        inst = random_instance(seed, n=80, classes=3)
        n = inst.s.n
        draw = rng.uniform(inst.floor_w, inst.ceiling_w)
        draw[rng.random(n) < 0.2] = np.nan
        stale = rng.random(n) < 0.2
        enforced = np.where(rng.random(n) < 0.5, rng.uniform(inst.floor_w, inst.ceiling_w), np.nan)
        demand = np.where(rng.random(n) < 0.1, np.nan, inst.demand_w)
        acc = safety.account(demand, draw, stale, enforced, inst.floor_w, inst.ceiling_w)
        assert np.all(np.isfinite(acc.demand_w)) and np.all(acc.floor_w <= acc.ceiling_w)
        a = solve(inst.s, acc.floor_w, acc.demand_w, acc.ceiling_w, inst.cap_w, "numba")
        b = solve(inst.s, acc.floor_w, acc.demand_w, acc.ceiling_w, inst.cap_w, "numpy")
        np.testing.assert_allclose(a.x_w, b.x_w, rtol=1e-9, atol=1e-6)
        # A stale consumer never rises above what it was accounted at.
        held = np.where(np.isfinite(enforced), enforced, inst.ceiling_w)
        assert np.all(a.x_w[acc.stale] <= np.maximum(held, inst.floor_w)[acc.stale] + TOL)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 70), depth=st.integers(1, 5),
       classes=st.integers(1, 5), tight=st.floats(0.05, 1.3), loops=st.integers(1, 5))
def test_allocation_properties(seed: int, n: int, depth: int, classes: int, tight: float, loops: int) -> None:
    inst = random_instance(seed, n=n, depth=depth, classes=classes, tight=tight, loops=loops)
    check_invariants(inst, solve(inst.s, inst.floor_w, inst.demand_w, inst.ceiling_w, inst.cap_w))


def test_strict_priority_and_weighted_fairness_by_hand() -> None:
    """One 1000 W constraint; class 0 takes its demand, class 1 shares the rest 2:1 by weight."""
    s = Structure.build(np.ones(3), np.array([1.0, 2.0, 1.0]), np.array([1, 1, 0]),
                        np.zeros((3, 1), np.int32), 1)
    lo = np.full(3, 100.0)
    a = solve(s, lo, np.array([600.0, 600.0, 400.0]), np.full(3, 700.0), np.array([1000.0]))
    # floors take 300; class 0 takes 300 more (to its 400 demand); the 400 left go to class 1
    # by weight 1:2 above the floors.
    np.testing.assert_allclose(a.x_w, [100 + 400 / 3, 100 + 800 / 3, 400.0])
    assert list(a.bind) == [0, 0, 0]


def test_spare_power_goes_to_headroom_and_floors_report_infeasible() -> None:
    s = Structure.build(np.array([2.0, 2.0]), np.ones(2), np.zeros(2), np.array([[0, 1], [0, -1]], np.int32), 2)
    a = solve(s, np.full(2, 100.0), np.full(2, 150.0), np.full(2, 500.0), np.array([10_000.0, 300.0]))
    np.testing.assert_allclose(a.x_w, [150.0, 500.0])  # consumer 0 held by constraint 1, 1 uncapped
    assert list(a.bind) == [1, -1]
    a = solve(s, np.full(2, 100.0), np.full(2, 150.0), np.full(2, 500.0), np.array([10_000.0, 150.0]))
    assert list(a.infeasible(np.array([10_000.0, 150.0]))) == [1]
    assert a.x_w[0] == 100.0  # never below the floor


def test_bad_input_is_a_clear_error() -> None:
    s = Structure.build(np.ones(2), np.ones(2), np.zeros(2), np.zeros((2, 1), np.int32), 1)
    with pytest.raises(ValueError, match="demand_w must be finite"):
        solve(s, np.ones(2), np.array([1.0, np.nan]), np.ones(2) * 2, np.ones(1))
    with pytest.raises(ValueError, match="floor_w exceeds ceiling_w"):
        solve(s, np.full(2, 3.0), np.ones(2), np.ones(2), np.ones(1))
    with pytest.raises(ValueError, match="weights"):
        Structure.build(np.ones(2), np.zeros(2), np.zeros(2), np.zeros((2, 1), np.int32), 1)
    with pytest.raises(ValueError, match="unknown constraint"):
        Structure.build(np.ones(2), np.ones(2), np.zeros(2), np.full((2, 1), 4, np.int32), 1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 60), stale_share=st.floats(0, 1), nan_share=st.floats(0, 1),
       tight=st.floats(0.05, 1.3))
def test_properties_with_stale_and_missing_telemetry(seed: int, n: int, stale_share: float, nan_share: float,
                                                     tight: float) -> None:
    inst = random_instance(seed, n=n, classes=4, tight=tight)
    rng = np.random.default_rng(seed)
    draw = np.where(rng.random(n) < nan_share, np.nan, rng.uniform(inst.floor_w, inst.ceiling_w * 1.1))
    enforced = np.where(rng.random(n) < 0.5, rng.uniform(inst.floor_w, inst.ceiling_w), np.nan)
    acc = safety.account(inst.demand_w, draw, rng.random(n) < stale_share, enforced, inst.floor_w, inst.ceiling_w)
    accounted = Instance(inst.s, acc.floor_w, acc.demand_w, acc.ceiling_w, inst.cap_w)
    a = solve(inst.s, acc.floor_w, acc.demand_w, acc.ceiling_w, inst.cap_w)
    check_invariants(accounted, a)
    b = solve(inst.s, acc.floor_w, acc.demand_w, acc.ceiling_w, inst.cap_w, "numpy")
    np.testing.assert_allclose(a.x_w, b.x_w, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("max_rounds", [1, 2, 3, 4])
def test_a_truncated_solve_is_still_feasible(max_rounds: int) -> None:
    """Even rounds are lower bounds of the fixed point: stopping early never breaks a limit."""
    for seed in range(40):
        inst = random_instance(seed, n=80, depth=5, classes=3, tight=0.5, loops=4)
        for method in METHODS:
            a = solve(inst.s, inst.floor_w, inst.demand_w, inst.ceiling_w, inst.cap_w, method, max_rounds=max_rounds)
            ok = np.ones(inst.cap_w.shape[0], bool)
            ok[a.infeasible(inst.cap_w)] = False
            assert np.all(a.load_w[ok] <= inst.cap_w[ok] * (1 + 1e-9) + TOL)
            assert np.all(a.x_w >= inst.floor_w - TOL)
