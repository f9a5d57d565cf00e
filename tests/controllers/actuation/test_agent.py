"""The node agent's state machine with in-memory GPUs and a frozen clock: start, control, renew,
lease fallback, resume, rejects, replay protection across restarts, backend errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from controllers.actuation.agent import NodeAgent
from controllers.actuation.backends import BoardLimits, GpuBackend, GpuReading
from controllers.actuation.messages import AgentStatus, CapCommand, SiteKey
from models.clock import NS_PER_S, ManualClock
from models.errors import ControlError

SITE, NODE = "demo-hall", "r01/node-000"
KEY = SiteKey(b"k" * 32)
MIN_W, MAX_W = 300.0, 880.0
LEASE_S = 15.0


class MemGpus:
    """Four GPUs in memory: records every apply; clamps to the range as a board does."""

    name = "mem"

    def __init__(self, n: int = 4) -> None:
        self.n = n
        self.caps: tuple[float, ...] = (MAX_W,) * n
        self.applies: list[tuple[float, ...]] = []
        self.power_w: tuple[float | None, ...] = (500.0,) * n
        self.fail_apply = False
        self.fail_read = False
        self.closed = False

    async def open(self) -> BoardLimits:
        return BoardLimits((MIN_W,) * self.n, (MAX_W,) * self.n)

    async def apply(self, caps_w: Sequence[float]) -> tuple[float, ...]:
        if self.fail_apply:
            raise ControlError("board unreachable")
        self.caps = tuple(min(max(c, MIN_W), MAX_W) for c in caps_w)
        self.applies.append(self.caps)
        return self.caps

    async def read(self) -> GpuReading:
        if self.fail_read:
            raise ControlError("board unreachable")
        return GpuReading(self.caps, self.power_w)

    async def close(self) -> None:
        self.closed = True


class Harness:
    """One agent, its GPUs, its clock and what it published."""

    def __init__(self, clock: ManualClock, state_dir: Path | None = None, safe_cap_w: float | None = 400.0,
                 gpus: MemGpus | None = None) -> None:
        self.clock = clock
        self.gpus = gpus or MemGpus()
        backend: GpuBackend = self.gpus
        self.sent: list[tuple[str, bytes]] = []
        self.agent = NodeAgent(SITE, NODE, KEY, backend, clock, lambda t, p: self.sent.append((t, p)),
                               safe_cap_w=safe_cap_w, status_every_s=5.0, state_dir=state_dir)
        self._seq = clock.now_ns()

    def command(self, caps: Sequence[float], *, lease_s: float = LEASE_S, plan_id: int = 1,
                seq: int | None = None) -> CapCommand:
        self._seq = max(self._seq + 1, self.clock.now_ns()) if seq is None else seq
        now = self.clock.now_ns()
        return CapCommand(SITE, NODE, self._seq, plan_id, now, now + int(lease_s * NS_PER_S), tuple(caps))

    def statuses(self) -> list[AgentStatus]:
        assert all(t == f"powerplane/{SITE}/status/r01@node-000" for t, _ in self.sent)
        return [AgentStatus.from_json(p) for _, p in self.sent]

    def last(self) -> AgentStatus:
        return self.statuses()[-1]


def test_start_applies_the_safe_cap_and_reports_starting(clock: ManualClock) -> None:
    async def go() -> None:
        h = Harness(clock)
        await h.agent.open()
        assert h.gpus.applies == [(400.0,) * 4]
        assert h.agent.mode == "starting" and h.agent.last_seq == 0
        st = h.last()
        assert (st.mode, st.enforced_w, st.safe_cap_w, st.backend, st.seq) == ("starting", [400.0] * 4, 400.0, "mem", 0)
        assert st.requested_w == [400.0] * 4 and st.ts_ns == clock.now_ns()
        await h.agent.close()
        assert h.gpus.closed
    asyncio.run(go())


@pytest.mark.parametrize(("safe", "applied"), [(None, MIN_W), (100.0, MIN_W), (2000.0, MAX_W), (550.0, 550.0)])
def test_safe_cap_is_clamped_into_the_board_range(clock: ManualClock, safe: float | None, applied: float) -> None:
    async def go() -> None:
        h = Harness(clock, safe_cap_w=safe)
        await h.agent.open()
        assert h.gpus.applies == [(applied,) * 4] and h.agent.safe_caps == (applied,) * 4
    asyncio.run(go())


def test_valid_command_takes_control_and_is_acknowledged(clock: ManualClock) -> None:
    async def go() -> None:
        h = Harness(clock)
        await h.agent.open()
        cmd = h.command((700.0, 650.0, 300.0, 880.0), plan_id=5)
        res = await h.agent.handle(cmd.envelope(KEY))
        assert res == cmd
        assert h.gpus.caps == (700.0, 650.0, 300.0, 880.0) and h.agent.mode == "controlled"
        st = h.last()
        assert (st.mode, st.seq, st.plan_id, st.lease_expires_ns) == ("controlled", cmd.seq, 5, cmd.expires_ns)
        assert st.requested_w == list(cmd.caps_w) and st.enforced_w == list(cmd.caps_w)
        assert st.mode_since_ns == clock.now_ns() and h.agent.stats.applied == 1
    asyncio.run(go())


def test_a_cut_is_acknowledged_at_once_a_raise_waits_for_the_heartbeat(clock: ManualClock) -> None:
    async def go() -> None:
        h = Harness(clock)
        await h.agent.open()
        await h.agent.handle(h.command((700.0,) * 4).envelope(KEY))
        n = len(h.sent)
        clock.advance(1)
        await h.agent.handle(h.command((600.0, 700.0, 700.0, 700.0)).envelope(KEY))
        assert len(h.sent) == n + 1 and h.last().enforced_w[0] == 600.0
        clock.advance(1)
        up = h.command((800.0,) * 4)
        await h.agent.handle(up.envelope(KEY))
        assert len(h.sent) == n + 1 and h.gpus.caps == (800.0,) * 4  # applied, reported later
        clock.advance(10)
        assert await h.agent.heartbeat()
        st = h.last()
        assert st.seq == up.seq and st.enforced_w == [800.0] * 4 and st.power_w == [500.0] * 4
        assert not await h.agent.heartbeat()  # not due again yet
    asyncio.run(go())


def test_renewal_with_the_same_caps_does_not_touch_the_gpus(clock: ManualClock) -> None:
    async def go() -> None:
        h = Harness(clock)
        await h.agent.open()
        await h.agent.handle(h.command((700.0,) * 4).envelope(KEY))
        applies = len(h.gpus.applies)
        clock.advance(7)
        renewal = h.command((700.0,) * 4, plan_id=2)
        assert await h.agent.handle(renewal.envelope(KEY)) == renewal
        assert len(h.gpus.applies) == applies
        assert h.agent.stats.renewed == 1 and h.agent.stats.applied == 1
        assert h.agent.lease_expires_ns == renewal.expires_ns and h.agent.last_seq == renewal.seq
        # The renewed lease counts: no fallback at the first lease's end.
        clock.advance(LEASE_S - 7 + 1)
        assert not await h.agent.check_lease() and h.agent.mode == "controlled"
    asyncio.run(go())


def test_lease_expiry_falls_back_to_min_of_current_and_safe(clock: ManualClock) -> None:
    async def go() -> None:
        h = Harness(clock)
        await h.agent.open()
        cmd = h.command((350.0, 700.0, 400.0, 880.0), lease_s=5)
        await h.agent.handle(cmd.envelope(KEY))
        clock.advance(4.9)
        assert not await h.agent.check_lease() and h.agent.mode == "controlled"
        clock.advance(0.1)
        assert await h.agent.check_lease()
        # Never a raise: the GPU at 350 W stays there, the others come down to the safe 400 W.
        assert h.gpus.caps == (350.0, 400.0, 400.0, 400.0)
        assert all(a <= b for a, b in zip(h.gpus.caps, cmd.caps_w, strict=True))
        st = h.last()
        assert (st.mode, st.mode_since_ns, st.enforced_w) == ("fallback", clock.now_ns(), [350.0, 400.0, 400.0, 400.0])
        assert h.agent.stats.fallbacks == 1
        since = st.mode_since_ns
        clock.advance(30)
        assert not await h.agent.check_lease()  # once per lease
        assert h.agent.stats.fallbacks == 1
        assert await h.agent.heartbeat()
        assert h.last().mode_since_ns == since  # the fallback's moment survives heartbeats
    asyncio.run(go())


def test_fallback_from_starting_never_happens_and_a_new_command_resumes_control(clock: ManualClock) -> None:
    async def go() -> None:
        h = Harness(clock)
        await h.agent.open()
        clock.advance(100)
        assert not await h.agent.check_lease() and h.agent.mode == "starting"
        await h.agent.handle(h.command((700.0,) * 4, lease_s=3).envelope(KEY))
        clock.advance(3)
        assert await h.agent.check_lease() and h.gpus.caps == (400.0,) * 4
        clock.advance(2)
        # The same caps as before the fallback are applied again: what is enforced changed.
        back = h.command((700.0,) * 4, plan_id=9)
        assert await h.agent.handle(back.envelope(KEY)) == back
        assert h.agent.status().mode == "controlled" and h.gpus.caps == (700.0,) * 4
        assert h.agent.stats.resumed == 1
        st = h.last()
        assert (st.mode, st.plan_id, st.mode_since_ns) == ("controlled", 9, clock.now_ns())
    asyncio.run(go())


def test_rejects_are_counted_by_reason_and_reported(clock: ManualClock) -> None:
    async def go() -> None:
        h = Harness(clock)
        await h.agent.open()
        good = h.command((700.0,) * 4)
        await h.agent.handle(good.envelope(KEY))
        enforced = h.gpus.caps
        bad = [
            b"{not json",
            h.command((600.0,) * 4).envelope(SiteKey(b"z" * 32)),
            CapCommand(SITE, "r01/node-001", good.seq + 10, 1, clock.now_ns(), clock.now_ns() + NS_PER_S,
                       (600.0,) * 4).envelope(KEY),
            good.envelope(KEY),  # replay
            h.command((600.0,) * 4, lease_s=-1).envelope(KEY),
            h.command((600.0,) * 3).envelope(KEY),
            h.command((600.0, 600.0, 600.0, 9000.0)).envelope(KEY),
        ]
        for payload in bad:
            assert not isinstance(await h.agent.handle(payload), CapCommand)
        assert h.gpus.caps == enforced and h.agent.last_seq == good.seq
        want = {"malformed": 1, "bad_signature": 1, "wrong_target": 1, "stale_seq": 1, "expired": 1,
                "out_of_bounds": 2}
        assert dict(h.agent.stats.rejected) == want
        st = h.last()
        assert st.rejected == want and st.last_reject.startswith("out_of_bounds: GPU 3: cap 9000.0 W")
        assert st.mode == "controlled"
    asyncio.run(go())


def test_applied_seq_survives_a_restart(clock: ManualClock, tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness(clock, state_dir=tmp_path)
        await h.agent.open()
        cmd = h.command((700.0,) * 4, plan_id=3)
        await h.agent.handle(cmd.envelope(KEY))
        assert json.loads((tmp_path / "r01@node-000.json").read_text()) == {"seq": cmd.seq, "plan_id": 3}
        await h.agent.close()
        clock.advance(1)
        # The node restarts (safe cap) and hears the old, still-unexpired command again.
        h2 = Harness(clock, state_dir=tmp_path)
        await h2.agent.open()
        assert h2.agent.last_seq == cmd.seq and h2.gpus.caps == (400.0,) * 4
        res = await h2.agent.handle(cmd.envelope(KEY))
        assert not isinstance(res, CapCommand) and res.reason == "stale_seq"
        assert h2.gpus.caps == (400.0,) * 4 and h2.agent.mode == "starting"
        newer = CapCommand(SITE, NODE, cmd.seq + 1, 4, clock.now_ns(), clock.now_ns() + 10 * NS_PER_S, (650.0,) * 4)
        assert await h2.agent.handle(newer.envelope(KEY)) == newer and h2.gpus.caps == (650.0,) * 4
    asyncio.run(go())


def test_unreadable_state_accepts_fresh_commands(clock: ManualClock, tmp_path: Path) -> None:
    (tmp_path / "r01@node-000.json").write_text("{torn")

    async def go() -> None:
        h = Harness(clock, state_dir=tmp_path)
        await h.agent.open()
        assert h.agent.last_seq == 0
        cmd = h.command((700.0,) * 4)
        assert await h.agent.handle(cmd.envelope(KEY)) == cmd
        assert json.loads((tmp_path / "r01@node-000.json").read_text())["seq"] == cmd.seq
    asyncio.run(go())


def test_backend_errors_are_counted_not_raised(clock: ManualClock) -> None:
    async def go() -> None:
        h = Harness(clock)
        await h.agent.open()
        await h.agent.handle(h.command((700.0,) * 4, lease_s=5).envelope(KEY))
        h.gpus.fail_apply = True
        cut = h.command((500.0,) * 4, lease_s=5)
        assert await h.agent.handle(cut.envelope(KEY)) == cut  # no exception
        assert h.agent.stats.apply_errors == 1 and h.gpus.caps == (700.0,) * 4
        st = h.last()
        # The status tells the truth: 500 W requested, 700 W still enforced.
        assert st.requested_w == [500.0] * 4 and st.enforced_w == [700.0] * 4
        clock.advance(5)
        assert await h.agent.check_lease()  # the fallback fails too, and is counted
        assert h.agent.stats.apply_errors == 2 and h.agent.mode == "fallback"
        h.gpus.fail_read = True
        clock.advance(10)
        assert await h.agent.heartbeat()  # status without a board reading
        assert h.last().power_w == []
        h.gpus.fail_apply = False
        h.gpus.fail_read = False
        back = h.command((450.0,) * 4)
        assert await h.agent.handle(back.envelope(KEY)) == back
        assert h.gpus.caps == (450.0,) * 4 and h.agent.status().mode == "controlled"
    asyncio.run(go())
