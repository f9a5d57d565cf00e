"""Which racks get a signed cap command each period, and what it carries: plain values, no broker."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from controllers.actuation.layout import Layouts
from controllers.actuation.messages import CapCommand, SiteKey, caps_topic, order, verify_command
from controllers.actuation.publisher import CapPublisher
from controllers.loop import ControlLoop
from controllers.plan import BIND_NONE, BIND_RAMP, RAMP, CapPlan
from models.clock import NS_PER_S
from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_NODE, L_RACK, Topology

KEY = SiteKey(b"p" * 32)
T0 = 1_780_000_000 * NS_PER_S
SITE = "demo-hall"


@pytest.fixture(scope="module")
def base_plan(demo_site: SiteConfig, demo_topo: Topology) -> CapPlan:
    """A real plan of the demo hall (no telemetry yet), whose caps the tests replace."""
    return ControlLoop(demo_site, demo_topo, SiteState(demo_topo, SeriesRegistry())).step(T0)


@pytest.fixture(scope="module")
def layouts(demo_topo: Topology) -> Layouts:
    """The demo hall's rack layouts."""
    return Layouts(demo_topo)


def site_with(site: SiteConfig, **actuation: Any) -> SiteConfig:
    return site.model_copy(update={"actuation": site.actuation.model_copy(update=actuation)})


def plan(base: CapPlan, caps_w: np.ndarray, ts_ns: int, plan_id: int = 1, **kw: Any) -> CapPlan:
    return replace(base, caps_w=np.asarray(caps_w, np.float64), ts_ns=ts_ns, plan_id=plan_id, **kw)


def racks_of(cmds: list[tuple[int, CapCommand]]) -> list[int]:
    return [r for r, _ in cmds]


def opened(layouts: Layouts, cmd: CapCommand, now_ns: int, lease_s: float, last_order: int = 0) -> CapCommand:
    """What an agent of the command's rack makes of it (after signing and sending)."""
    res = verify_command(cmd.envelope(KEY), KEY, site=SITE, layout=layouts[cmd.rack], now_ns=now_ns,
                         last_order=last_order, lease_s=lease_s)
    assert isinstance(res, CapCommand), res
    return res


# ---- quantization ---------------------------------------------------------------------------------
def test_quantize_rounds_down_never_above_the_plan(demo_site: SiteConfig, demo_topo: Topology) -> None:
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    caps = np.full(demo_topo.n_gpus, 700.0)
    caps[:7] = [879.9, 880.0, 305.0, 300.0, 719.99, 710.0, 900.0]
    q = pub.quantize(caps)
    assert q[:7].tolist() == [870.0, 880.0, 300.0, 300.0, 710.0, 710.0, 880.0]
    # Float noise just under a quantum step costs the noise, not a whole step (and is still not above the plan).
    noisy = 700.0 - 1e-12
    assert pub.quantize(np.full(demo_topo.n_gpus, noisy))[0] == noisy
    exact = CapPublisher(site_with(demo_site, quantum_w=0.0), demo_topo, KEY, lambda t, p: None)
    assert exact.quantize(caps)[4] == 719.99


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_quantize_property(demo_site: SiteConfig, demo_topo: Topology, data: st.DataObject) -> None:
    quantum = data.draw(st.sampled_from([0.0, 1.0, 7.5, 10.0, 50.0]))
    pub = CapPublisher(site_with(demo_site, quantum_w=quantum), demo_topo, KEY, lambda t, p: None)
    t = demo_topo
    frac = data.draw(hnp.arrays(np.float64, t.n_gpus, elements=st.floats(0, 1)))
    caps = t.gpu_min_w + frac * (t.gpu_max_w - t.gpu_min_w)
    q = pub.quantize(caps)
    assert (q <= caps).all()  # never above the plan
    assert (q >= t.gpu_min_w).all()  # never below the board's floor
    assert (q > caps - max(quantum, 1e-9) - 1e-6).all()  # at most one quantum lower
    assert (q[caps >= t.gpu_max_w] == t.gpu_max_w[caps >= t.gpu_max_w]).all()


