"""Move recommendations: plain-value cases on a tiny site, and the safety property on the demo hall."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from controllers.moves import DrDeficit, MoveRecommendation, MoveTracker, dr_deficit, recommend
from controllers.plan import CapPlan, Infeasible, planned_loop_heat_w, planned_node_load_w
from controllers.problem import SiteProblem
from models.events import EV_MOVE
from models.grid import DemandResponseEvent
from models.physics import OverheadModel
from models.site import load_site
from models.topology import IDLE_PRIORITY, L_NODE, L_RACK, L_ROW, L_UPS, Topology, build_topology

F64 = NDArray[np.float64]
S = 1_000_000_000
T0 = 1_700_000_000 * S


# ---- a tiny site: racks a1 a2 on row ra (loop cdu-1), b1 on row rb (loop cdu-2) -----------------
# 4 servers x 4 GPUs per rack, GPU 100-500 W, idle 50 W, lossless (PSU, UPS 1.0, no base or
# overhead, all heat to liquid), so every number below is a GPU-watt sum.

def small_site(jobs: list[dict[str, Any]], *, row_kw: tuple[float, float] = (100.0, 100.0),
               rack_kw: float = 10.0) -> Topology:
    """Topology of the tiny site with ``jobs``."""
    data: dict[str, Any] = {
        "site": {"name": "tiny", "interconnect_limit_kw": 1000},
        "facility": {"overhead_fixed_kw": 0, "overhead_linear": 0, "overhead_quadratic": 0},
        "feeds": [{"id": "f1", "limit_kw": 1000}],
        "ups": [{"id": "u1", "feed": "f1", "limit_kw": 1000, "efficiency": 1.0}],
        "halls": [{"id": "h1", "ups": "u1", "limit_kw": 1000}],
        "rows": [{"id": "ra", "hall": "h1", "limit_kw": row_kw[0]}, {"id": "rb", "hall": "h1", "limit_kw": row_kw[1]}],
        "rack_types": {"t": {"rated_kw": rack_kw, "nodes": 4, "gpus_per_node": 4, "gpu_min_w": 100,
                             "gpu_max_w": 500, "gpu_idle_w": 50, "node_base_w": 0, "psu_efficiency": 1.0,
                             "rack_overhead_w": 0, "pdus": 1, "liquid_fraction": 1.0}},
        "racks": [{"id": "a1", "row": "ra", "type": "t", "loop": "cdu-1"},
                  {"id": "a2", "row": "ra", "type": "t", "loop": "cdu-1"},
                  {"id": "b1", "row": "rb", "type": "t", "loop": "cdu-2"}],
        "loops": [{"id": "cdu-1", "flow_lpm": 1000, "hx_rated_kw": 1000},
                  {"id": "cdu-2", "flow_lpm": 1000, "hx_rated_kw": 1000}],
        "jobs": jobs,
    }
    return build_topology(load_site("tiny.toml", data=data))


def job(ident: str, priority: int, placement: list[str], checkpointable: bool = True) -> dict[str, Any]:
    """A job entry for ``small_site``."""
    return {"id": ident, "priority": priority, "placement": placement, "checkpointable": checkpointable}


def make_plan(topo: Topology, *, demand_w: F64 | float = 400.0, accounted_w: F64 | None = None,
              infeasible: tuple[Infeasible, ...] = (), loop_capacity_w: F64 | None = None,
              it_budget_w: float = 1e9, budget_reason: str = "interconnect limit", margin: float = 0.0,
              ts_ns: int = T0) -> CapPlan:
    """A CapPlan with the given per-GPU demand (jobless GPUs at idle) and accounted watts."""
    d = np.broadcast_to(np.asarray(demand_w, np.float64), (topo.n_gpus,)).copy()
    d = np.where(topo.gpu_job >= 0, d, topo.gpu_idle_w)
    acc = d.copy() if accounted_w is None else accounted_w
    p = SiteProblem.build(topo)
    n = p.structure.n
    caps = np.minimum(acc, topo.gpu_max_w)
    cap = np.full(topo.n_loops, 1e12) if loop_capacity_w is None else loop_capacity_w
    return CapPlan(
        plan_id=1, ts_ns=ts_ns, caps_w=caps, accounted_w=acc, demand_w=d, consumer_caps_w=np.zeros(n),
        consumer_demand_w=np.zeros(n), budget_w=it_budget_w, it_budget_w=it_budget_w, budget_reason=budget_reason,
        bind=np.full(topo.n_gpus, -1, np.int32), constraint_names=p.constraint_names,
        constraint_limit_w=np.zeros(p.n_constraints), constraint_load_w=np.zeros(p.n_constraints),
        loop_capacity_w=cap, infeasible=list(infeasible), solve_ms=0.0, rounds=0, stale_gpus=0, overdraw_gpus=0,
        overdraw_ids=(), stale_loops=(), margin=margin, overhead=OverheadModel(0.0, 0.0, 0.0, 1.0), problem=p)


def brief(recs: list[MoveRecommendation]) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(action, job, GPUs, to_racks) of each recommendation."""
    return [(r.action, r.job, r.gpus, r.to_racks) for r in recs]


