"""The capping agent with in-memory GPUs and a frozen clock: start at the safe cap, control, renew,
lease fallback (never a raise), resume, every reject counted and reported, the stale-seq streak,
(epoch, seq) across restarts, backend errors; and AgentHost's bounded inbox under a junk flood."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from bus.mqtt import Inbox, MqttAddress
from controllers.actuation.agent import STALE_STREAK_WARN, AgentHost, CapUnit
from controllers.actuation.backends import BoardLimits, GpuReading
from controllers.actuation.layout import Layouts, RackLayout
from controllers.actuation.messages import (
    MAX_COMMAND_BYTES,
    REJECT_REASONS,
    AgentStatus,
    CapCommand,
    Rejected,
    SiteKey,
    open_status,
    order,
)
from models.clock import NS_PER_S, ManualClock
from models.errors import ControlError, PowerplaneError
from models.topology import Topology
from testbed.realservers import Mosquitto

SITE = "demo-hall"
KEY = SiteKey(b"k" * 32)
MIN_W, MAX_W = 300.0, 880.0
LEASE_S = 15.0
NODE = 5  # the node unit serves r01/node-005


@pytest.fixture(scope="module")
def layouts(demo_topo: Topology) -> Layouts:
    return Layouts(demo_topo)


@pytest.fixture(scope="module")
def r01(layouts: Layouts) -> RackLayout:
    return layouts["r01"]


class MemGpus:
    """GPUs in memory: records every apply; clamps to the range as a board does."""

    name = "mem"

    def __init__(self, n: int) -> None:
        self.n = n
        self.caps = np.full(n, MAX_W)
        self.applies: list[np.ndarray] = []
        self.power_w: float | None = 500.0
        self.power_ts_ns: int | None = None
        self.fail_apply = False
        self.fail_read = False
        self.closed = False

    async def open(self) -> BoardLimits:
        return BoardLimits((MIN_W,) * self.n, (MAX_W,) * self.n)

    async def apply(self, caps_w: Sequence[float]) -> tuple[float, ...]:
        if self.fail_apply:
            raise ControlError("board unreachable")
        self.caps = np.clip(np.asarray(caps_w, np.float64), MIN_W, MAX_W)
        self.applies.append(self.caps.copy())
        return tuple(self.caps.tolist())

    async def read(self) -> GpuReading:
        if self.fail_read:
            raise ControlError("board unreachable")
        return GpuReading(tuple(self.caps.tolist()), (self.power_w,) * self.n, self.power_ts_ns)

    async def close(self) -> None:
        self.closed = True


class Harness:
    """One unit (node 5 of r01, or the whole rack), its GPUs, its clock and what it published."""

    def __init__(self, clock: ManualClock, lay: RackLayout, layouts: Layouts, *, whole_rack: bool = False,
                 state_dir: Path | None = None, safe_cap_w: float | None = 400.0, lease_s: float = LEASE_S) -> None:
        self.clock, self.lay, self.layouts = clock, lay, layouts
        nodes = list(range(lay.n_nodes)) if whole_rack else [NODE]
        self.sel = np.concatenate([np.arange(lay.gpu_slice(k).start, lay.gpu_slice(k).stop) for k in nodes])
        self.gpus = MemGpus(self.sel.size)
        self.sent: list[tuple[str, bytes]] = []
        self.unit = CapUnit(SITE, lay, nodes, KEY, self.gpus, clock, lambda t, p: self.sent.append((t, p)),
                            lease_s=lease_s, safe_cap_w=safe_cap_w, status_every_s=5.0, state_dir=state_dir)
        self.seq = 0

    def command(self, caps: Sequence[float] | float, *, lease_s: float = LEASE_S, epoch: int = 1,
                seq: int | None = None, plan_id: int = 1, key: SiteKey = KEY, **kw: Any) -> CapCommand:
        """A command for the rack whose caps for this unit's GPUs are ``caps`` (the others 700 W)."""
        self.seq = self.seq + 1 if seq is None else seq
        now = self.clock.now_ns()
        rack = np.full(self.lay.n_gpus, 700.0)
        rack[self.sel] = caps
        fields: dict[str, Any] = {"site": SITE, "rack": self.lay.rack, "layout": self.lay.digest, "epoch": epoch,
                                  "seq": self.seq, "plan_id": plan_id, "issued_ns": now,
                                  "expires_ns": now + int(lease_s * NS_PER_S), "caps_w": rack} | kw
        return CapCommand(**fields)

    async def send(self, cmd: CapCommand, key: SiteKey = KEY) -> CapCommand | Rejected:
        return await self.unit.handle(cmd.envelope(key))

    def statuses(self) -> list[AgentStatus]:
        """Everything published, opened as the controller opens it."""
        out = []
        for topic, payload in self.sent:
            st_ = open_status(topic, payload, self.layouts, site=SITE)
            assert isinstance(st_, AgentStatus), st_
            out.append(st_)
        return out

    def last(self) -> AgentStatus:
        return self.statuses()[-1]

    @property
    def caps(self) -> list[float]:
        return self.gpus.caps.tolist()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- start ---------------------------------------------------------------------------------------