# ---- the first plan -------------------------------------------------------------------------------
def test_first_plan_sends_one_verifiable_command_per_rack(demo_site: SiteConfig, demo_topo: Topology,
                                                          layouts: Layouts, base_plan: CapPlan) -> None:
    sent: list[tuple[str, bytes]] = []
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: sent.append((t, p)), epoch=7)
    caps = np.full(demo_topo.n_gpus, 655.0)
    racks = demo_topo.ids(L_RACK)
    # One binding constraint on the first two nodes of r02, another on r02's fourth node.
    names = base_plan.constraint_names
    bind = np.full(demo_topo.n_gpus, -1, np.int32)
    g0 = int(demo_topo.rack_first_gpu[1])
    bind[g0:g0 + 8] = 2
    bind[g0 + 12:g0 + 16] = 0
    assert pub.publish(plan(base_plan, caps, T0, 4, bind=bind), T0) == len(racks) == 8
    assert [t for t, _ in sent] == [caps_topic("powerplane", SITE, r) for r in racks]
    orders = []
    lease = demo_site.actuation.lease_s
    for (_t, payload), rack in zip(sent, racks, strict=True):
        cmd = verify_command(payload, KEY, site=SITE, layout=layouts[rack], now_ns=T0, last_order=0, lease_s=lease)
        assert isinstance(cmd, CapCommand), cmd
        assert cmd.rack == rack and cmd.layout == layouts[rack].digest and cmd.plan_id == 4
        assert cmd.caps_w.tolist() == [650.0] * layouts[rack].n_gpus  # quantized down
        assert cmd.expires_ns == T0 + int(lease * NS_PER_S) and cmd.issued_ns == T0
        orders.append(cmd.order)
        if rack == "r02":
            assert cmd.why == (names[0], names[2])
            assert [cmd.node_reason(k) for k in range(5)] == [f"{names[2]} binding"] * 2 + \
                ["no limit binding", f"{names[0]} binding", "no limit binding"]
        else:
            assert cmd.why == () and cmd.node_reason(0) == "no limit binding"
    assert orders == sorted(set(orders)) and orders[0] == order(7, 1)
    st_ = pub.stats
    assert (st_.plans, st_.commands, st_.lowered, st_.bytes) == (1, 8, 8, sum(len(p) for _, p in sent))
    assert (pub.lowered_ns == T0).all() and (pub.sent_ns == T0).all()
    pub.enabled = False
    assert pub.publish(plan(base_plan, caps - 100, T0 + NS_PER_S), T0 + NS_PER_S) == 0
    assert len(sent) == 8 and pub.stats.plans == 2


# ---- cuts at once, raises paced, renewals -----------------------------------------------------------
def test_a_cut_is_sent_at_once_to_its_rack_only(demo_site: SiteConfig, demo_topo: Topology, layouts: Layouts,
                                                 base_plan: CapPlan) -> None:
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    caps = np.full(demo_topo.n_gpus, 700.0)
    pub.commands(plan(base_plan, caps, T0), T0)
    lowered0 = pub.lowered_order.copy()
    # A fraction of a second later, one GPU of r03 by one quantum, and one of r05 by half a watt.
    t = T0 + NS_PER_S // 10
    g3, g5 = int(demo_topo.rack_first_gpu[2]) + 9, int(demo_topo.rack_first_gpu[4])
    caps[g3] = 690.0
    caps[g5] = 699.5
    cmds = pub.commands(plan(base_plan, caps, t), t)
    assert racks_of(cmds) == [2, 4]
    c3 = opened(layouts, cmds[0][1], t, demo_site.actuation.lease_s)
    assert c3.caps_w[9] == 690.0 and np.delete(c3.caps_w, 9).tolist() == [700.0] * 575
    assert cmds[1][1].caps_w[0] == 690.0  # a half-watt cut crosses a quantum: the sent cap may not exceed the plan
    # The nodes that were cut (and only they) wait for an acknowledgement of the new command.
    changed = np.flatnonzero(pub.lowered_order != lowered0)
    n3, n5 = layouts["r03"].node0 + 2, layouts["r05"].node0
    assert changed.tolist() == [n3, n5]
    assert pub.lowered_order[n3] == cmds[0][1].order and pub.lowered_ns[n3] == t
    assert pub.stats.lowered == 8 + 2