# ---- local deficits ---------------------------------------------------------------------------

def test_rack_over_its_limit_moves_the_lowest_priority_part_to_a_sibling_rack() -> None:
    # Row rb is too small for 4 more working GPUs (800 W idle + 1,400 W > 1 kW): only a2 fits.
    topo = small_site([job("low", 3, ["a1:0-1"]), job("high", 1, ["a1:2-3"])], row_kw=(100.0, 1.0))
    plan = make_plan(topo, infeasible=(Infeasible("rack a1", 1000.0, ("low",)),))
    recs = recommend(topo, plan)
    # 350 W per GPU freed (400 -> idle 50): one 4-GPU server covers 1 kW.
    assert brief(recs) == [("move", "low", 4, ("a2",))]
    r = recs[0]
    assert r.freed_w == pytest.approx(1400.0) and r.constraint == "rack a1" and r.from_racks == ("a1",)
    assert r.nodes == ("a1/node-000",) or r.nodes == ("a1/node-001",)
    assert len(r.to_nodes) == 1 and r.to_nodes[0].startswith("a2/") and r.until_ns is None
    assert "1.4 kW of the 1.0 kW" in r.reason and "rack a1" in r.reason


def test_a_move_prefers_the_destination_with_most_headroom_after_it() -> None:
    # a2 shares row ra (tight at 12 kW) with a1's load; b1's row is empty: b1 is the roomier.
    topo = small_site([job("low", 3, ["a1:0-1"]), job("high", 1, ["a1:2-3"]), job("mid", 2, ["a2"])],
                      row_kw=(12.0, 100.0))
    plan = make_plan(topo, infeasible=(Infeasible("rack a1", 1000.0, ("low",)),))
    assert brief(recommend(topo, plan)) == [("move", "low", 4, ("b1",))]


def test_a_loop_deficit_moves_off_the_loop() -> None:
    # cdu-1 serves a1 and a2: a2's free GPUs are inside the constraint, so the job goes to b1.
    topo = small_site([job("low", 3, ["a1:0-1"]), job("high", 1, ["a1:2-3"])])
    plan = make_plan(topo, infeasible=(Infeasible("loop cdu-1", 1000.0, ("low",)),))
    assert brief(recommend(topo, plan)) == [("move", "low", 4, ("b1",))]


def test_no_free_gpus_means_preempt_and_a_job_that_cannot_checkpoint_is_drained() -> None:
    jobs = [job("low", 3, ["a1:0-1"]), job("high", 1, ["a1:2-3"]), job("other", 2, ["a2", "b1"])]
    topo = small_site(jobs)
    plan = make_plan(topo, infeasible=(Infeasible("rack a1", 1000.0, ("low",)),))
    recs = recommend(topo, plan)
    assert brief(recs) == [("preempt", "low", 8, ())]
    assert recs[0].freed_w == pytest.approx(8 * 350.0) and "no rack outside rack a1" in recs[0].reason
    jobs[0] = job("low", 3, ["a1:0-1"], checkpointable=False)
    assert brief(recommend(small_site(jobs), plan)) == [("drain", "low", 8, ())]


def test_destination_without_power_room_is_never_chosen() -> None:
    # b1 is free but its row carries 1 kW: 800 W idle + 1,400 W would exceed it; a2 is in the loop.
    topo = small_site([job("low", 3, ["a1:0-1"]), job("high", 1, ["a1:2-3"])], row_kw=(100.0, 1.0))
    plan = make_plan(topo, infeasible=(Infeasible("loop cdu-1", 1000.0, ("low",)),))
    assert brief(recommend(topo, plan)) == [("preempt", "low", 8, ())]


