"""When the controller sends a node a cap command, and what it sends: plain values, no broker."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from controllers.actuation.messages import CapCommand, SiteKey, caps_topic, verify_command
from controllers.actuation.publisher import CapPublisher
from controllers.loop import ControlLoop
from controllers.plan import CapPlan
from models.clock import NS_PER_S
from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_NODE, Topology

KEY = SiteKey(b"p" * 32)
T0 = 1_780_000_000 * NS_PER_S


@pytest.fixture(scope="module")
def base_plan(demo_site: SiteConfig, demo_topo: Topology) -> CapPlan:
    """A real plan of the demo hall (no telemetry yet), whose caps the tests replace."""
    return ControlLoop(demo_site, demo_topo, SiteState(demo_topo, SeriesRegistry())).step(T0)


def site_with(site: SiteConfig, **actuation: Any) -> SiteConfig:
    return site.model_copy(update={"actuation": site.actuation.model_copy(update=actuation)})


def plan(base: CapPlan, caps_w: np.ndarray, ts_ns: int, plan_id: int = 1) -> CapPlan:
    return replace(base, caps_w=np.asarray(caps_w, np.float64), ts_ns=ts_ns, plan_id=plan_id)


def nodes_of(cmds: list[tuple[int, CapCommand]]) -> list[int]:
    return [k for k, _ in cmds]


def test_quantize_rounds_down_never_above_the_plan(demo_site: SiteConfig, demo_topo: Topology) -> None:
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    n = demo_topo.n_gpus
    caps = np.full(n, 700.0)
    caps[:6] = [879.9, 880.0, 305.0, 300.0, 719.99, 710.0]
    q = pub.quantize(caps)
    assert q[:6].tolist() == [870.0, 880.0, 300.0, 300.0, 710.0, 710.0]
    # Float noise just under a quantum step costs the noise, not a whole step (and is still not above the plan).
    noisy = 700.0 - 1e-12
    assert pub.quantize(np.full(n, noisy))[0] == noisy


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_quantize_property(demo_site: SiteConfig, demo_topo: Topology, data: st.DataObject) -> None:
    quantum = data.draw(st.sampled_from([0.0, 1.0, 7.5, 10.0, 50.0]))
    pub = CapPublisher(site_with(demo_site, quantum_w=quantum), demo_topo, KEY, lambda t, p: None)
    t = demo_topo
    frac = data.draw(hnp.arrays(np.float64, t.n_gpus, elements=st.floats(0, 1)))
    caps = t.gpu_min_w + frac * (t.gpu_max_w - t.gpu_min_w)
    q = pub.quantize(caps)
    assert (q <= caps + 1e-9).all()  # never above the plan
    assert (q >= t.gpu_min_w).all()  # never below the board's floor
    assert (q > caps - max(quantum, 1e-9) - 1e-6).all()  # at most one quantum lower
    assert (q[caps >= t.gpu_max_w] == t.gpu_max_w[caps >= t.gpu_max_w]).all()


def test_first_plan_reaches_every_node_with_verifiable_commands(demo_site: SiteConfig, demo_topo: Topology,
                                                                base_plan: CapPlan) -> None:
    sent: list[tuple[str, bytes]] = []
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: sent.append((t, p)))
    caps = np.full(demo_topo.n_gpus, 655.0)
    assert pub.publish(plan(base_plan, caps, T0, 4), T0) == demo_topo.count(L_NODE)
    nodes = demo_topo.ids(L_NODE)
    assert [t for t, _ in sent] == [caps_topic("powerplane", "demo-hall", n) for n in nodes]
    seqs = []
    for (_t, payload), node in zip(sent, nodes, strict=True):
        g = demo_topo.node_gpus[nodes.index(node)]
        cmd = verify_command(payload, KEY, site="demo-hall", node=node, now_ns=T0, last_seq=0,
                             min_w=[300.0] * g, max_w=[880.0] * g)
        assert isinstance(cmd, CapCommand), cmd
        assert cmd.caps_w == (650.0,) * g and cmd.plan_id == 4
        assert cmd.expires_ns == T0 + int(demo_site.actuation.lease_s * NS_PER_S) and cmd.issued_ns == T0
        seqs.append(cmd.seq)
    assert seqs == sorted(set(seqs)) and seqs[0] >= T0  # strictly rising, at least the issue time
    assert pub.stats.commands == len(nodes) and pub.stats.plans == 1
    pub.enabled = False
    assert pub.publish(plan(base_plan, caps - 100, T0 + NS_PER_S), T0 + NS_PER_S) == 0
    assert len(sent) == len(nodes)


def test_cut_always_sends_small_raise_waits_big_raise_is_paced(demo_site: SiteConfig, demo_topo: Topology,
                                                             base_plan: CapPlan) -> None:
    cfg = demo_site.actuation
    assert (cfg.quantum_w, cfg.raise_deadband_w, cfg.raise_every_s) == (10.0, 20.0, 2.0)
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    caps = np.full(demo_topo.n_gpus, 700.0)
    assert len(pub.commands(plan(base_plan, caps, T0), T0)) == demo_topo.count(L_NODE)
    # A cut of one GPU by one quantum goes out at once, a fraction of a second after the last command.
    t = T0 + NS_PER_S // 10
    caps[5] = 690.0
    cmds = pub.commands(plan(base_plan, caps, t), t)
    assert nodes_of(cmds) == [1] and cmds[0][1].caps_w == (700.0, 690.0, 700.0, 700.0)
    assert pub.stats.lowered == demo_topo.count(L_NODE) + 1
    # Any cut, however small, is sent when it crosses a quantum (the sent cap must not exceed the plan).
    caps[9] = 699.5
    cmds = pub.commands(plan(base_plan, caps, t), t)
    assert nodes_of(cmds) == [2] and cmds[0][1].caps_w[1] == 690.0
    # A raise within the deadband waits, even when pacing allows it...
    t2 = T0 + 3 * NS_PER_S
    caps[0] = 710.0
    assert pub.commands(plan(base_plan, caps, t2), t2) == []
    # ...a big one waits for pacing (raise_every_s after the node's last command), then goes.
    caps[12] = 800.0  # node 3, last commanded at T0
    t3, t3b = T0 + NS_PER_S, T0 + 2 * NS_PER_S
    pub2 = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    base = np.full(demo_topo.n_gpus, 700.0)
    pub2.commands(plan(base_plan, base, T0), T0)
    up = base.copy()
    up[12] = 800.0
    assert pub2.commands(plan(base_plan, up, t3), t3) == []
    cmds = pub2.commands(plan(base_plan, up, t3b), t3b)
    assert nodes_of(cmds) == [3] and cmds[0][1].caps_w == (800.0, 700.0, 700.0, 700.0)
    assert pub2.stats.raised == 1


def test_back_to_the_ceiling_is_sent_even_within_the_deadband(demo_site: SiteConfig, demo_topo: Topology,
                                                            base_plan: CapPlan) -> None:
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    caps = np.full(demo_topo.n_gpus, 870.0)
    pub.commands(plan(base_plan, caps, T0), T0)
    caps[0] = 880.0
    t = T0 + 3 * NS_PER_S
    cmds = pub.commands(plan(base_plan, caps, t), t)
    assert nodes_of(cmds) == [0] and cmds[0][1].caps_w[0] == 880.0


def test_unchanged_caps_are_renewed_before_the_lease_runs_out(demo_site: SiteConfig, demo_topo: Topology,
                                                             base_plan: CapPlan) -> None:
    site = site_with(demo_site, lease_s=6.0, renew_s=4.0)
    pub = CapPublisher(site, demo_topo, KEY, lambda t, p: None)
    caps = np.full(demo_topo.n_gpus, 700.0)
    n = demo_topo.count(L_NODE)
    first = pub.commands(plan(base_plan, caps, T0), T0)
    assert len(first) == n
    for s in (1, 2, 3, 3.999):
        t = T0 + int(s * NS_PER_S)
        assert pub.commands(plan(base_plan, caps, t), t) == []
    t = T0 + 4 * NS_PER_S
    renew = pub.commands(plan(base_plan, caps, t), t)
    assert len(renew) == n and pub.stats.renewed == n
    assert all(c.expires_ns == t + 6 * NS_PER_S for _, c in renew)
    assert min(c.seq for _, c in renew) > max(c.seq for _, c in first)
    assert (pub.expires_ns == t + 6 * NS_PER_S).all()


def test_renew_every_defaults_to_half_the_lease(demo_site: SiteConfig) -> None:
    assert site_with(demo_site, lease_s=10.0).actuation.renew_every_s == 5.0


@settings(max_examples=25, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 2**31 - 1)), min_size=1, max_size=8))
def test_what_was_sent_never_exceeds_the_current_plan(demo_site: SiteConfig, demo_topo: Topology,
                                                      base_plan: CapPlan, steps: list[tuple[float, int]]) -> None:
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    t = demo_topo
    now = T0
    for dt_s, seed in steps:
        now += int(dt_s * NS_PER_S)
        rng = np.random.default_rng(seed)
        caps = rng.uniform(t.gpu_min_w, t.gpu_max_w)
        caps[rng.random(t.n_gpus) < 0.3] = t.gpu_max_w[0]
        pub.commands(plan(base_plan, caps, now), now)
        # Whatever a node holds now is at or under this period's plan: cuts are never deferred.
        assert (pub.sent_w <= caps + 1e-9).all()