def test_raises_are_paced_per_rack(demo_site: SiteConfig, demo_topo: Topology, base_plan: CapPlan) -> None:
    cfg = demo_site.actuation
    assert (cfg.quantum_w, cfg.raise_deadband_w, cfg.raise_every_s) == (10.0, 20.0, 2.0)
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    caps = np.full(demo_topo.n_gpus, 700.0)
    pub.commands(plan(base_plan, caps, T0), T0)
    g1 = int(demo_topo.rack_first_gpu[1])
    # A raise within the deadband waits, even once pacing allows it.
    caps[g1] = 710.0
    t = T0 + 3 * NS_PER_S
    assert pub.commands(plan(base_plan, caps, t), t) == []
    # A big raise of r04 waits until the rack's last command is raise_every_s old, then goes once.
    g4 = int(demo_topo.rack_first_gpu[3])
    caps[g4 + 5] = 800.0
    pub2 = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    base = np.full(demo_topo.n_gpus, 700.0)
    pub2.commands(plan(base_plan, base, T0), T0)
    up = base.copy()
    up[g4 + 5] = 800.0
    t1, t2 = T0 + NS_PER_S, T0 + 2 * NS_PER_S
    assert pub2.commands(plan(base_plan, up, t1), t1) == []
    cmds = pub2.commands(plan(base_plan, up, t2), t2)
    assert racks_of(cmds) == [3] and cmds[0][1].caps_w[5] == 800.0 and pub2.stats.raised == 1
    assert pub2.commands(plan(base_plan, up, t2 + 1), t2 + 1) == []
    # A cut in r04 right after goes out at once, though the rack's last command is fresh; a
    # ramp of raises is held to one command per raise_every_s.
    down = up.copy()
    down[g4] = 600.0
    cmds = pub2.commands(plan(base_plan, down, t2 + NS_PER_S // 10), t2 + NS_PER_S // 10)
    assert racks_of(cmds) == [3] and cmds[0][1].caps_w[0] == 600.0
    ramp = down.copy()
    sent_at = []
    for k in range(1, 81):
        now = t2 + k * NS_PER_S // 10
        ramp[g4 + 100] = min(700.0 + 2 * k, 880.0)
        if 3 in racks_of(pub2.commands(plan(base_plan, ramp, now), now)):
            sent_at.append(k)
    assert len(sent_at) >= 3 and np.diff(sent_at).min() >= 20  # 2 s apart at 0.1 s periods


def test_back_to_the_ceiling_is_sent_even_within_the_deadband(demo_site: SiteConfig, demo_topo: Topology,
                                                            base_plan: CapPlan) -> None:
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None)
    caps = np.full(demo_topo.n_gpus, 870.0)
    pub.commands(plan(base_plan, caps, T0), T0)
    g6 = int(demo_topo.rack_first_gpu[5])
    caps[g6] = 880.0
    t = T0 + 3 * NS_PER_S
    cmds = pub.commands(plan(base_plan, caps, t), t)
    assert racks_of(cmds) == [5] and cmds[0][1].caps_w[0] == 880.0


def test_unchanged_caps_are_renewed_before_the_lease_runs_out(demo_site: SiteConfig, demo_topo: Topology,
                                                             layouts: Layouts, base_plan: CapPlan) -> None:
    site = site_with(demo_site, lease_s=6.0, renew_s=4.0)
    pub = CapPublisher(site, demo_topo, KEY, lambda t, p: None, epoch=2)
    caps = np.full(demo_topo.n_gpus, 700.0)
    first = pub.commands(plan(base_plan, caps, T0), T0)
    assert len(first) == 8
    for s in (1, 2, 3, 3.999):
        t = T0 + int(s * NS_PER_S)
        assert pub.commands(plan(base_plan, caps, t), t) == []
    t = T0 + 4 * NS_PER_S
    renew = pub.commands(plan(base_plan, caps, t), t)
    assert racks_of(renew) == list(range(8)) and pub.stats.renewed == 8
    assert all(c.expires_ns == t + 6 * NS_PER_S for _, c in renew)
    assert min(c.order for _, c in renew) > max(c.order for _, c in first)
    assert (pub.expires_ns == t + 6 * NS_PER_S).all()
    # An agent that applied the first command takes the renewal (newer, same caps).
    last = first[0][1].order
    assert opened(layouts, renew[0][1], t, 6.0, last_order=last).caps_w.tolist() == [700.0] * 576
    # A renewal does not restart the settling clock: nothing was lowered.
    assert (pub.lowered_ns == T0).all()


def test_renew_every_defaults_to_half_the_lease(demo_site: SiteConfig) -> None:
    assert site_with(demo_site, lease_s=10.0).actuation.renew_every_s == 5.0


def test_a_new_epoch_orders_after_the_old_one(demo_site: SiteConfig, demo_topo: Topology, layouts: Layouts,
                                              base_plan: CapPlan) -> None:
    old = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None, epoch=4)
    caps = np.full(demo_topo.n_gpus, 700.0)
    for k in range(50):
        now = T0 + k * 8 * NS_PER_S  # past renew_every_s: every rack each time
        last = old.commands(plan(base_plan, caps, now), now)
        assert len(last) == 8
    new = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None, epoch=5)
    now = T0 + 400 * NS_PER_S
    cmds = new.commands(plan(base_plan, caps, now), now)
    assert cmds[0][1].seq == 1 < last[0][1].seq
    assert opened(layouts, cmds[0][1], now, demo_site.actuation.lease_s, last_order=last[0][1].order).epoch == 5