def test_a_move_spreads_over_racks_when_no_one_rack_has_the_gpus() -> None:
    # Four servers must leave a1; a2 and b1 have two free servers each.
    topo = small_site([job("big", 3, ["a1"]), job("x", 2, ["a2:0-1"]), job("y", 2, ["b1:0-1"])])
    plan = make_plan(topo, infeasible=(Infeasible("rack a1", 5000.0, ("big",)),))
    recs = recommend(topo, plan)
    assert brief(recs) == [("move", "big", 16, ("a2", "b1"))]
    assert len(recs[0].to_nodes) == 4


def test_local_priority_zero_only_when_nothing_else_covers() -> None:
    jobs = [job("inf", 0, ["a1:0-1"], checkpointable=False), job("low", 3, ["a1:2-2"])]
    topo = small_site(jobs)
    small = make_plan(topo, infeasible=(Infeasible("rack a1", 1000.0, ("low",)),))
    assert brief(recommend(topo, small)) == [("move", "low", 4, ("a2",))]
    big = make_plan(topo, infeasible=(Infeasible("rack a1", 2000.0, ("low", "inf")),))
    recs = recommend(topo, big)
    assert [(r.action, r.job) for r in recs] == [("move", "low"), ("move", "inf")]
    assert "nothing else covers" in recs[1].reason and "nothing else covers" not in recs[0].reason


# ---- demand response --------------------------------------------------------------------------

DR_JOBS = [job("big3", 3, ["a1"]), job("small3", 3, ["a2:0-0"]), job("nock3", 3, ["a2:1-1"], checkpointable=False),
           job("mid2", 2, ["a2:2-3"]), job("inf0", 0, ["b1"], checkpointable=False)]


@pytest.mark.parametrize(("deficit_w", "expected"), [
    (1000.0, ["small3"]),  # fewest GPUs that cover it (4 GPUs = 1.4 kW), not big3
    (3000.0, ["big3"]),  # only big3 covers it alone
    (6500.0, ["big3", "small3"]),  # none alone: the biggest, then the fewest covering the rest
    (7500.0, ["big3", "small3", "nock3"]),  # checkpointable before not, inside priority 3
    (10000.0, ["big3", "small3", "nock3", "mid2"]),  # then priority 2; never the protected p0
])
def test_dr_preempts_lowest_priority_checkpointable_first_fewest_gpus(deficit_w: float, expected: list[str]) -> None:
    topo = small_site(DR_JOBS)
    plan = make_plan(topo, budget_reason="demand response dr-1")
    recs = recommend(topo, plan, dr=DrDeficit(deficit_w, "dr-1", T0 + 240 * S, basis="demand"))
    assert [r.job for r in recs] == expected
    assert all(r.until_ns == T0 + 240 * S and r.constraint == "site" and not r.to_racks for r in recs)
    assert [r.action for r in recs] == ["drain" if j == "nock3" else "preempt" for j in expected]
    assert sum(r.freed_w for r in recs) >= deficit_w
    assert "until the event ends in 240 s" in recs[0].reason


def test_dr_takes_priority_zero_only_when_nothing_else_covers_and_says_so() -> None:
    topo = small_site(DR_JOBS)
    plan = make_plan(topo, budget_reason="demand response dr-1")
    recs = recommend(topo, plan, dr=DrDeficit(14000.0, "dr-1", None, basis="demand"))
    assert [r.job for r in recs][-1] == "inf0" and recs[-1].action == "drain"
    assert "priority 0, not checkpointable: nothing else covers the deficit" in recs[-1].reason


