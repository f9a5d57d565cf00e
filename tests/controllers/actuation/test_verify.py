"""Verification with plain values: acknowledgements, settling timed from a draw measured after
the acknowledgement, late and drift non-compliance aggregated per rack, worst-case pins, lease
fallbacks per rack, and the settling histogram."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from controllers.actuation.messages import AgentStatus, SiteKey, open_status, status_topic
from controllers.actuation.publisher import CapPublisher
from controllers.actuation.verify import Verifier, VerifyStats
from controllers.loop import ControlLoop
from controllers.plan import CapPlan
from models.clock import NS_PER_S
from models.events import EV_LEASE_FALLBACK, EV_NON_COMPLIANT
from models.histogram import Histogram
from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_NODE, Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim

KEY = SiteKey(b"v" * 32)
T0 = 1_780_000_000 * NS_PER_S
SETTLE_S = 3.0
SITE = "demo-hall"


@pytest.fixture(scope="module")
def base_plan(demo_site: SiteConfig, demo_topo: Topology) -> CapPlan:
    return ControlLoop(demo_site, demo_topo, SiteState(demo_topo, SeriesRegistry())).step(T0)


def at(s: float) -> int:
    return T0 + int(s * NS_PER_S)


class Rig:
    """A publisher and its verifier over the demo hall; the test plays the agents, through the wire."""

    def __init__(self, site: SiteConfig, topo: Topology, base: CapPlan) -> None:
        site = site.model_copy(update={"actuation": site.actuation.model_copy(update={"settle_s": SETTLE_S})})
        self.topo, self.base = topo, base
        self.pub = CapPublisher(site, topo, KEY, lambda t, p: None, epoch=1)
        self.ver = Verifier(self.pub)
        self.layouts = self.pub.layouts
        self.racks = list(self.layouts.order)
        self.n = topo.count(L_NODE)

    def send(self, caps: np.ndarray | float, now_ns: int) -> None:
        c = np.full(self.topo.n_gpus, caps) if np.isscalar(caps) else np.asarray(caps, np.float64)
        self.pub.commands(replace(self.base, caps_w=c, ts_ns=now_ns), now_ns)

    def node(self, rack: str, k: int) -> int:
        """Server index of rack-local node ``k``."""
        return self.layouts[rack].node0 + k

    def report(self, rack: str, ts_ns: int, nodes: list[int] | None = None, *, mode: str = "controlled",
               enforced: np.ndarray | float | None = None, power: np.ndarray | float = np.nan,
               power_ts_ns: int = 0, since_ns: int = 0, acked: bool = True, safe_cap_w: float = 300.0,
               node_topic: bool = False) -> AgentStatus:
        """A status of ``nodes`` (default: the whole rack) as an agent sends it, decoded as the controller does.

        ``enforced`` defaults to what was sent; ``acked`` reports the rack's newest command, else
        the one before it.
        """
        lay = self.layouts[rack]
        ks = list(range(lay.n_nodes)) if nodes is None else nodes
        gpus = np.concatenate([np.arange(lay.gpu_slice(k).start, lay.gpu_slice(k).stop) for k in ks]) + lay.gpu0
        n = gpus.size
        enf = self.pub.sent_w[gpus] if enforced is None else np.broadcast_to(np.asarray(enforced, np.float64), (n,))
        o = int(self.pub.rack_order[lay.index]) - (0 if acked else 1)
        st = AgentStatus(SITE, rack, ks, ts_ns, mode, since_ns or ts_ns, o >> 40, o & ((1 << 40) - 1), 1,
                         ts_ns + 15 * NS_PER_S, np.array(enf, np.float64),
                         np.broadcast_to(np.asarray(power, np.float64), (n,)).copy(), safe_cap_w=safe_cap_w,
                         power_ts_ns=power_ts_ns)
        topic = status_topic("powerplane", SITE, lay.nodes[ks[0]] if node_topic else rack)
        res = open_status(topic, st.to_json(), self.layouts, site=SITE)
        assert isinstance(res, AgentStatus), res
        self.ver.status(res)
        return res

    def ack_all(self, ts_ns: int, *, power: float = np.nan, power_ts_ns: int = 0) -> None:
        for rack in self.racks:
            self.report(rack, ts_ns, power=power, power_ts_ns=power_ts_ns)

    def check(self, ts_ns: int, draw_w: float | np.ndarray = np.nan) -> tuple[list, np.ndarray]:
        return self.ver.check(ts_ns, np.broadcast_to(np.asarray(draw_w, np.float64), (self.n,)).copy())


@pytest.fixture
def rig(demo_site: SiteConfig, demo_topo: Topology, base_plan: CapPlan) -> Rig:
    return Rig(demo_site, demo_topo, base_plan)


# ---- settling ---------------------------------------------------------------------------------------
def test_settling_is_timed_from_a_draw_measured_after_the_acknowledgement(rig: Rig) -> None:
    rig.send(700.0, T0)
    # The acknowledgement of a cut comes at once, without power (as an agent sends it).
    rig.ack_all(at(0.5))
    events, pinned = rig.check(at(1.0))
    v = rig.ver.stats
    assert events == [] and np.isnan(pinned).all()
    # Never measured: the enforced limit is all there is, and that settles; the settling time is
    # the actuation lag, from the cut to the acknowledgement (not to this check).
    assert v.settled == rig.n and v.settle.n == rig.n and v.settle.max == 0.5


def test_an_older_draw_neither_settles_nor_condemns(rig: Rig) -> None:
    rig.send(880.0, T0)
    rig.ack_all(at(0.2), power=860.0, power_ts_ns=at(0.2))  # drawing under 880 W: settles
    rig.check(at(0.5))
    assert rig.ver.stats.settled == rig.n
    rig.send(600.0, at(1))  # a cut
    rig.ack_all(at(1.2))  # acknowledged at once, without power: the last draw (860 W) is older
    events, pinned = rig.check(at(1.5))
    assert events == [] and np.isnan(pinned).all() and rig.ver.stats.settled == rig.n
    # A heartbeat whose reading was taken before the acknowledgement: still neither.
    rig.ack_all(at(1.6), power=860.0, power_ts_ns=at(1.1))
    events, pinned = rig.check(at(2.0))
    assert events == [] and np.isnan(pinned).all() and rig.ver.stats.settled == rig.n
    # The draw measured after it: settled, timed from the cut to that measurement (1 -> 2.3 s).
    rig.ack_all(at(2.4), power=590.0, power_ts_ns=at(2.3))
    events, _ = rig.check(at(2.5))
    assert events == [] and rig.ver.stats.settled == 2 * rig.n
    assert rig.ver.stats.settle.max == pytest.approx(1.3) and rig.ver.stats.settle.percentile(95) == pytest.approx(1.3)


@pytest.mark.parametrize("old_draw_w", [550.0, 860.0])
def test_without_a_draw_after_the_acknowledgement_a_node_is_late_and_says_why(rig: Rig, old_draw_w: float) -> None:
    rig.send(880.0, T0)
    rig.ack_all(at(0.2), power=old_draw_w, power_ts_ns=at(0.2))
    rig.check(at(0.5))
    rig.send(600.0, at(1))
    rig.ack_all(at(1.2))  # acknowledged and enforced; no draw measured since
    events, pinned = rig.check(at(1 + SETTLE_S), old_draw_w)
    assert [e.entity for e, _ in events] == rig.racks
    assert {tuple(d["reasons"].items()) for _, d in events} == {(("no draw measured since acknowledging", 144),)}
    assert (pinned == max(old_draw_w, 600.0)).all()


def test_a_fresh_draw_still_over_the_cap_does_not_settle_until_it_follows(rig: Rig) -> None:
    rig.send(700.0, T0)
    rig.ack_all(at(0.3), power=690.0, power_ts_ns=at(0.3))
    n1 = rig.node("r02", 7)
    # r02 node 7 acknowledged and enforces, but its GPUs have not come down yet.
    rig.report("r02", at(0.4), [7], power=800.0, power_ts_ns=at(0.4), node_topic=True)
    events, _ = rig.check(at(1))
    assert events == [] and rig.ver.stats.settled == rig.n - 1 and rig.ver.bad.sum() == 0
    rig.report("r02", at(1.9), [7], power=705.0, power_ts_ns=at(1.9), node_topic=True)  # within the overdraw share
    rig.check(at(2))
    assert rig.ver.stats.settled == rig.n and rig.ver.settled_order[n1] == rig.pub.lowered_order[n1]
    assert rig.ver.stats.settle.max == pytest.approx(1.9)  # the cut to the draw that followed it


# ---- non-compliance, per rack ------------------------------------------------------------------------
def test_late_nodes_are_one_event_per_rack_with_the_node_list(rig: Rig) -> None:
    rig.send(700.0, T0)
    for rack in rig.racks:
        if rack == "r01":
            rig.report(rack, at(0.5), [k for k in range(144) if k not in (3, 4, 5)])
        elif rack == "r03":
            rig.report(rack, at(0.5), list(range(1, 144)))
            rig.report(rack, at(0.5), [0], acked=False, enforced=880.0)  # still on the previous command
        else:
            rig.report(rack, at(0.5))
    # r01 node 4 said something earlier: an old command, 880 W enforced.
    rig.report("r01", at(0.2), [4], acked=False, enforced=880.0, node_topic=True)
    draw = np.full(rig.n, 650.0)
    draw[rig.node("r01", 3)] = np.nan
    draw[rig.node("r01", 4)] = 650.0
    draw[rig.node("r01", 5)] = 720.0
    events, pinned = rig.check(at(SETTLE_S - 0.01), draw)
    assert events == [] and np.isnan(pinned).all()  # still within settle_s
    events, pinned = rig.check(at(SETTLE_S), draw)
    assert [(e.kind, e.entity, e.severity, e.fields["value"]) for e, _ in events] == [
        (EV_NON_COMPLIANT, "r01", "error", 3.0), (EV_NON_COMPLIANT, "r03", "error", 1.0)]
    (e1, d1), (_e3, d3) = events
    assert d1 == {"rack": "r01", "nodes": ["r01/node-003", "r01/node-004", "r01/node-005"],
                  "reasons": {"no acknowledgement": 3}}
    assert d3["nodes"] == ["r03/node-000"] and d3["reasons"] == {"no acknowledgement": 1}
    assert "r01/node-003, r01/node-004, r01/node-005" in e1.message and "within 3 s" in e1.message
    # Worst case: fmax(draw, reported enforced); +inf (its ceiling) when neither is known.
    k3, k4, k5 = (rig.node("r01", k) for k in (3, 4, 5))
    assert pinned[k3] == np.inf and pinned[k4] == 880.0 and pinned[k5] == 720.0
    assert pinned[rig.node("r03", 0)] == 880.0
    assert np.isnan(np.delete(pinned, [k3, k4, k5, rig.node("r03", 0)])).all()
    v = rig.ver.stats
    assert v.noncompliant_now == 4 and v.noncompliant_episodes == 4
    # Once per episode: the next checks stay silent, the pins stay.
    events, pinned2 = rig.check(at(SETTLE_S + 5), draw)
    assert events == [] and np.array_equal(pinned, pinned2, equal_nan=True)
    # r01 node 4 complies: its episode ends, its pin goes.
    rig.report("r01", at(9), [4], power=690.0, power_ts_ns=at(9), node_topic=True)
    events, pinned = rig.check(at(9), draw)
    assert events == [] and np.isnan(pinned[k4]) and v.noncompliant_now == 3
    # A new cut it misses again is a new episode.
    caps = np.full(rig.topo.n_gpus, 700.0)
    g = rig.layouts["r01"].gpu0 + rig.layouts["r01"].gpu_slice(4).start
    caps[g:g + 4] = 600.0
    rig.send(caps, at(10))
    events, _ = rig.check(at(10 + SETTLE_S), draw)
    assert [(e.entity, d["nodes"]) for e, d in events] == [("r01", ["r01/node-004"])]
    assert v.noncompliant_episodes == 5


def test_enforcing_above_the_cap_or_drawing_over_it_is_noncompliant(rig: Rig) -> None:
    rig.send(700.0, T0)
    rig.ack_all(at(0.5), power=650.0, power_ts_ns=at(0.5))
    enf = np.full(4, 700.0)
    enf[2] = 760.0
    rig.report("r02", at(0.6), [2], enforced=enf, power=650.0, power_ts_ns=at(0.6), node_topic=True)
    rig.report("r02", at(0.6), [9], power=760.0, power_ts_ns=at(0.6), node_topic=True)
    rig.report("r06", at(0.6), [0], enforced=np.array([700.0, np.nan, 700.0, 700.0]), power=650.0,
               power_ts_ns=at(0.6), node_topic=True)  # an unknown enforced limit is not compliance
    draw = np.full(rig.n, 650.0)
    draw[rig.node("r02", 9)] = 760.0
    events, pinned = rig.check(at(SETTLE_S), draw)
    by = {e.entity: d for e, d in events}
    assert by.keys() == {"r02", "r06"}
    assert by["r02"]["nodes"] == ["r02/node-002", "r02/node-009"]
    assert by["r02"]["reasons"] == {"enforced limit above the cap": 1, "draws over its cap": 1}
    assert by["r06"]["reasons"] == {"enforced limit above the cap": 1}
    over = next(e for e, _ in events if e.entity == "r02").fields["over_w"]
    assert over == pytest.approx(60.0 * 4)  # 760 W drawn against 700 W, four GPUs
    assert pinned[rig.node("r02", 2)] == 760.0 and pinned[rig.node("r02", 9)] == 760.0
    assert pinned[rig.node("r06", 0)] == 700.0


def test_a_settled_node_that_drifts_over_its_cap_is_caught_without_a_new_cut(rig: Rig) -> None:
    rig.send(700.0, T0)
    rig.ack_all(at(0.5), power=650.0, power_ts_ns=at(0.5))
    rig.check(at(1))
    assert rig.ver.stats.settled == rig.n
    rig.report("r07", at(4), [11], power=790.0, power_ts_ns=at(4), node_topic=True)
    draw = np.full(rig.n, 650.0)
    draw[rig.node("r07", 11)] = 800.0
    events, pinned = rig.check(at(4.1), draw)
    assert [(e.entity, d["nodes"], d["reasons"]) for e, d in events] == [
        ("r07", ["r07/node-011"], {"draws over its cap": 1})]
    assert "had settled" in events[0][0].message
    assert pinned[rig.node("r07", 11)] == 800.0  # the higher of the two draws it reported
    # It comes back under: the episode ends.
    rig.report("r07", at(5), [11], power=690.0, power_ts_ns=at(5), node_topic=True)
    events, pinned = rig.check(at(5.1), draw)
    assert events == [] and np.isnan(pinned).all() and rig.ver.stats.noncompliant_now == 0


def test_many_nodes_of_one_rack_are_one_event(rig: Rig) -> None:
    rig.send(700.0, T0)
    for rack in rig.racks:
        rig.report(rack, at(0.5), list(range(100)) if rack == "r08" else None)
    events, pinned = rig.check(at(SETTLE_S))
    assert [(e.entity, len(d["nodes"])) for e, d in events] == [("r08", 44)]
    assert events[0][0].message.count("r08/node-") == 5 and " ..." in events[0][0].message
    assert np.isinf(pinned[rig.node("r08", 100):rig.node("r08", 144)]).all()


# ---- lease fallbacks, per rack ----------------------------------------------------------------------
def test_fallbacks_are_one_event_per_rack_with_the_node_list(rig: Rig) -> None:
    rig.send(700.0, T0)
    rig.ack_all(at(0.5))
    assert rig.ver.fallback_events() == []
    rig.report("r02", at(20), [0, 1, 2], mode="fallback", since_ns=at(15.5), enforced=300.0)
    rig.report("r05", at(20), mode="fallback", since_ns=at(15.7), enforced=300.0)
    rig.report("r05", at(21), mode="fallback", since_ns=at(15.7), enforced=300.0)  # a heartbeat: nothing new
    events = rig.ver.fallback_events()
    assert [(e.kind, e.entity, e.ts_ns, e.fields["value"], e.fields["safe_cap_w"]) for e, _ in events] == [
        (EV_LEASE_FALLBACK, "r02", at(15.5), 3.0, 300.0), (EV_LEASE_FALLBACK, "r05", at(15.7), 144.0, 300.0)]
    assert events[0][1] == {"rack": "r02", "nodes": ["r02/node-000", "r02/node-001", "r02/node-002"]}
    assert len(events[1][1]["nodes"]) == 144
    assert rig.ver.fallback_events() == [] and rig.ver.stats.fallbacks == 147
    rig.report("r02", at(25), mode="fallback", since_ns=at(15.5), enforced=300.0)  # the rest of r02
    events = rig.ver.fallback_events()
    assert [(e.entity, len(d["nodes"])) for e, d in events] == [("r02", 141)]
    # A node in fallback (at or under its cap) is not non-compliant.
    rig.check(at(26))
    assert rig.ver.stats.modes == {"controlled": 1152 - 288, "fallback": 288} and rig.ver.stats.noncompliant_now == 0
    # Back under control, then fallen back again: a new event.
    rig.send(650.0, at(30))
    rig.report("r02", at(30.1), [0], since_ns=at(30.1), node_topic=True)
    assert rig.ver.controlled_ns[rig.node("r02", 0)] == at(30.1)
    rig.report("r02", at(50), [0], mode="fallback", since_ns=at(45), enforced=300.0, node_topic=True)
    events = rig.ver.fallback_events()
    assert [(e.entity, d["nodes"]) for e, d in events] == [("r02", ["r02/node-000"])]
    assert rig.ver.stats.fallbacks == 147 + 141 + 1


def test_modes_count_nodes_never_heard_from_as_unknown(rig: Rig) -> None:
    rig.send(700.0, T0)
    rig.report("r01", at(0.5))
    rig.report("r02", at(0.5), [0], mode="starting", node_topic=True)
    rig.check(at(1))
    assert rig.ver.stats.modes == {"starting": 1, "controlled": 144, "unknown": 1152 - 145}


# ---- the histogram ----------------------------------------------------------------------------------
def test_histogram_percentiles_are_exact_to_a_bin() -> None:
    h = Histogram(bin_s=0.05, top_s=10.0)
    assert h.n == 0 and np.isnan(h.percentile(50)) and np.isnan(h.max)
    assert all(np.isnan(x) for x in VerifyStats().settle_percentiles())
    rng = np.random.default_rng(3)
    values = rng.uniform(0.0, 4.0, 10_000)
    h.add(values)
    h.add(np.zeros(0))
    assert h.n == 10_000 and h.max == values.max()
    for q in (5, 50, 95, 99):
        assert abs(h.percentile(q) - np.percentile(values, q)) <= 0.05 + 1e-9
    assert h.percentile(100) == values.max()  # never past the max


def test_histogram_overflow_merge_and_json_round_trip() -> None:
    a, b = Histogram(0.1, 2.0), Histogram(0.1, 2.0)
    a.add(np.array([0.05, 0.15, 0.25]))
    b.add(np.array([1.0, 1.05, 50.0]))  # 50 s lands in the overflow bin
    assert b.counts[-1] == 1 and b.max == 50.0 and b.percentile(100) == 50.0
    merged = Histogram.from_json(a.to_json())
    merged.merge(b)
    assert merged.n == 6 and merged.max == 50.0
    assert merged.percentile(50) == pytest.approx(0.3)
    again = Histogram.from_json(merged.to_json())
    assert np.array_equal(again.counts, merged.counts) and again.max == merged.max
    empty = Histogram(0.1, 2.0)
    empty.merge(Histogram(0.1, 2.0))
    assert empty.n == 0 and np.isnan(empty.max) and empty.to_json()["max"] is None
    # Bins past a smaller histogram's top go to its overflow bin.
    small = Histogram.from_json({"bin_s": 0.1, "top_s": 0.5, "max": 1.0, "bins": {"10": 2}})
    assert small.counts[-1] == 2 and small.n == 2


# ---- the control loop takes the pins ----------------------------------------------------------------
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
    for period in range(6):
        state.ingest(feed.batch())
        plan = loop.step(sim.now_ns, pinned if period >= 2 else None)
        assert plan.violations(t, of="caps") == []
        if period >= 2:
            for k, v in [*pins.items(), (200, np.inf)]:
                got = plan.accounted_w[first[k]:first[k] + int(t.node_gpus[k])]
                assert np.allclose(got, float(np.clip(v, lo_w, hi_w))), (k, v, got)
        sim.set_caps(plan.caps_w)
        for _ in range(per):
            sim.step()

