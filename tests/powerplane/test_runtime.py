"""The wired control plane on the twin, stepped by hand: caps applied, everything recorded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from controllers.plan import CapPlan
from models.clock import NS_PER_S, ManualClock
from models.site import SiteConfig
from models.topology import Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim
from powerplane.runtime import STAGES, ControlPlane
from store.embedded import EmbeddedStore


def run_plane(site: SiteConfig, topo: Topology, store: EmbeddedStore, seconds: int) -> tuple[ControlPlane, TwinSim]:
    clock = ManualClock()
    sim = TwinSim(site, topo, start_ns=clock.now_ns(), seed=3)
    applied: list[CapPlan] = []

    def apply(plan: CapPlan) -> None:
        applied.append(plan)
        sim.set_caps(plan.caps_w)

    feed = TwinFeed(sim, site.site.name)
    plane = ControlPlane(site, topo, clock, store, sources=[feed.batch], apply=apply)
    for d in sim.dr_events:  # what the grid topic would have announced
        plane.state.add_dr_event(d)
    for _ in range(seconds):
        clock.advance(1.0)
        sim.advance_to(clock.now_ns())
        plane.step(clock.now_ns())
    assert len(applied) == plane.stats.plans == seconds
    assert plane.writer is not None and plane.writer.flush(30.0)  # the store thread wrote everything
    return plane, sim


def test_plans_are_applied_checked_and_stored(demo_site: SiteConfig, demo_topo: Topology, tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    plane, sim = run_plane(demo_site, demo_topo, store, 200)  # through the start of the DR event
    assert plane.stats.plans_with_violations == 0
    np.testing.assert_array_equal(sim.gpu_cap_w, plane.last_plan.caps_w if plane.last_plan else None)
    a, b = store.time_range()
    caps = store.query("caps.cap_w", a, b + 1, level="site")
    assert len(caps) == 200
    budget = store.query("caps.limit_w", a, b + 1, level="site")
    assert budget["value"].min() < budget["value"].max()  # the DR target lowered the budget
    ev = store.events(a, b + 1)
    assert (ev["kind"] == "cap_plan").sum() == 200
    # derived site totals: IT from the UPS outputs, PUE over it, DR state from the events
    it = store.query("site.it_w", a, b + 1)
    assert len(it) > 0
    active = store.query("grid.dr_active", a, b + 1)
    assert active["value"].iloc[-1] == 1.0 and active["value"].iloc[0] == 0.0
    assert plane.stats.readings > 200 * demo_topo.n_nodes


def test_a_plan_that_grants_over_a_limit_only_cuts(demo_site: SiteConfig, demo_topo: Topology,
                                                   tmp_path: Path) -> None:
    """Safety net: a plan whose caps break a limit is never applied as is; only its cuts are."""
    store = EmbeddedStore(tmp_path)
    plane, sim = run_plane(demo_site, demo_topo, store, 3)
    assert plane.loop is not None
    before = sim.gpu_cap_w.copy()
    real_step = plane.loop.step

    def greedy(now_ns: int, pinned_w: np.ndarray | None = None, lag_s: float = 0.0) -> CapPlan:
        plan = real_step(now_ns, pinned_w, lag_s)
        caps = plan.caps_w.copy()
        caps[: caps.shape[0] // 2] = demo_topo.gpu_max_w[: caps.shape[0] // 2] * 3  # far over every limit
        caps[caps.shape[0] // 2:] = demo_topo.gpu_min_w[caps.shape[0] // 2:]
        from dataclasses import replace
        return replace(plan, caps_w=caps, accounted_w=caps)

    plane.loop.step = greedy  # type: ignore[method-assign]
    plane.step(plane.clock.now_ns() + NS_PER_S)
    assert plane.stats.plans_with_violations == 1
    assert (sim.gpu_cap_w <= before).all()
    half = demo_topo.n_gpus // 2
    np.testing.assert_array_equal(sim.gpu_cap_w[:half], before[:half])
    assert plane.writer is not None and plane.writer.flush(30.0)
    a, b = store.time_range()
    ev = store.events(a, b + 1)
    assert (ev["kind"] == "plan_violation").sum() == 1


def test_live_jobs_are_planned_from_the_next_period_and_stored(demo_site: SiteConfig, demo_topo: Topology,
                                                               tmp_path: Path) -> None:
    """A job from the Slurm spool is in the next plan (caps, per-job readings, the job rows) and its end
    frees its GPUs; the loop never fails over the swap."""
    import json

    from controllers.jobs.feed import JobFeed
    from controllers.jobs.slurm import SpoolReader

    spool = tmp_path / "spool"
    spool.mkdir()
    clock = ManualClock()
    sim = TwinSim(demo_site, demo_topo, start_ns=clock.now_ns(), seed=3)
    feed = JobFeed(demo_site, demo_topo, clock, [SpoolReader(spool).scan])
    store = EmbeddedStore(tmp_path / "data")
    plane = ControlPlane(demo_site, demo_topo, clock, store, sources=[TwinFeed(sim, demo_site.site.name).batch],
                         apply=lambda p: sim.set_caps(p.caps_w), jobs=feed)

    def period() -> None:
        clock.advance(1.0)
        sim.advance_to(clock.now_ns())
        feed.poll()
        plane.step(clock.now_ns())

    period()
    spool.joinpath("4242.json").write_text(json.dumps({"v": 2, "event": "start", "job": "4242", "nodes":
                                                        "r06-node-[072-143]", "partition": "gpu", "qos": "high"}))
    period()
    assert plane.last_plan is not None and plane.last_plan.problem.topo.job_ids[-1] == "4242"
    rows = {r["id"]: r for r in plane.job_rows(plane.last_plan.summary())}
    assert rows["4242"]["source"] == "slurm" and rows["4242"]["gpus"] == 288 and rows["4242"]["priority"] == 2
    spool.joinpath("4242.json").unlink()
    period()
    period()
    assert "4242" not in plane.last_plan.problem.topo.job_ids and plane.stats.control_errors == 0
    assert plane.writer is not None and plane.writer.flush(30.0)
    a, b = store.time_range()
    caps = store.query("caps.cap_w", a, b + 1, level="job", id="4242")
    assert len(caps) == 1  # planned in exactly the one period it was live


def test_the_stages_account_for_the_state_snapshot(demo_site: SiteConfig, demo_topo: Topology,
                                                   tmp_path: Path) -> None:
    """Publishing the live state is a stage of its own (``report``), stored with the others."""
    clock = ManualClock()
    published: list[dict[str, object]] = []

    def slow_view(doc: dict[str, object]) -> None:
        time.sleep(0.05)  # a slow live view: its time must show in a stage, not between them
        published.append(doc)

    store = EmbeddedStore(tmp_path)
    plane = ControlPlane(demo_site, demo_topo, clock, store, publish_state=slow_view)
    clock.advance(1.0)
    plane.step(clock.now_ns())
    assert published and set(plane.stats.stage_ms) == set(STAGES) and "report" in STAGES
    assert plane.stats.stage_ms["report"] >= 50.0
    assert plane.writer is not None and plane.writer.flush(30.0)
    a, b = store.time_range()
    assert store.query("controller.report_ms", a, b + 1)["value"].iloc[-1] >= 50.0
    plane.writer.close()


def test_server_caps_are_stored_when_they_change_a_bounded_share_a_period(
        demo_site: SiteConfig, demo_topo: Topology, tmp_path: Path) -> None:
    site = demo_site.model_copy(update={"controller": demo_site.controller.model_copy(
        update={"period_s": 1.0, "node_caps_every_s": 4.0})})
    clock = ManualClock()
    plane = ControlPlane(site, demo_topo, clock, EmbeddedStore(tmp_path), threaded_store=False)
    n = demo_topo.node_first_gpu.size
    stored: list[np.ndarray] = []
    for k in range(8):  # every server's cap moves every period: a quarter of them are stored in each
        plane._applied = np.full(demo_topo.n_gpus, 600.0 + 10 * k)
        b = plane._node_caps(clock.now_ns() + k)
        assert len(b) == -(-n // 4) == np.unique(b.series).size
        stored.append(b.series)
    # Those stored longest ago first: every server within the interval.
    assert np.unique(np.concatenate(stored[:4])).size == np.unique(np.concatenate(stored[4:])).size == n
    # Once caught up, a lone change is stored at once.
    plane._applied = caps = np.full(demo_topo.n_gpus, 670.0)
    while len(plane._node_caps(clock.now_ns() + 8)):
        pass
    caps = caps.copy()
    caps[demo_topo.node_first_gpu[5]:demo_topo.node_first_gpu[6]] = 500.0
    plane._applied = caps
    b = plane._node_caps(clock.now_ns() + 9)
    assert len(b) == 1 and b.value.tolist() == [500.0]