def test_dr_deficit_from_a_plan_and_its_events() -> None:
    topo = small_site(DR_JOBS)
    ev = DemandResponseEvent("dr-1", T0 - 60 * S, T0 + 120 * S, 1e4)
    # Demand: 44 job GPUs x 400 + 4 idle... here every GPU has a job: 48 x 400 = 19.2 kW.
    plan = make_plan(topo, it_budget_w=15_000.0, budget_reason="demand response dr-1")
    d = dr_deficit(topo, plan, [ev], basis="demand")
    assert d == DrDeficit(pytest.approx(48 * 400.0 - 15_000.0), "dr-1", T0 + 120 * S, "demand")
    # protect: only inf0 (p0) at demand, the rest at their 100 W floor: 16 x 400 + 32 x 100 < 15 kW.
    assert dr_deficit(topo, plan, [ev]) is None
    tight = make_plan(topo, it_budget_w=9_000.0, budget_reason="demand response dr-1")
    d = dr_deficit(topo, tight, [ev])
    assert d is not None and d.deficit_w == pytest.approx(16 * 400.0 + 32 * 100.0 - 9_000.0)
    recs = recommend(topo, tight, dr=d)  # protect basis: a job frees its floor minus idle (50 W/GPU)
    assert [r.job for r in recs] == ["big3"] and recs[0].freed_w == pytest.approx(16 * 50.0)  # 800 W >= 600 W
    assert dr_deficit(topo, make_plan(topo, it_budget_w=9_000.0), [ev]) is None  # not a DR budget


# ---- events, detail, tracker ------------------------------------------------------------------

def test_event_and_detail() -> None:
    topo = small_site([job("low", 3, ["a1:0-1"]), job("high", 1, ["a1:2-3"])], row_kw=(100.0, 1.0))
    r = recommend(topo, make_plan(topo, infeasible=(Infeasible("rack a1", 1000.0, ("low",)),)))[0]
    ev = r.to_event("tiny")
    assert (ev.kind, ev.entity, ev.ts_ns, ev.source) == (EV_MOVE, "low", T0, "controller")
    assert ev.fields == {"value": pytest.approx(1400.0), "gpus": 4.0, "priority": 3.0} and ev.message == r.reason
    doc = json.loads(json.dumps(r.detail()))
    assert doc["action"] == "move" and doc["to_racks"] == ["a2"] and doc["until_ns"] is None


def _rec(job_id: str, freed_w: float, constraint: str = "rack a1") -> MoveRecommendation:
    return MoveRecommendation(T0, "preempt", job_id, 3, True, 8, ("a1/node-000",), ("a1",), (), (), freed_w,
                              constraint, "why")


def test_tracker_emits_new_or_changed_and_forgets_after_the_constraint_clears() -> None:
    tr = MoveTracker(change_share=0.2, clear_periods=2)
    assert [r.job for r in tr.update([_rec("low", 1000.0)])] == ["low"]
    assert tr.update([_rec("low", 1100.0)]) == []  # within 20 %: same recommendation
    assert [r.freed_w for r in tr.update([_rec("low", 1500.0)])] == [1500.0]  # material change
    assert tr.update([]) == []  # cleared once: still remembered
    assert tr.update([_rec("low", 1500.0)]) == []
    assert tr.update([]) == [] and tr.update([]) == []  # clear for two periods: forgotten
    assert [r.job for r in tr.update([_rec("low", 1500.0)])] == ["low"]
    assert [r.constraint for r in tr.update([_rec("low", 1500.0), _rec("low", 1500.0, "loop cdu-1")])] == \
        ["loop cdu-1"]


# ---- property: a move never lands in violation --------------------------------------------------

def _gpus_of(topo: Topology, servers: tuple[str, ...], job_ix: int | None = None) -> NDArray[np.int64]:
    ids = {sid: i for i, sid in enumerate(topo.ids(L_NODE))}
    out = []
    for sid in servers:
        k = ids[sid]
        lo = int(topo.node_first_gpu[k])
        g = np.arange(lo, lo + int(topo.node_gpus[k]))
        out.append(g if job_ix is None else g[topo.gpu_job[g] == job_ix])
    return np.concatenate(out).astype(np.int64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), free_share=st.floats(0.05, 0.6), hot=st.floats(0.3, 1.0),
       margin=st.floats(0.0, 0.1), loop_share=st.floats(0.4, 1.2), budget_share=st.floats(0.6, 1.1),
       n_inf=st.integers(1, 4), dr=st.booleans())