# ---- invariants over any sequence of plans ---------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5, 8.0]), st.integers(0, 2**31 - 1)),
                      min_size=1, max_size=10))
def test_at_most_one_command_per_rack_per_period_orders_rise_and_nothing_exceeds_the_plan(
        demo_site: SiteConfig, demo_topo: Topology, base_plan: CapPlan, steps: list[tuple[float, int]]) -> None:
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t, p: None, epoch=3)
    t = demo_topo
    now = T0
    last_order = 0
    for dt_s, seed in steps:
        now += int(dt_s * NS_PER_S)
        rng = np.random.default_rng(seed)
        caps = rng.uniform(t.gpu_min_w, t.gpu_max_w)
        caps[rng.random(t.n_gpus) < 0.3] = t.gpu_max_w[0]
        caps[rng.random(t.n_gpus) < 0.5] = 700.0
        before = pub.sent_w.copy()
        cmds = pub.commands(plan(base_plan, caps, now), now)
        racks = racks_of(cmds)
        assert len(racks) == len(set(racks)) <= t.count(L_RACK)
        for _r, cmd in cmds:
            assert cmd.order > last_order and cmd.epoch == 3
            last_order = cmd.order
        # Whatever a rack holds now is at or under this period's plan: cuts are never deferred.
        assert (pub.sent_w <= caps).all()
        # A rack not sent keeps what it had.
        untouched = np.setdiff1d(np.arange(t.count(L_RACK)), racks)
        for r in untouched.tolist():
            g = slice(int(t.rack_first_gpu[r]), int(t.rack_first_gpu[r] + t.rack_gpus[r]))
            assert np.array_equal(pub.sent_w[g], before[g], equal_nan=True)
    assert pub.stats.commands == 0  # commands() only decides; publish() counts what it sends
    assert int(pub.rack_order.max()) == last_order
    assert (pub.lowered_ns[: t.count(L_NODE)] >= T0).all()


def reasons_reference(names: tuple[str, ...], node_bind: np.ndarray, lay: Any) -> tuple[tuple[str, ...], list[int]]:
    """One rack's binding names and per-node indices, rack by rack (what the vectorised path must give)."""
    b = node_bind[lay.node0:lay.node0 + lay.n_nodes]
    uniq = sorted(set(int(c) for c in b if c >= 0))
    why = tuple(names[c] for c in uniq)
    local = [uniq.index(int(c)) if c >= 0 else -1 for c in b]
    if (b == BIND_RAMP).any():
        local = [len(why) if c == BIND_RAMP else x for c, x in zip(b.tolist(), local, strict=True)]
        why = (*why, RAMP)
    return why, local


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), runs=st.booleans(), n_sent=st.integers(1, 8))
def test_every_rack_names_what_binds_each_of_its_nodes(demo_site: SiteConfig, demo_topo: Topology,
                                                       layouts: Layouts, base_plan: CapPlan, seed: int,
                                                       runs: bool, n_sent: int) -> None:
    rng = np.random.default_rng(seed)
    t = demo_topo
    names = base_plan.constraint_names
    n_nodes = t.count(L_NODE)
    # Runs of equal bindings (as plans make them) or every node its own; none, ramp and constraints.
    values = rng.choice(np.array([BIND_NONE, BIND_RAMP, 0, 1, len(names) - 1, len(names) // 2]), n_nodes)
    if runs:
        values = np.repeat(values[: n_nodes // 7 + 1], 7)[:n_nodes]
    bind = np.repeat(values.astype(np.int32), t.node_gpus)
    pub = CapPublisher(demo_site, demo_topo, KEY, lambda t_, p: None)
    sent = np.sort(rng.choice(t.count(L_RACK), n_sent, replace=False))
    caps = np.full(t.n_gpus, 700.0)
    pub.sent_ns[:] = T0  # only the racks given a cut send
    pub.sent_w[:] = 800.0
    for r in range(t.count(L_RACK)):
        if r not in sent:
            g = slice(int(t.rack_first_gpu[r]), int(t.rack_first_gpu[r] + t.rack_gpus[r]))
            caps[g] = 800.0
    cmds = pub.commands(plan(base_plan, caps, T0 + 1, bind=bind), T0 + 1)
    assert racks_of(cmds) == sent.tolist()
    for _r, cmd in cmds:
        why, local = reasons_reference(names, values, layouts[cmd.rack])
        assert cmd.why == why
        assert cmd.bind is not None and cmd.bind.tolist() == local
