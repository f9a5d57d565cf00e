"""The whole loop in one process, stepped by hand on a frozen clock: the twin's GPUs <- capping
units (one per rack, an in-memory backend on the twin) <- signed rack commands <- the control
plane (statuses in through the actuator's real inbox, verification, plan, publish).

Two minutes of the demo hall with its demand-response event brought forward (announced at 30 s,
from 60 s on): when the agents follow,
there is not one non-compliance episode, every plan is within limits, the twin never exceeds
one, and settling is measured."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from controllers.actuation.actuator import Actuator
from controllers.actuation.agent import CapUnit
from controllers.actuation.backends import BoardLimits, GpuReading
from controllers.actuation.layout import RackLayout
from controllers.actuation.messages import SiteKey
from models.clock import NS_PER_S, ManualClock
from models.events import EV_LEASE_FALLBACK, EV_NON_COMPLIANT
from models.site import SiteConfig
from models.topology import L_NODE, Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim
from models.twin.truth import Truth
from powerplane.runtime import ControlPlane
from store.embedded import EmbeddedStore

KEY = SiteKey(b"closed-loop-key-0123456789abcdef")
RUN_S = 120
DR_START_S = 60.0
TICK_S = 0.1  # the twin's step; commands and statuses cross the "broker" within one tick


@pytest.fixture(scope="module")
def site(demo_site: SiteConfig) -> SiteConfig:
    """The demo hall with its DR event at 60 s (announced 30 s ahead), so two minutes cover it."""
    (dr,) = demo_site.twin.demand_response
    twin = demo_site.twin.model_copy(update={"demand_response": [dr.model_copy(update={"start_s": DR_START_S,
                                                                                       "notice_s": 30.0})]})
    return demo_site.model_copy(update={"twin": twin})


class TwinGpus:
    """The GPUs of one rack of the twin, set and read in memory (clamped to the board's range)."""

    name = "twin"

    def __init__(self, sim: TwinSim, lay: RackLayout) -> None:
        self.sim = sim
        self.gpus = np.arange(lay.gpu0, lay.gpu0 + lay.n_gpus)
        self.lo, self.hi = lay.min_w, lay.max_w

    async def open(self) -> BoardLimits:
        return BoardLimits(tuple(self.lo.tolist()), tuple(self.hi.tolist()))

    async def apply(self, caps_w: Sequence[float]) -> tuple[float, ...]:
        caps = np.clip(np.asarray(caps_w, np.float64), self.lo, self.hi)
        self.sim.set_caps(caps, self.gpus)
        return tuple(caps.tolist())

    async def read(self) -> GpuReading:
        return GpuReading(tuple(self.sim.gpu_cap_w[self.gpus].tolist()),
                          tuple(self.sim.gpu_power_w[self.gpus].tolist()), self.sim.now_ns)

    async def close(self) -> None:
        pass


class Broker:
    """What the controller publishes (retained rack commands), held until the next tick."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, bytes]] = []
        self.published = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        assert qos == 1 and retain
        self.queued.append((topic, payload))
        self.published += 1
        return self.published


def test_closed_loop_through_the_dr_event(site: SiteConfig, demo_topo: Topology, tmp_path: Path) -> None:
    topo = demo_topo
    clock = ManualClock()
    sim = TwinSim(site, topo, start_ns=clock.now_ns(), seed=7, start_capped=True)
    truth = Truth(sim)
    broker = Broker()
    act = Actuator(site, topo, KEY, None, epoch=1, link=broker)  # type: ignore[arg-type]
    store = EmbeddedStore(tmp_path / "store")
    plane = ControlPlane(site, topo, clock, store, sources=[TwinFeed(sim, site.site.name).batch],
                         actuator=act, threaded_store=False)
    for d in sim.dr_events:  # what the grid topic would have announced
        plane.state.add_dr_event(d)
    cfg = site.actuation
    units = [CapUnit(site.site.name, lay, range(lay.n_nodes), KEY, TwinGpus(sim, lay), clock,
                     act.inbox.put, lease_s=cfg.lease_s, status_every_s=cfg.status_every_s)
             for lay in act.layouts.racks.values()]
    by_topic = {u.topic: u for u in units}
    period = round(site.controller.period_s / TICK_S)
    dr = sim.dr_events[0]
    budgets: list[tuple[int, float]] = []

    async def go() -> None:
        for u in units:
            await u.open()
        for tick in range(1, round(RUN_S / TICK_S) + 1):
            clock.advance(TICK_S)
            sim.advance_to(clock.now_ns())
            queued, broker.queued = broker.queued, []
            for topic, payload in queued:
                res = await by_topic[topic].handle(payload)
                assert not hasattr(res, "reason"), res
            for u in units:
                assert not await u.check_lease()
                await u.heartbeat()
            if tick % period == 0:
                plan = plane.step(clock.now_ns())
                assert plan is not None and plan.violations(topo, of="caps") == []
                budgets.append((clock.now_ns(), plan.budget_w))
        # deliver what the last period sent
        for topic, payload in broker.queued:
            assert not hasattr(await by_topic[topic].handle(payload), "reason")
        broker.queued = []

    asyncio.run(go())
    store.close()

    st, v = plane.stats, act.verifier.stats
    assert st.plans == RUN_S and st.plans_with_violations == 0 and st.control_errors == 0
    # The agents followed: not one non-compliance episode, no fallback, every node controlled.
    assert v.noncompliant_episodes == 0 and st.events[EV_NON_COMPLIANT] == 0 and st.events[EV_LEASE_FALLBACK] == 0
    assert v.modes == {"controlled": topo.count(L_NODE)} and sum(act.rejected.values()) == 0
    assert all(u.mode == "controlled" and not u.stats.rejected and not u.stats.apply_errors for u in units)
    # Settling was measured for the cuts, within the deadline.
    p50, p95, worst = v.settle_percentiles()
    assert v.settled >= topo.count(L_NODE) and v.settle.n == v.settled
    assert 0 < p50 <= p95 <= worst <= cfg.settle_s
    # Messages scale with racks: at most one command per rack per period, and every cut went out.
    assert act.publisher.stats.commands <= RUN_S * len(units) and act.publisher.stats.lowered > 0
    assert broker.published == act.publisher.stats.commands
    # The DR target lowered the budget before the event started, and the twin stayed under it.
    before = [b for ts, b in budgets if ts < dr.start_ns - int(site.controller.dr_lead_s * NS_PER_S)]
    during = [b for ts, b in budgets if ts >= dr.start_ns]
    assert during and max(during) < min(before)
    assert truth.dr_s > 0 and truth.dr_over_s == 0.0
    assert truth.exceeded() == [], truth.exceeded()
    # What the twin's boards enforce is what was last sent.
    np.testing.assert_array_equal(sim.gpu_cap_w, act.publisher.sent_w)
    assert float(np.max(sim.gpu_cap_w)) <= float(np.max(topo.gpu_max_w))


def test_a_rack_whose_agent_stops_is_flagged_once_and_accounted_at_worst_case(
        site: SiteConfig, demo_topo: Topology, tmp_path: Path) -> None:
    """The same loop, but r06's agent stops half a minute in (its GPUs keep their last limits): the
    DR cuts it misses flag its nodes in one event for the rack, the plan accounts them at worst
    case, and neither a plan nor the twin exceeds a limit."""
    topo = demo_topo
    silent_rack, silent_after_s, run_s = "r06", 30.0, 90
    clock = ManualClock()
    sim = TwinSim(site, topo, start_ns=clock.now_ns(), seed=7, start_capped=True)
    truth = Truth(sim)
    broker = Broker()
    act = Actuator(site, topo, KEY, None, epoch=1, link=broker)  # type: ignore[arg-type]
    store = EmbeddedStore(tmp_path / "store")
    plane = ControlPlane(site, topo, clock, store, sources=[TwinFeed(sim, site.site.name).batch],
                         actuator=act, threaded_store=False)
    for d in sim.dr_events:
        plane.state.add_dr_event(d)
    cfg = site.actuation
    units = {lay.rack: CapUnit(site.site.name, lay, range(lay.n_nodes), KEY, TwinGpus(sim, lay), clock,
                               act.inbox.put, lease_s=cfg.lease_s, status_every_s=cfg.status_every_s)
             for lay in act.layouts.racks.values()}
    period = round(site.controller.period_s / TICK_S)
    lay = act.layouts[silent_rack]
    nodes = slice(lay.node0, lay.node0 + lay.n_nodes)
    gpus = slice(lay.gpu0, lay.gpu0 + lay.n_gpus)

    async def go() -> None:
        for u in units.values():
            await u.open()
        for tick in range(1, round(run_s / TICK_S) + 1):
            clock.advance(TICK_S)
            sim.advance_to(clock.now_ns())
            alive = [u for rack, u in units.items() if rack != silent_rack or tick * TICK_S <= silent_after_s]
            queued, broker.queued = broker.queued, []
            for topic, payload in queued:
                for u in alive:
                    if u.topic == topic:
                        await u.handle(payload)
            for u in alive:
                await u.check_lease()
                await u.heartbeat()
            if tick % period == 0:
                plan = plane.step(clock.now_ns())
                assert plan is not None and plan.violations(topo, of="caps") == []

    asyncio.run(go())
    store.close()
    v = act.verifier
    # The DR cut r06 after it went silent: every node of it flagged, in one event for the rack.
    assert act.publisher.lowered_ns[nodes].min() > clock.now_ns() - int((run_s - silent_after_s) * NS_PER_S)
    assert v.stats.noncompliant_episodes == lay.n_nodes and v.bad[nodes].all() and v.stats.noncompliant_now == 144
    flagged = [e for e in plane.recent if e.kind == EV_NON_COMPLIANT]
    assert [(e.entity, e.fields["value"]) for e in flagged] == [(silent_rack, 144.0)]
    assert plane.stats.events[EV_NON_COMPLIANT] == 1
    # Accounted at worst case: at least the limits its GPUs really still hold.
    plan = plane.last_plan
    assert plan is not None
    assert (plan.accounted_w[gpus] >= sim.gpu_cap_w[gpus] - 1e-6).all()
    assert (plan.caps_w[gpus] < sim.gpu_cap_w[gpus]).any()  # what it was asked for and ignored
    assert plane.stats.plans_with_violations == 0 and truth.exceeded() == [], truth.exceeded()
