"""The control loop closed around the twin: demand response, pump failure, warm water."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pytest

from controllers.loop import ControlLoop
from controllers.plan import BIND_NONE, BIND_RAMP, RAMP, CapPlan
from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_RACK, Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim

START_NS = 1_700_000_000 * 1_000_000_000
DR_START_S, DR_END_S, DR_TARGET_W = 120.0, 360.0, 3_900_000.0


@dataclass
class Run:
    """What a closed-loop run saw, every twin step (0.1 s)."""

    plans: list[CapPlan] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    facility_in_dr_w: list[float] = field(default_factory=list)
    node_over: list[tuple[float, int]] = field(default_factory=list)
    loop_over: list[tuple[float, int, float]] = field(default_factory=list)
    bound: set[str] = field(default_factory=set)


def run(site: SiteConfig, topo: Topology, seconds: float, control: bool) -> Run:
    reg = SeriesRegistry()
    sim = TwinSim(site, topo, start_ns=START_NS)
    feed = TwinFeed(sim, site.site.name, registry=reg)  # the whole site, server nodes included
    state = SiteState(topo, reg)
    loop = ControlLoop(site, topo, state, registry=reg)
    out = Run()
    per = round(site.controller.period_s / sim.step_s)
    for k in range(round(seconds / sim.step_s)):
        if control and k % per == 0:
            state.ingest(feed.batch())
            for ev in sim.grid().events:  # as the MQTT collector hands them over when announced
                state.add_dr_event(ev)
            plan = loop.step(sim.now_ns)
            out.violations += plan.violations(topo)
            out.bound |= {plan.constraint_names[c] for c in plan.binding_constraints()}
            out.plans.append(plan)
            sim.set_caps(plan.caps_w)
        sim.step()
        if DR_START_S <= sim.t_s < DR_END_S:
            out.facility_in_dr_w.append(sim.facility_w)
        for n in np.flatnonzero(sim.node_power_w > topo.node_limit_w):
            out.node_over.append((sim.t_s, int(n)))
        for j in np.flatnonzero(sim.loop_heat_w > sim.loop_capacity_w):
            out.loop_over.append((sim.t_s, int(j), float(sim.loop_heat_w[j] - sim.loop_capacity_w[j])))
    return out


def test_without_control_the_twin_breaks_its_limits(demo_site: SiteConfig, demo_topo: Topology) -> None:
    r = run(demo_site, demo_topo, 780.0, control=False)
    assert max(r.facility_in_dr_w) > DR_TARGET_W
    assert 0 in {j for _, j, _ in r.loop_over}  # the pump failure overheats cdu-1


def test_closed_loop_holds_every_limit_through_the_scenario(demo_site: SiteConfig, demo_topo: Topology) -> None:
    r = run(demo_site, demo_topo, 780.0, control=True)
    assert r.violations == []
    assert len(r.plans) == 780
    # DR: the target applies dr_lead_s (10 s) before the start, and caps fall at once, so no
    # ramp allowance is needed at the start: facility power stays under the target throughout.
    assert max(r.facility_in_dr_w) <= DR_TARGET_W
    # Breakers: no power node ever draws over its limit (measured every 0.1 s, lag included).
    assert r.node_over == []
    # Cooling: pump failure (cdu-1, 420-570 s) and warm supply (cdu-2, 600-720 s) are held
    # by the loop constraints; the flow falls over ~3 s (pump spin-down), which the capacity
    # look-ahead covers, so heat never exceeds capacity.
    assert r.loop_over == []
    assert {"loop cdu-1", "loop cdu-2", "site"} <= r.bound
    dr_plans = [p for p in r.plans if DR_START_S <= (p.ts_ns - START_NS) / 1e9 < DR_END_S]
    assert all(p.budget_reason == "demand response dr-evening-1" for p in dr_plans)
    _binding_describes_the_applied_plan(r.plans, demo_site.controller.ramp_w_per_s)
    # Priority 0 (inference-prod on r07, r08) is cut last: during DR it keeps the most power.
    last = dr_plans[-1]
    rack_cap = np.bincount(demo_topo.gpu_member[L_RACK] - demo_topo.level_offset[L_RACK], last.caps_w)
    assert rack_cap[6] >= rack_cap[:6].max() and rack_cap[7] >= rack_cap[:6].max()


def _binding_describes_the_applied_plan(plans: list[CapPlan], ramp_w_per_s: float) -> None:
    """Every GPU held below its demand names what holds it in the plan that is applied: a
    constraint that is full in that plan, or the ramp (its cap rose by exactly the ramp)."""
    ramped_plans = 0
    for prev, plan in pairwise(plans):
        p = plan.problem
        held = plan.consumer_caps_w < plan.consumer_demand_w * (1 - 1e-9)
        bind = plan.bind[p.first_gpu]
        assert (bind[held] != BIND_NONE).all(), "a GPU held below demand without a reason"
        ramp = bind == BIND_RAMP
        dt = (plan.ts_ns - prev.ts_ns) / 1e9
        np.testing.assert_allclose(plan.consumer_caps_w[ramp], prev.consumer_caps_w[ramp] + ramp_w_per_s * dt)
        ramped_plans += bool(ramp.any())
        for c in np.unique(bind[bind >= 0]):
            # the constraint is full: what the ramp held back went to the others
            assert plan.constraint_load_w[c] >= plan.constraint_limit_w[c] * (1 - 1e-6) - 1.0, \
                (plan.constraint_names[c], plan.constraint_load_w[c], plan.constraint_limit_w[c])
        assert plan.summary().binding.get(RAMP, 0) == int(np.count_nonzero(plan.bind == BIND_RAMP))
    assert ramped_plans > 0  # the scenario has caps rising at the ramp (after DR, after the pump)


def test_plan_outputs(demo_site: SiteConfig, demo_topo: Topology) -> None:
    r = run(demo_site, demo_topo, 5.0, control=True)
    plan = r.plans[-1]
    batch = plan.to_batch("demo-hall", SeriesRegistry())
    assert len(batch) > 0
    reg = batch.registry
    names = {reg.key(int(s)).metric for s in batch.series}
    assert {"caps.cap_w", "caps.demand_w", "caps.headroom_w", "caps.limit_w", "caps.binding",
            "caps.gpus_capped", "caps.solve_ms"} <= names
    levels = {dict(reg.key(int(s)).tags)["level"] for s in batch.series}
    assert levels == {"site", "feed", "ups", "hall", "row", "rack", "loop", "job"}
    assert np.isfinite(batch.value).all()
    kinds = [e.kind for e in plan.events("demo-hall")]
    assert kinds[0] == "cap_plan" and "cap_binding" in kinds
    s = plan.summary()
    assert [x.id for x in s.racks] == list(demo_topo.level_ids[L_RACK])
    assert s.binding and s.infeasible == []
    assert {j.id for j in s.jobs} == set(demo_topo.job_ids) and all(j.gpus > 0 for j in s.jobs)
    assert s.to_json()["racks"][0]["id"] == demo_topo.level_ids[L_RACK][0]


def test_infeasible_floors_name_the_jobs_to_move(demo_site: SiteConfig, demo_topo: Topology) -> None:
    # A demand-response target far below what the floors need: infeasible, and the lowest
    # priority, checkpointable jobs are named first.
    from models.grid import DemandResponseEvent

    reg = SeriesRegistry()
    sim = TwinSim(demo_site, demo_topo, start_ns=START_NS)
    state = SiteState(demo_topo, reg)
    state.ingest(TwinFeed(sim, "demo-hall", registry=reg).batch())
    state.add_dr_event(DemandResponseEvent("deep", START_NS, START_NS + 10**12, 1_500_000.0))
    plan = ControlLoop(demo_site, demo_topo, state, registry=reg).step(sim.now_ns)
    (inf,) = plan.infeasible
    assert inf.constraint == "site" and inf.deficit_w > 0
    assert inf.jobs[0] == "eval-sweep"  # priority 3, checkpointable
    assert "inference-prod" not in inf.jobs[:2]
    assert np.all(plan.caps_w == demo_topo.gpu_min_w)  # everyone at the floor, never below
    assert any("site" in v for v in plan.violations(demo_topo))  # the independent check sees it too


def test_state_of_another_topology_is_refused(demo_site: SiteConfig, demo_topo: Topology) -> None:
    from models.topology import build_topology

    with pytest.raises(ValueError, match="another topology"):
        ControlLoop(demo_site, demo_topo, SiteState(build_topology(demo_site)))


def _setup(site: SiteConfig, topo: Topology) -> tuple[TwinSim, TwinFeed, SiteState, ControlLoop, SeriesRegistry]:
    reg = SeriesRegistry()
    sim = TwinSim(site, topo, start_ns=START_NS)
    feed = TwinFeed(sim, site.site.name, registry=reg)
    state = SiteState(topo, reg)
    return sim, feed, state, ControlLoop(site, topo, state, registry=reg), reg


def test_overdraw_is_accounted_at_measured_draw_and_flagged(demo_site: SiteConfig, demo_topo: Topology) -> None:
    from models.readings import ReadingBatch

    sim, feed, state, loop, reg = _setup(demo_site, demo_topo)
    for _ in range(3):
        sim.step(10)
        state.ingest(feed.batch())
        plan = loop.step(sim.now_ns)
        sim.set_caps(plan.caps_w)
    sim.step(10)
    state.ingest(feed.batch())
    # Server r01/node-000 reports 4 x 870 W on GPUs capped lower: its cap did not take.
    cap_before = float(plan.caps_w[0])
    assert cap_before < 800.0
    server_w = (4 * 870.0 + 350.0) / 0.97
    sid = reg.id("power.power_w", site="demo-hall", level="node", id="r01/node-000")
    state.ingest(ReadingBatch.of(sim.now_ns, [sid], [server_w], registry=reg))
    plan = loop.step(sim.now_ns)
    assert plan.overdraw_gpus == 4 and plan.overdraw_ids == ("r01/node-000",)
    np.testing.assert_allclose(plan.accounted_w[:4], 870.0)
    assert plan.violations(demo_topo) == []  # the others were cut to make room
    assert "cap_overdraw" in [e.kind for e in plan.events("demo-hall")]


def test_stale_server_is_held_at_its_last_cap(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim, feed, state, loop, reg = _setup(demo_site, demo_topo)
    held = np.empty(0)
    # Only the racks r02..r08 keep reporting after the first second: r01's servers go silent.
    plan = None
    for k in range(8):
        sim.step(10)
        batch = feed.batch()
        if k > 0:
            keys = reg.keys()
            keep = np.array([not dict(keys[int(s)].tags).get("id", "").startswith("r01/") for s in batch.series])
            batch = batch.select(keep)
        state.ingest(batch)
        plan = loop.step(sim.now_ns)
        sim.set_caps(plan.caps_w)
        if k == 1:
            held = plan.caps_w[:576].copy()
    assert plan is not None and plan.stale_gpus == 576
    assert np.all(plan.caps_w[:576] <= held + 1e-9)  # no rise without fresh data
    assert plan.violations(demo_topo) == []
    assert "telemetry_stale" in [e.kind for e in plan.events("demo-hall")]


def test_closed_loop_at_a_100_ms_period(demo_site: SiteConfig, demo_topo: Topology) -> None:
    from models.site import Controller

    site = demo_site.model_copy(update={"controller": Controller(period_s=0.1)})
    r = run(site, demo_topo, 200.0, control=True)
    assert len(r.plans) == 2000 and r.violations == []
    assert max(r.facility_in_dr_w) <= DR_TARGET_W and r.node_over == []


def test_a_falling_loop_capacity_is_projected_over_the_actuation_lag(demo_site: SiteConfig,
                                                                     demo_topo: Topology) -> None:
    """During cdu-1's pump failure the capacity falls: a loop whose caps take 5 s to hold plans
    on what the loop will have in 6 s (period + lag), one without lag on what it has in 1 s."""
    sim, feed, state, _loop, reg = _setup(demo_site, demo_topo)
    sim.step(round(419.0 / sim.step_s))
    loops = [ControlLoop(demo_site, demo_topo, state, registry=reg) for _ in range(2)]
    plans: list[list[CapPlan]] = [[], []]
    for _ in range(5):  # the failure starts at 420 s and the flow runs down over seconds
        sim.step(10)
        state.ingest(feed.batch())
        for k, lag in enumerate((0.0, 5.0)):
            plans[k].append(loops[k].step(sim.now_ns, lag_s=lag))
    no_lag, lag5 = plans[0][-1].loop_capacity_w[0], plans[1][-1].loop_capacity_w[0]
    assert lag5 < no_lag < plans[0][0].loop_capacity_w[0]
    assert plans[1][-1].violations(demo_topo) == []
