"""Verification with plain values: acknowledgements, settling, non-compliance, worst-case pins,
lease fallbacks, and the control loop accounting a pinned node."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from controllers.actuation.messages import AgentStatus, SiteKey
from controllers.actuation.publisher import CapPublisher
from controllers.actuation.verify import Verifier
from controllers.loop import ControlLoop
from controllers.plan import CapPlan
from models.clock import NS_PER_S
from models.events import EV_LEASE_FALLBACK, EV_NON_COMPLIANT
from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_NODE, Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim

KEY = SiteKey(b"v" * 32)
T0 = 1_780_000_000 * NS_PER_S
SETTLE_S = 3.0


@pytest.fixture(scope="module")
def base_plan(demo_site: SiteConfig, demo_topo: Topology) -> CapPlan:
    return ControlLoop(demo_site, demo_topo, SiteState(demo_topo, SeriesRegistry())).step(T0)


class Rig:
    """A publisher and its verifier over the demo hall; the test plays the agents."""

    def __init__(self, site: SiteConfig, topo: Topology, base: CapPlan) -> None:
        site = site.model_copy(update={"actuation": site.actuation.model_copy(update={"settle_s": SETTLE_S})})
        self.topo, self.base = topo, base
        self.pub = CapPublisher(site, topo, KEY, lambda t, p: None)
        self.ver = Verifier(self.pub)
        self.nodes = topo.ids(L_NODE)
        self.n = len(self.nodes)

    def send(self, caps: np.ndarray, now_ns: int) -> None:
        self.pub.commands(replace(self.base, caps_w=caps, ts_ns=now_ns), now_ns)

    def status(self, k: int, ts_ns: int, *, mode: str = "controlled", enforced: list[float | None] | None = None,
               seq: int | None = None, since_ns: int = 0) -> AgentStatus:
        lo, hi = int(self.pub.first[k]), int(self.pub.first[k] + self.pub.count[k])
        enf: list[float | None] = enforced if enforced is not None else self.pub.sent_w[lo:hi].tolist()
        return AgentStatus(site="demo-hall", node=self.nodes[k], ts_ns=ts_ns, mode=mode,  # type: ignore[arg-type]
                           seq=int(self.pub.seq[k]) if seq is None else seq, plan_id=1,
                           requested_w=self.pub.sent_w[lo:hi].tolist(), enforced_w=enf, power_w=[],
                           apply_ms=1.0, applied_ns=ts_ns, lease_expires_ns=ts_ns + 15 * NS_PER_S,
                           safe_cap_w=300.0, backend="test", rejected={}, mode_since_ns=since_ns)

    def ack_all(self, ts_ns: int, skip: tuple[int, ...] = ()) -> None:
        for k in range(self.n):
            if k not in skip:
                assert self.ver.status(self.status(k, ts_ns)) == []

    def draw(self, per_gpu_w: float = 500.0) -> np.ndarray:
        return np.full(self.n, per_gpu_w)


@pytest.fixture
def rig(demo_site: SiteConfig, demo_topo: Topology, base_plan: CapPlan) -> Rig:
    return Rig(demo_site, demo_topo, base_plan)


def at(s: float) -> int:
    return T0 + int(s * NS_PER_S)


def test_ack_enforced_and_draw_settle_with_the_settling_time(rig: Rig) -> None:
    rig.send(np.full(rig.topo.n_gpus, 700.0), T0)
    rig.ack_all(at(0.5))
    events, pinned = rig.ver.check(at(1.25), rig.draw(650.0))
    assert events == [] and np.isnan(pinned).all()
    v = rig.ver.stats
    assert v.settled == rig.n and set(v.settle_s) == {1.25} and v.settle_percentiles() == (1.25, 1.25, 1.25)
    assert v.noncompliant_now == 0 and v.modes == {"controlled": rig.n}
    # Settled once: later checks do not count it again.
    rig.ver.check(at(2), rig.draw(650.0))
    assert v.settled == rig.n


def test_a_draw_still_over_the_cap_is_not_settled(rig: Rig) -> None:
    rig.send(np.full(rig.topo.n_gpus, 700.0), T0)
    rig.ack_all(at(0.5))
    draw = rig.draw(650.0)
    draw[7] = 800.0  # acknowledged and enforced, but the GPUs have not come down yet
    events, _ = rig.ver.check(at(1), draw)
    assert events == [] and rig.ver.stats.settled == rig.n - 1
    draw[7] = 690.0
    rig.ver.check(at(2), draw)
    assert rig.ver.stats.settled == rig.n and max(rig.ver.stats.settle_s) == 2.0


def test_settle_percentiles_are_nan_before_the_first() -> None:
    from controllers.actuation.verify import VerifyStats

    assert all(np.isnan(x) for x in VerifyStats().settle_percentiles())


def test_missing_ack_is_noncompliant_once_per_episode_and_pinned_at_worst_case(rig: Rig) -> None:
    rig.send(np.full(rig.topo.n_gpus, 700.0), T0)
    rig.ack_all(at(0.5), skip=(3, 4, 5))
    # Node 4 said something earlier (an old seq, 880 W enforced), node 5 only has a measured draw.
    rig.ver.status(rig.status(4, at(0.2), seq=1, enforced=[880.0] * 4))
    draw = rig.draw(600.0)
    draw[3] = np.nan
    draw[4] = 650.0
    draw[5] = 720.0
    events, pinned = rig.ver.check(at(SETTLE_S - 0.01), draw)
    assert events == [] and np.isnan(pinned).all()  # still within settle_s
    events, pinned = rig.ver.check(at(SETTLE_S), draw)
    assert [(e.kind, e.entity, e.severity) for e in events] == [
        (EV_NON_COMPLIANT, rig.nodes[k], "error") for k in (3, 4, 5)]
    assert all("no acknowledgement" in e.message for e in events)
    assert events[2].fields["value"] == pytest.approx(20.0 * 4)  # 720 W drawn against 700 W, four GPUs
    # Worst case: fmax(draw, reported enforced); +inf when neither is known.
    assert pinned[3] == np.inf and pinned[4] == 880.0 and pinned[5] == 720.0
    assert np.isnan(np.delete(pinned, [3, 4, 5])).all()
    assert rig.ver.stats.noncompliant_now == 3 and rig.ver.stats.noncompliant_episodes == 3
    # Once per episode: the next checks stay silent, the pins stay.
    events, pinned2 = rig.ver.check(at(SETTLE_S + 5), draw)
    assert events == [] and np.array_equal(pinned, pinned2, equal_nan=True)
    # Node 4 complies: its episode ends, its pin goes.
    rig.ver.status(rig.status(4, at(9)))
    draw[4] = 690.0
    events, pinned = rig.ver.check(at(9), draw)
    assert events == [] and np.isnan(pinned[4]) and rig.ver.stats.noncompliant_now == 2
    assert rig.ver.reason.keys() == {3, 5}
    # A new cut it misses again is a new episode.
    caps = np.full(rig.topo.n_gpus, 700.0)
    caps[16:20] = 600.0
    rig.send(caps, at(10))
    events, _ = rig.ver.check(at(10 + SETTLE_S), draw)
    assert [e.entity for e in events] == [rig.nodes[4]] and rig.ver.stats.noncompliant_episodes == 4


def test_enforcing_above_the_cap_or_drawing_over_it_is_noncompliant(rig: Rig) -> None:
    rig.send(np.full(rig.topo.n_gpus, 700.0), T0)
    rig.ack_all(at(0.5))
    rig.ver.status(rig.status(2, at(0.6), enforced=[700.0, 700.0, 760.0, 700.0]))
    draw = rig.draw(650.0)
    draw[9] = 760.0
    events, pinned = rig.ver.check(at(SETTLE_S), draw)
    by = {e.entity: e.message for e in events}
    assert by.keys() == {rig.nodes[2], rig.nodes[9]}
    assert "enforced limit above the cap" in by[rig.nodes[2]] and "draws over its cap" in by[rig.nodes[9]]
    assert pinned[2] == 760.0 and pinned[9] == 760.0
    # A settled node that drifts over its cap later is caught too (no new cut needed).
    draw[9] = 650.0
    rig.ver.check(at(SETTLE_S + 1), draw)
    draw[11] = 790.0
    events, pinned = rig.ver.check(at(SETTLE_S + 2), draw)
    assert [e.entity for e in events] == [rig.nodes[11]] and pinned[11] == 790.0


def test_an_unknown_enforced_limit_is_not_compliance(rig: Rig) -> None:
    rig.send(np.full(rig.topo.n_gpus, 700.0), T0)
    rig.ack_all(at(0.5))
    rig.ver.status(rig.status(6, at(0.6), enforced=[700.0, None, 700.0, 700.0]))
    events, pinned = rig.ver.check(at(SETTLE_S), rig.draw(650.0))
    assert [e.entity for e in events] == [rig.nodes[6]] and pinned[6] == 700.0


def test_fallback_status_raises_lease_fallback_once(rig: Rig) -> None:
    rig.send(np.full(rig.topo.n_gpus, 700.0), T0)
    rig.ack_all(at(0.5))
    ev = rig.ver.status(rig.status(8, at(20), mode="fallback", since_ns=at(15.5)))
    assert [(e.kind, e.entity, e.ts_ns, e.fields["value"]) for e in ev] == [
        (EV_LEASE_FALLBACK, rig.nodes[8], at(15.5), 300.0)]
    assert rig.ver.status(rig.status(8, at(25), mode="fallback", since_ns=at(15.5))) == []
    assert rig.ver.stats.fallbacks == 1 and rig.ver.fallback_ns[8] == at(15.5)
    rig.ver.status(rig.status(8, at(30), since_ns=at(29)))
    assert rig.ver.controlled_ns[8] == at(29)
    assert len(rig.ver.status(rig.status(8, at(50), mode="fallback", since_ns=at(45)))) == 1
    assert rig.ver.stats.fallbacks == 2


def test_statuses_of_strangers_are_counted_as_bad(rig: Rig) -> None:
    st = rig.status(0, at(1))
    assert rig.ver.status(replace(st, node="r99/node-000")) == []
    assert rig.ver.status(replace(st, site="other")) == []
    assert rig.ver.stats.bad_statuses == 2 and rig.ver.stats.statuses == 0


def test_control_loop_accounts_a_pinned_node_at_its_pin(demo_site: SiteConfig, demo_topo: Topology) -> None:
    reg = SeriesRegistry()
    sim = TwinSim(demo_site, demo_topo, start_ns=T0)
    feed = TwinFeed(sim, demo_site.site.name, registry=reg)
    state = SiteState(demo_topo, reg)
    loop = ControlLoop(demo_site, demo_topo, state, registry=reg)
    t = demo_topo
    n = t.count(L_NODE)
    first = t.node_first_gpu.astype(int)
    lo_w, hi_w = float(t.gpu_min_w[0]), float(t.gpu_max_w[0])
    pins = {0: 750.0, 1: 100.0, 2: np.inf, 3: 400.0, 500: np.inf, 1000: 880.0}
    pinned = np.full(n, np.nan)
    # A whole rack's worth of unknown nodes at their ceiling stresses the plan.
    pinned[144:288] = np.inf
    for k, v in pins.items():
        pinned[k] = v
    per = round(demo_site.controller.period_s / sim.step_s)
    for period in range(8):
        state.ingest(feed.batch())
        plan = loop.step(sim.now_ns, pinned if period >= 2 else None)
        assert plan.violations(t, of="caps") == []
        if period >= 2:
            for k, v in list(pins.items()) + [(200, np.inf)]:
                got = plan.accounted_w[first[k]:first[k] + int(t.node_gpus[k])]
                want = float(np.clip(v, lo_w, hi_w))
                assert np.allclose(got, want), (k, v, got)
            unpinned = np.isnan(np.repeat(pinned, t.node_gpus))
            assert (plan.caps_w[unpinned] >= lo_w - 1e-9).all() and (plan.caps_w <= hi_w + 1e-9).all()
        sim.set_caps(plan.caps_w)
        for _ in range(per):
            sim.step()