def test_moves_never_land_in_violation(demo_topo: Topology, seed: int, free_share: float, hot: float,
                                       margin: float, loop_share: float, budget_share: float, n_inf: int,
                                       dr: bool) -> None:
    rng = np.random.default_rng(seed)
    t = demo_topo
    # Free a random share of servers (whole servers: jobs are placed by server).
    free_srv = rng.random(t.count(L_NODE)) < free_share
    free = np.repeat(free_srv, t.node_gpus)
    topo = dataclasses.replace(t, gpu_job=np.where(free, -1, t.gpu_job).astype(np.int32),
                               gpu_priority=np.where(free, IDLE_PRIORITY, t.gpu_priority).astype(np.int16))
    demand = np.repeat(rng.uniform(t.gpu_idle_w[0], t.gpu_max_w[0] * hot + 1.0, t.count(L_NODE)), t.node_gpus)
    base = planned_node_load_w(topo, np.where(topo.gpu_job >= 0, demand, topo.gpu_idle_w))
    it_w = float(base[topo.level_slice(L_UPS)].sum())
    loop_cap = planned_loop_heat_w(topo, base) * loop_share
    p = SiteProblem.build(topo)
    names = [n for n in p.constraint_names if n.split()[0] in ("rack", "row", "hall", "loop")]
    picked = rng.choice(len(names), n_inf, replace=False)
    infeasible = tuple(Infeasible(names[int(k)], float(rng.uniform(1e3, 3e5)), ()) for k in picked)
    plan = make_plan(topo, demand_w=demand, infeasible=infeasible, loop_capacity_w=loop_cap,
                     it_budget_w=it_w * budget_share, margin=margin,
                     budget_reason="demand response dr-x" if dr else "interconnect limit")
    deficit = dr_deficit(topo, plan, basis="demand") if dr else None
    recs = recommend(topo, plan, dr=deficit)
    event(f"moves: {sum(r.action == 'move' for r in recs) > 0}, stops: {sum(r.action != 'move' for r in recs) > 0}")

    # Replay every recommendation on the demand vector with the plan's own physics.
    v = np.asarray(plan.demand_w, np.float64).copy()
    limit = topo.node_limit_w * (1.0 - margin)
    for r in recs:
        j = topo.job_ids.index(r.job)
        before = planned_node_load_w(topo, v)
        heat_before = planned_loop_heat_w(topo, before)
        if r.action == "move":
            origin = _gpus_of(topo, r.nodes, j)
            dest = _gpus_of(topo, r.to_nodes)
            assert origin.size == dest.size == r.gpus
            assert np.all(topo.gpu_job[dest] == -1)
            assert not set(r.to_racks) & set(r.from_racks)
            v[dest] = v[origin]
            v[origin] = topo.gpu_idle_w[origin]
        else:
            g = np.flatnonzero(topo.gpu_job == j)
            assert r.gpus == g.size and not r.to_racks
            v[g] = topo.gpu_idle_w[g]
        after = planned_node_load_w(topo, v)
        heat_after = planned_loop_heat_w(topo, after)
        rose = after > before + 1e-6
        assert np.all(after[rose] <= limit[rose] * (1 + 1e-9)), r.reason
        rose_l = heat_after > heat_before + 1e-6
        assert np.all(heat_after[rose_l] <= loop_cap[rose_l] * (1 + 1e-9) + 1e-6), r.reason
        it_before = float(before[topo.level_slice(L_UPS)].sum())
        it_after = float(after[topo.level_slice(L_UPS)].sum())
        if it_after > it_before + 1e-6:
            assert it_after <= plan.it_budget_w * (1 + 1e-9), r.reason
    # Every move lands outside the constraint it relieves.
    for r in recs:
        if r.action == "move" and r.constraint.startswith(("rack", "loop")):
            level, ident = r.constraint.split()
            if level == "rack":
                assert ident not in r.to_racks
            else:
                rack_loops = {topo.level_ids[L_RACK][k]: topo.loop_ids[int(topo.rack_loop[k])]
                              for k in range(topo.count(L_RACK))}
                assert all(rack_loops[x] != ident for x in r.to_racks)
        if r.action == "move" and r.constraint.startswith("row"):
            ident = r.constraint.split()[1]
            rows = topo.node_parent[topo.level_slice(L_RACK)] - topo.level_offset[L_ROW]
            assert all(topo.level_ids[L_ROW][int(rows[topo.level_ids[L_RACK].index(x)])] != ident
                       for x in r.to_racks)