def test_start_applies_the_safe_cap_and_reports_starting(clock: ManualClock, r01: RackLayout,
                                                         layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        assert [a.tolist() for a in h.gpus.applies] == [[400.0] * 4]
        assert h.unit.mode == "starting" and h.unit.last_order == 0
        st_ = h.last()
        assert h.sent[-1][0] == "powerplane/demo-hall/status/r01@node-005"
        assert (st_.mode, list(st_.nodes), st_.safe_cap_w, st_.backend, st_.order) == \
            ("starting", [NODE], 400.0, "mem", 0)
        assert st_.enforced_w.tolist() == [400.0] * 4 and np.isnan(st_.power_w).all()
        assert st_.ts_ns == st_.since_ns == clock.now_ns()
        await h.unit.close()
        assert h.gpus.closed
    run(go())


def test_a_rack_unit_reports_for_the_whole_rack_on_the_rack_topic(clock: ManualClock, r01: RackLayout,
                                                                   layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts, whole_rack=True)
        await h.unit.open()
        assert h.sent[-1][0] == "powerplane/demo-hall/status/r01" and h.unit.sender == "r01"
        caps = np.linspace(MIN_W, MAX_W, r01.n_gpus)
        cmd = h.command(caps)
        assert isinstance(await h.send(cmd), CapCommand)
        assert np.allclose(h.gpus.caps, cmd.caps_w) and h.unit.mode == "controlled"
        st_ = h.last()
        assert list(st_.nodes) == list(range(144)) and st_.enforced_w.shape == (576,)
    run(go())


@pytest.mark.parametrize(("safe", "applied"), [(None, MIN_W), (100.0, MIN_W), (2000.0, MAX_W), (550.0, 550.0)])
def test_safe_cap_is_clamped_into_the_board_range(clock: ManualClock, r01: RackLayout, layouts: Layouts,
                                                  safe: float | None, applied: float) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts, safe_cap_w=safe)
        await h.unit.open()
        assert h.caps == [applied] * 4 and h.unit.safe_caps.tolist() == [applied] * 4
    run(go())


def test_a_unit_must_match_its_rack_and_backend(clock: ManualClock, r01: RackLayout) -> None:
    with pytest.raises(ValueError, match="not nodes of rack r01"):
        CapUnit(SITE, r01, [144], KEY, MemGpus(4), clock)

    async def go() -> None:
        unit = CapUnit(SITE, r01, [0, 1], KEY, MemGpus(4), clock)
        with pytest.raises(PowerplaneError, match="the backend has 4 GPUs, the site file 8"):
            await unit.open()
    run(go())


# ---- control ---------------------------------------------------------------------------------------
def test_valid_command_takes_control_and_is_acknowledged(clock: ManualClock, r01: RackLayout,
                                                         layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        clock.advance(1)
        cmd = h.command([700.0, 650.0, 300.0, 880.0], plan_id=5, epoch=2)
        res = await h.send(cmd)
        assert isinstance(res, CapCommand) and res.order == cmd.order
        assert h.caps == [700.0, 650.0, 300.0, 880.0] and h.unit.mode == "controlled"
        st_ = h.last()
        assert (st_.mode, st_.epoch, st_.seq, st_.plan_id, st_.lease_expires_ns) == \
            ("controlled", 2, cmd.seq, 5, cmd.expires_ns)
        assert st_.enforced_w.tolist() == [700.0, 650.0, 300.0, 880.0]
        assert st_.since_ns == clock.now_ns() and h.unit.stats.applied == 1
    run(go())


def test_a_cut_is_acknowledged_at_once_and_probed_a_raise_waits_for_the_heartbeat(
        clock: ManualClock, r01: RackLayout, layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        await h.send(h.command(700.0))
        n = len(h.sent)
        clock.advance(1)
        await h.send(h.command([600.0, 700.0, 700.0, 700.0]))
        assert len(h.sent) == n + 1 and h.last().enforced_w[0] == 600.0
        assert np.isnan(h.last().power_w).all()  # the ack carries no draw: the controller waits for one after it
        # The draw is reported again soon after the cut (probes), each measured after it.
        clock.advance(0.4)
        h.gpus.power_ts_ns = clock.now_ns()
        assert await h.unit.heartbeat()
        assert h.last().power_w.tolist() == [500.0] * 4 and h.last().power_ts_ns == clock.now_ns()
        clock.advance(0.5)
        assert await h.unit.heartbeat()
        clock.advance(0.1)
        n = len(h.sent)
        up = h.command(800.0)
        await h.send(up)
        assert len(h.sent) == n and h.caps == [800.0] * 4  # applied, reported later
        clock.advance(10)
        h.gpus.power_ts_ns = None
        assert await h.unit.heartbeat()
        st_ = h.last()
        assert st_.seq == up.seq and st_.enforced_w.tolist() == [800.0] * 4 and st_.power_ts_ns == clock.now_ns()
        assert not await h.unit.heartbeat()  # not due again yet
    run(go())


def test_renewal_with_the_same_caps_does_not_touch_the_gpus(clock: ManualClock, r01: RackLayout,
                                                            layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        await h.send(h.command(700.0))
        applies = len(h.gpus.applies)
        clock.advance(7)
        renewal = h.command(700.0, plan_id=2)
        assert isinstance(await h.send(renewal), CapCommand)
        assert len(h.gpus.applies) == applies
        assert h.unit.stats.renewed == 1 and h.unit.stats.applied == 1
        assert h.unit.lease_expires_ns == renewal.expires_ns and h.unit.last_order == renewal.order
        # The renewed lease counts: no fallback at the first lease's end.
        clock.advance(LEASE_S - 7 + 1)
        assert not await h.unit.check_lease() and h.unit.mode == "controlled"
    run(go())


# ---- lease fallback and resume ---------------------------------------------------------------------
def test_lease_expiry_falls_back_to_min_of_current_and_safe(clock: ManualClock, r01: RackLayout,
                                                            layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        cmd = h.command([350.0, 700.0, 400.0, 880.0], lease_s=5)
        await h.send(cmd)
        clock.advance(4.9)
        assert not await h.unit.check_lease() and h.unit.mode == "controlled"
        clock.advance(0.1)
        assert await h.unit.check_lease()
        # Never a raise: the GPU at 350 W stays there, the others come down to the safe 400 W.
        assert h.caps == [350.0, 400.0, 400.0, 400.0]
        st_ = h.last()
        assert (st_.mode, st_.since_ns) == ("fallback", clock.now_ns())
        assert st_.enforced_w.tolist() == [350.0, 400.0, 400.0, 400.0] and st_.safe_cap_w == 400.0
        assert h.unit.stats.fallbacks == 1
        since = st_.since_ns
        clock.advance(30)
        assert not await h.unit.check_lease()  # once per lease
        assert h.unit.stats.fallbacks == 1
        assert await h.unit.heartbeat()
        assert h.last().since_ns == since  # the fallback's moment survives heartbeats
    run(go())


@settings(max_examples=40, deadline=None)
@given(caps=st.lists(st.floats(MIN_W, MAX_W), min_size=4, max_size=4), safe=st.floats(1.0, 2000.0))
def test_the_fallback_never_raises_a_cap(r01: RackLayout, layouts: Layouts, caps: list[float], safe: float) -> None:
    async def go() -> None:
        clock = ManualClock()
        h = Harness(clock, r01, layouts, safe_cap_w=safe, lease_s=3)
        await h.unit.open()
        await h.send(h.command(caps, lease_s=3))
        before = h.gpus.caps.copy()
        clock.advance(3)
        assert await h.unit.check_lease()
        assert (h.gpus.caps <= before).all() and (h.gpus.caps <= max(min(safe, MAX_W), MIN_W)).all()
    run(go())


def test_no_fallback_from_starting_and_a_new_command_resumes_control(clock: ManualClock, r01: RackLayout,
                                                                      layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        clock.advance(100)
        assert not await h.unit.check_lease() and h.unit.mode == "starting"
        await h.send(h.command(700.0, lease_s=3))
        clock.advance(3)
        assert await h.unit.check_lease() and h.caps == [400.0] * 4
        clock.advance(2)
        # The same caps as before the fallback are applied again: what is enforced changed.
        back = h.command(700.0, plan_id=9)
        assert isinstance(await h.send(back), CapCommand)
        assert h.unit.mode == "controlled" and h.caps == [700.0] * 4 and h.unit.stats.resumed == 1
        st_ = h.last()
        assert (st_.mode, st_.plan_id, st_.since_ns) == ("controlled", 9, clock.now_ns())
        assert [m for m, _ in h.unit.stats.transitions] == ["starting", "controlled", "fallback", "controlled"]
    run(go())


# ---- rejects ---------------------------------------------------------------------------------------
def test_every_reject_is_counted_and_reported_in_the_status(clock: ManualClock, r01: RackLayout,
                                                            layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        clock.advance(1)
        good = h.command(700.0, epoch=2)
        await h.send(good)
        enforced = h.caps
        now = clock.now_ns()
        bad: list[tuple[str, bytes]] = [
            ("malformed", b"{not json"),
            ("bad_signature", h.command(600.0, epoch=2).envelope(SiteKey(b"z" * 32))),
            ("wrong_target", h.command(600.0, epoch=2, rack="r02").envelope(KEY)),
            ("stale_seq", good.envelope(KEY)),  # a replay
            ("stale_seq", h.command(600.0, epoch=1, seq=10**6).envelope(KEY)),  # an older epoch
            ("expired", h.command(600.0, epoch=2, issued_ns=now - 20 * NS_PER_S,
                                  expires_ns=now - 5 * NS_PER_S).envelope(KEY)),
            ("future", h.command(600.0, epoch=2, issued_ns=now + 60 * NS_PER_S,
                                 expires_ns=now + 70 * NS_PER_S).envelope(KEY)),
            ("lease_too_long", h.command(600.0, epoch=2, lease_s=365 * 86400.0).envelope(KEY)),
            ("out_of_bounds", h.command([600.0, 600.0, 600.0, 9000.0], epoch=2).envelope(KEY)),
        ]
        assert {r for r, _ in bad} == set(REJECT_REASONS)
        for why, payload in bad:
            res = await h.unit.handle(payload)
            assert isinstance(res, Rejected) and res.reason == why, res
        assert h.caps == enforced and h.unit.last_order == good.order and h.unit.mode == "controlled"
        want = {r: 1 for r in REJECT_REASONS} | {"stale_seq": 2}
        assert dict(h.unit.stats.rejected) == want
        # Every reject but a lone stale one (a retained command after a restart) is reported at once.
        st_ = h.last()
        assert st_.rejected == want and st_.last_reject.startswith("out_of_bounds: GPU ")
        assert st_.mode == "controlled" and st_.order == good.order and st_.stale_streak == 2
    run(go())


def test_a_stale_streak_warns_once_and_is_reported(clock: ManualClock, r01: RackLayout, layouts: Layouts,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        await h.send(h.command(700.0, epoch=5, seq=100))
        # A controller with an old epoch keeps publishing: every command is stale.
        caplog.set_level(logging.DEBUG, logger="powerplane.agent")
        for k in range(1, STALE_STREAK_WARN + 3):
            n = len(h.sent)
            res = await h.send(h.command(600.0, epoch=4, seq=1000 + k))
            assert isinstance(res, Rejected) and res.reason == "stale_seq"
            assert h.unit.stale_streak == k
            assert len(h.sent) == n + (k >= STALE_STREAK_WARN)  # reported once it is a streak
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "stale commands" in r.message]
        assert len(warnings) == 1 and f"{STALE_STREAK_WARN} stale commands in a row" in warnings[0].message
        assert h.last().stale_streak == STALE_STREAK_WARN + 2 and h.caps == [700.0] * 4
        # The newer controller's next command ends the streak.
        assert isinstance(await h.send(h.command(650.0, epoch=6, seq=1)), CapCommand)
        assert h.unit.stale_streak == 0 and h.last().stale_streak == 0
    run(go())


# ---- (epoch, seq) across restarts --------------------------------------------------------------------
def test_the_applied_order_survives_a_restart(clock: ManualClock, r01: RackLayout, layouts: Layouts,
                                              tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts, state_dir=tmp_path)
        await h.unit.open()
        cmd = h.command(700.0, epoch=3, seq=41, plan_id=7)
        await h.send(cmd)
        path = tmp_path / "r01@node-005.json"
        assert json.loads(path.read_text()) == {"epoch": 3, "seq": 41, "plan_id": 7}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        await h.unit.close()
        clock.advance(1)
        # The node restarts (safe cap) and hears the old, still-unexpired (retained) command again.
        h2 = Harness(clock, r01, layouts, state_dir=tmp_path)
        await h2.unit.open()
        assert h2.unit.last_order == order(3, 41) and h2.caps == [400.0] * 4
        assert h2.last().order == order(3, 41) and h2.last().mode == "starting"
        res = await h2.send(cmd)
        assert isinstance(res, Rejected) and res.reason == "stale_seq" and h2.caps == [400.0] * 4
        # A restarted controller's new epoch starts its seq again at 1 and is obeyed.
        newer = h2.command(650.0, epoch=4, seq=1)
        assert isinstance(await h2.send(newer), CapCommand) and h2.caps == [650.0] * 4
        assert json.loads(path.read_text())["epoch"] == 4
    run(go())


def test_an_unreadable_state_file_accepts_fresh_commands(clock: ManualClock, r01: RackLayout, layouts: Layouts,
                                                         tmp_path: Path) -> None:
    (tmp_path / "r01.json").write_text("{torn")

    async def go() -> None:
        h = Harness(clock, r01, layouts, state_dir=tmp_path, whole_rack=True)
        await h.unit.open()
        assert h.unit.last_order == 0
        assert isinstance(await h.send(h.command(700.0, epoch=1, seq=1)), CapCommand)
        assert json.loads((tmp_path / "r01.json").read_text())["seq"] == 1
    run(go())


def test_a_state_file_that_cannot_be_written_does_not_stop_control(clock: ManualClock, r01: RackLayout,
                                                                    layouts: Layouts, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "r01@node-005.json").mkdir()  # something in the way of the state file

    async def go() -> None:
        h = Harness(clock, r01, layouts, state_dir=tmp_path)
        await h.unit.open()
        caplog.set_level(logging.DEBUG, logger="powerplane.agent")
        for k in range(3):
            clock.advance(1)
            assert isinstance(await h.send(h.command(700.0 - 10 * k)), CapCommand)  # never raises
        assert h.caps == [680.0] * 4 and h.unit.mode == "controlled"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "cannot keep" in r.message]
        assert len(errors) == 1  # once, then DEBUG until it works again
        (tmp_path / "r01@node-005.json").rmdir()
        assert isinstance(await h.send(h.command(650.0, seq=10)), CapCommand)
        assert json.loads((tmp_path / "r01@node-005.json").read_text())["seq"] == 10
    run(go())


# ---- backend errors ------------------------------------------------------------------------------------
def test_backend_errors_are_counted_not_raised_and_a_failed_cut_is_retried(
        clock: ManualClock, r01: RackLayout, layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        await h.send(h.command(700.0, lease_s=5))
        h.gpus.fail_apply = True
        cut = h.command(500.0, lease_s=5)
        assert isinstance(await h.send(cut), CapCommand)  # no exception
        assert h.unit.stats.apply_errors == 1 and h.caps == [700.0] * 4
        assert h.last().enforced_w.tolist() == [700.0] * 4  # the status tells the truth
        # The board answers again: the renewal with the same caps applies the cut.
        h.gpus.fail_apply = False
        clock.advance(2)
        assert isinstance(await h.send(h.command(500.0, lease_s=5)), CapCommand)
        assert h.caps == [500.0] * 4 and h.unit.stats.applied == 2
        h.gpus.fail_apply = True
        clock.advance(5)
        assert await h.unit.check_lease()  # the fallback fails too, and is counted
        assert h.unit.stats.apply_errors == 2 and h.unit.mode == "fallback"
        h.gpus.fail_read = True
        clock.advance(10)
        assert await h.unit.heartbeat()  # status without a board reading
        assert np.isnan(h.last().power_w).all()
        h.gpus.fail_apply = h.gpus.fail_read = False
        assert isinstance(await h.send(h.command(450.0)), CapCommand)
        assert h.caps == [450.0] * 4 and h.unit.mode == "controlled"
    run(go())


def test_the_status_round_trips_through_the_controllers_edge(clock: ManualClock, r01: RackLayout,
                                                              layouts: Layouts) -> None:
    async def go() -> None:
        for whole in (False, True):
            h = Harness(clock, r01, layouts, whole_rack=whole)
            await h.unit.open()
            await h.send(h.command(np.linspace(MIN_W, MAX_W, h.sel.size), epoch=2, plan_id=8))
            await h.unit.handle(b"junk")
            h.gpus.power_w = None  # a board that does not report power
            clock.advance(10)
            r = await h.gpus.read()
            mine = h.unit.status(r.power_w, r.enforced_w, clock.now_ns() - 7)
            got = open_status(h.unit.status_topic, mine.to_json(), layouts, site=SITE)
            assert isinstance(got, AgentStatus)
            for f in ("site", "rack", "ts_ns", "mode", "since_ns", "epoch", "seq", "plan_id", "lease_expires_ns",
                      "safe_cap_w", "backend", "rejected", "last_reject", "stale_streak", "power_ts_ns"):
                assert getattr(got, f) == getattr(mine, f), f
            assert list(got.nodes) == list(mine.nodes)
            assert np.array_equal(got.enforced_w, np.floor(mine.enforced_w * 1000 + 0.5) / 1000)
            assert np.isnan(got.power_w).all() and got.power_w.shape == (h.sel.size,)
    run(go())


# ---- AgentHost: one connection, a bounded inbox, the lease watch on its own task ---------------------
def test_the_command_inbox_is_bounded() -> None:
    box = Inbox(maxlen=3, max_bytes=10)
    for i in range(5):
        box.put("t", str(i).encode())
    box.put("t", b"x" * 11)
    assert (box.received, box.dropped_overflow, box.dropped_oversize, box.dropped()) == (5, 2, 1, 3)
    assert box.drain() == [("t", b"2"), ("t", b"3"), ("t", b"4")]  # the newest kept, oldest first
    assert box.drain() == [] and len(box) == 0


def test_a_junk_flood_does_not_delay_the_lease_fallback(mosquitto: Mosquitto, r01: RackLayout,
                                                        layouts: Layouts, caplog: pytest.LogCaptureFixture) -> None:
    """Commands reach the agent through the real broker and paho's network thread into the host's
    bounded inbox; oversized payloads are dropped there, unparsed. The lease watch runs on its
    own task: it falls back on time while a thousand junk commands are still queued."""
    clock = ManualClock()
    h = Harness(clock, r01, layouts, lease_s=3)
    addr = MqttAddress.parse(mosquitto.url)
    host = AgentHost([h.unit], addr, clock, client_id="test-agent-host", inbox=1024)
    assert host.link is not None
    good = h.command(700.0, lease_s=3)
    junk: list[bytes] = []
    for k in range(1000):
        kind = k % 4
        if kind == 0:  # near the size limit, forged: costs a decode and an HMAC, no more
            body = h.command(880.0, lease_s=3).body().decode()
            junk.append(json.dumps({"alg": "HMAC-SHA256", "kid": KEY.kid, "body": body + " " * 100_000,
                                    "sig": "0" * 64}).encode())
        elif kind == 1:
            junk.append(good.envelope(KEY))  # replays
        elif kind == 2:
            junk.append(b"[" * 50_000)
        else:
            junk.append(h.command(880.0, lease_s=3, rack="r02").envelope(KEY))  # another rack's, signed
    oversize = [b"x" * (MAX_COMMAND_BYTES + 1)] * 50

    async def go() -> None:
        link = host.link
        assert link is not None
        link.subscribe(h.unit.topic, qos=1, inbox=host.inbox)  # as start() does, before the flood arrives
        # The broker takes subscriptions in order: once a retained message on a second topic
        # arrives, the cap topic's subscription is in place.
        ready = link.subscribe("test/ready", qos=1)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-flooder")
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        try:
            pub.publish("test/ready", b"1", qos=1, retain=True).wait_for_publish(10)
            link.start()
            await until(lambda: ready.received == 1, "subscribed")
            pub.publish(h.unit.topic, good.envelope(KEY), qos=1)
            for i, payload in enumerate(junk):
                pub.publish(h.unit.topic, payload, qos=1)
                if i % 20 == 0:
                    pub.publish(h.unit.topic, oversize[0], qos=1)
            pub.publish(h.unit.topic, b"end", qos=1).wait_for_publish(30)
            await until(lambda: host.inbox.received + host.inbox.dropped_oversize == 1002 + 50,
                        "the flood is in the inbox")
        finally:
            pub.disconnect()
            pub.loop_stop()
        assert host.inbox.dropped_oversize == 50 and host.inbox.dropped_overflow == 0 and len(host.inbox) == 1002
        await host.start()
        try:
            for _ in range(10_000):
                if h.unit.mode == "fallback":
                    break
                await asyncio.sleep(0)
            assert h.unit.mode == "fallback"
            # Most of the flood is still to be handled: the fallback did not wait behind it, and
            # came within one lease check of the lease's end.
            assert sum(h.unit.stats.rejected.values()) < 100
            fell_ns = h.unit.stats.transitions[-1][1]
            assert 0 <= fell_ns - good.expires_ns <= int(host.check_every_s * NS_PER_S)
            assert h.caps == [400.0] * 4
            for _ in range(100_000):
                if sum(h.unit.stats.rejected.values()) == 1001:
                    break
                await asyncio.sleep(0)
            assert dict(h.unit.stats.rejected) == {"bad_signature": 250, "stale_seq": 250, "malformed": 251,
                                                   "wrong_target": 250}
            assert max(float(a.max()) for a in h.gpus.applies) <= 700.0  # nothing in the flood raised a cap
            # Nor did it flood the log: the first of each reason, the streak and the fallback.
            warned = [r for r in caplog.records if r.name == "powerplane.agent" and r.levelno >= logging.WARNING]
            assert len(warned) <= 6, [r.message for r in warned]
            # A fresh command, as paho's thread delivers it, resumes control.
            fresh = h.command(650.0, lease_s=3)
            host.inbox.put(h.unit.topic, fresh.envelope(KEY))
            for _ in range(1000):
                if h.unit.last_order == fresh.order:
                    break
                await asyncio.sleep(0)
            assert h.unit.stats.resumed == 1 and h.unit.stats.transitions[-1][0] == "controlled"
            assert h.gpus.applies[-1].tolist() == [650.0] * 4
        finally:
            await host.stop()

    asyncio.run(go())


async def until(pred: Any, what: str, timeout_s: float = 30.0) -> None:
    """Wait (wall time, nothing else running) until ``pred()``."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not pred():
        if loop.time() - t0 > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s:g} s", pytrace=False)
        await asyncio.sleep(0.02)


# ---- two live epochs: the minimum per GPU until the older lease ends ----------------------------------
def test_a_new_epoch_under_a_live_older_lease_enforces_the_minimum_of_both(clock: ManualClock, r01: RackLayout,
                                                                         layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        await h.send(h.command([500.0, 700.0, 600.0, 880.0], epoch=1, lease_s=10))
        clock.advance(4)  # epoch 1's lease runs 6 s more
        # Epoch 2 lowers GPU 0 and raises the others: the lowering applies at once, the raises wait.
        res = await h.send(h.command([400.0, 800.0, 880.0, 880.0], epoch=2, seq=1, lease_s=10))
        assert isinstance(res, CapCommand)
        assert h.caps == [400.0, 700.0, 600.0, 880.0]
        st_ = h.last()
        assert (st_.epoch, st_.held_epoch, st_.mode) == (2, 1, "controlled")
        assert h.unit.stats.held == 1
        # A renewal of epoch 2 inside epoch 1's lease keeps the bound.
        clock.advance(3)
        await h.send(h.command([400.0, 800.0, 880.0, 880.0], epoch=2, lease_s=10))
        assert h.caps == [400.0, 700.0, 600.0, 880.0]
        # Epoch 1's command, replayed or still sent by the old controller, is refused by epoch.
        old = await h.send(h.command([880.0] * 4, epoch=1, seq=10**6, lease_s=10))
        assert isinstance(old, Rejected) and old.reason == "stale_seq"
        # Epoch 1's lease ends: epoch 2's caps alone, raised to its plan and never above it.
        clock.advance(2.9)
        assert h.unit.next_due_ns() <= clock.now_ns() + int(0.1 * NS_PER_S)
        assert not await h.unit.check_lease()
        assert h.caps == [400.0, 700.0, 600.0, 880.0]
        clock.advance(0.1)
        assert h.unit.lease_due(clock.now_ns())
        assert not await h.unit.check_lease()  # not a fallback: epoch 2's lease is live
        assert h.caps == [400.0, 800.0, 880.0, 880.0] and h.unit.mode == "controlled"
        assert h.last().held_epoch == 0
    run(go())


def test_no_bound_after_the_older_lease_ended_or_within_one_epoch(clock: ManualClock, r01: RackLayout,
                                                                    layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        await h.send(h.command([500.0] * 4, epoch=1, lease_s=5))
        await h.send(h.command([700.0] * 4, epoch=1, lease_s=5))  # the same epoch: the newer command alone
        assert h.caps == [700.0] * 4
        clock.advance(5)
        assert await h.unit.check_lease() and h.caps == [400.0] * 4  # fell back
        await h.send(h.command([800.0] * 4, epoch=2, seq=1))  # a new epoch after the fallback: no bound
        assert h.caps == [800.0] * 4 and h.unit.stats.held == 0 and h.last().held_epoch == 0
    run(go())


def test_the_fallback_clears_what_was_held(clock: ManualClock, r01: RackLayout, layouts: Layouts) -> None:
    async def go() -> None:
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        await h.send(h.command([600.0] * 4, epoch=1, lease_s=10))
        clock.advance(1)
        await h.send(h.command([800.0] * 4, epoch=2, seq=1, lease_s=2))  # a short new lease
        assert h.caps == [600.0] * 4
        clock.advance(2)
        assert await h.unit.check_lease()  # epoch 2's lease ran out first: fall back, never a raise
        assert h.caps == [400.0] * 4 and h.unit.held == []
    run(go())


@settings(max_examples=40, deadline=None)
@given(old=st.lists(st.floats(MIN_W, MAX_W), min_size=4, max_size=4),
       new=st.lists(st.floats(MIN_W, MAX_W), min_size=4, max_size=4), gap_s=st.floats(0.0, 20.0))
def test_no_cap_ever_exceeds_the_newest_authoritys_plan(r01: RackLayout, layouts: Layouts, old: list[float],
                                                         new: list[float], gap_s: float) -> None:
    async def go() -> None:
        clock = ManualClock()
        h = Harness(clock, r01, layouts)
        await h.unit.open()
        old_ends = clock.now_ns() + int(10 * NS_PER_S)
        await h.send(h.command(old, epoch=1, lease_s=10))
        clock.advance(gap_s)
        await h.unit.check_lease()
        await h.send(h.command(new, epoch=2, seq=1, lease_s=15))
        for _ in range(8):
            planned = np.array(new) + 1e-6
            assert (h.gpus.caps <= planned).all()
            if clock.now_ns() < old_ends and gap_s < 10:  # the old lease is live: below both plans
                assert (h.gpus.caps <= np.array(old) + 1e-6).all()
            clock.advance(1.5)
            await h.unit.check_lease()
    run(go())
