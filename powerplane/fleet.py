"""The demo's processes, and its controller-outage drill judged from the agents' own records.

``Proc`` runs one ``python -m powerplane ...`` child with its output in a log file.
``OutageDrill`` kills the controller process with SIGKILL mid-run (a crash: no goodbye, no
last command), starts a new one later, and judges from what every agent unit recorded
(its mode transitions, in its summary file) whether every node fell back to its safe cap
within one lease and came back under control after the restart. ``TakeoverDrill`` (two
controllers) kills the one that holds authority instead: the standby must take over before
any agent's lease runs out, so no node falls back at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.clock import NS_PER_S
from powerplane.proc import dies_with_parent

FALLBACK_SLACK_S = 1.0  # the agent checks its lease every 0.25 s of site time
FALLBACK_SLACK_WALL_S = 0.3  # ... and a loaded agent process takes this long to get to every unit


class Proc:
    """One child process of the demo (``python -m powerplane ARGS``), its output in ``log``."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = list(args)
        self.log = log
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *dies_with_parent([sys.executable, "-m", "powerplane", *self.args]), stdout=out,
                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=self.env)

    @property
    def alive(self) -> bool:
        """Whether it is running."""
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        """Its pid."""
        return self.proc.pid if self.proc is not None else None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not end; return its exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 5) -> str:
        """The last lines of its log (for an error message)."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class DrillResult:
    """What the controller-outage drill showed."""

    at_s: float
    down_s: float
    lease_s: float
    nodes: int
    fell_back: int  # nodes that fell back after the kill
    in_time: int  # ... within one lease (+ slack) of the kill
    worst_fallback_s: float
    back: int  # nodes under control again after the restart
    worst_back_s: float
    slack_s: float = 0.0  # allowance for checking the lease and scheduling a loaded agent process

    @property
    def ok(self) -> bool:
        """Every node fell back within one lease and came back."""
        return self.in_time == self.nodes and self.back == self.nodes

    def describe(self) -> str:
        """One line for the summary."""
        return (f"controller killed (SIGKILL) at t={self.at_s:.0f} s for {self.down_s:.0f} s: {self.in_time}/"
                f"{self.nodes} nodes fell back to their safe cap within one lease ({self.lease_s:g} s + "
                f"{self.slack_s:.0f} s for lease checks and process scheduling; latest after "
                f"{self.worst_fallback_s:.1f} s); {self.back}/{self.nodes} back under control "
                f"{self.worst_back_s:.1f} s after the restart")

    def to_json(self) -> dict[str, Any]:
        """The drill as data."""
        return {"at_s": self.at_s, "down_s": self.down_s, "nodes": self.nodes, "in_time": self.in_time,
                "back": self.back, "worst_fallback_s": self.worst_fallback_s, "worst_back_s": self.worst_back_s,
                "ok": self.ok}


class OutageDrill:
    """Kill the controller at ``at_s`` of site time, restart it ``down_s`` later."""

    def __init__(self, at_s: float, down_s: float) -> None:
        self.at_s = at_s
        self.down_s = down_s
        self.kill_ns = -1
        self.restart_ns = -1
        self.result: DrillResult | None = None

    @property
    def down(self) -> bool:
        """Whether the controller is down now."""
        return self.kill_ns >= 0 and self.restart_ns < 0

    def evaluate(self, agent_summaries: Sequence[dict[str, Any]], lease_s: float, speed: float = 1.0) -> DrillResult:
        """Judge the drill from every agent unit's mode transitions (its own clock)."""
        slack = FALLBACK_SLACK_S + FALLBACK_SLACK_WALL_S * speed
        nodes = fell = in_time = back = 0
        worst_fb = worst_back = float("nan")
        for s in agent_summaries:
            for u in s.get("units", []):
                n = int(u.get("nodes", 0))
                nodes += n
                tr = [(str(m), int(t)) for m, t in u.get("transitions", [])]
                fb = next((t for m, t in tr if m == "fallback" and t >= self.kill_ns), None)
                if fb is not None:
                    fell += n
                    delay = (fb - self.kill_ns) / NS_PER_S
                    worst_fb = delay if worst_fb != worst_fb else max(worst_fb, delay)
                    if delay <= lease_s + slack:
                        in_time += n
                if self.restart_ns >= 0:
                    ctl = next((t for m, t in tr if m == "controlled" and t >= self.restart_ns), None)
                    if ctl is not None:
                        back += n
                        b = (ctl - self.restart_ns) / NS_PER_S
                        worst_back = b if worst_back != worst_back else max(worst_back, b)
        self.result = DrillResult(self.at_s, self.down_s, lease_s, nodes, fell, in_time, worst_fb, back, worst_back,
                                  slack)
        return self.result


@dataclass
class TakeoverResult:
    """What the takeover drill showed (``powerplane demo --controllers 2``)."""

    at_s: float
    killed: str  # the controller that held authority
    killed_epoch: int
    successor: str  # who took over
    epoch: int  # under which epoch
    nodes: int
    fell_back: int  # nodes that fell back to their safe cap after the kill: must be none
    held: int  # agent units that enforced the minimum of both epochs while the old lease ran
    acquired_after_s: float  # site s from the kill to the successor holding authority
    first_plan_periods: float  # periods from holding authority to its first published plan
    rejoined: bool  # the killed controller, restarted, came back as a standby

    @property
    def ok(self) -> bool:
        """Someone took over, planned within 2 periods, and no node fell back."""
        return bool(self.successor) and self.fell_back == 0 and 0 <= self.first_plan_periods <= 2

    def describe(self) -> str:
        """One line for the summary."""
        if not self.successor:
            return f"{self.killed} (the authority) killed at t={self.at_s:.0f} s: no controller took over"
        return (f"{self.killed} (the authority, epoch {self.killed_epoch}) killed (SIGKILL) at t={self.at_s:.0f} s: "
                f"{self.successor} took over as epoch {self.epoch} {self.acquired_after_s:.1f} s later (its "
                f"authority lease ran out) and planned within {self.first_plan_periods:.0f} period(s); "
                f"{self.fell_back}/{self.nodes} nodes fell back; {self.held} rack units enforced the lower of both "
                f"epochs' caps until the old lease ended; {self.killed} "
                + ("rejoined as a standby" if self.rejoined else "did not rejoin"))

    def to_json(self) -> dict[str, Any]:
        """The drill as data."""
        return {"at_s": self.at_s, "killed": self.killed, "killed_epoch": self.killed_epoch,
                "successor": self.successor, "epoch": self.epoch, "nodes": self.nodes, "fell_back": self.fell_back,
                "held": self.held, "acquired_after_s": self.acquired_after_s,
                "first_plan_periods": self.first_plan_periods, "rejoined": self.rejoined, "ok": self.ok}


class TakeoverDrill:
    """With several controllers: kill the one that holds authority at ``at_s`` of site time, restart it
    ``down_s`` later (it must come back as a standby); judged from the agents' and controllers' records."""

    def __init__(self, at_s: float, down_s: float) -> None:
        self.at_s = at_s
        self.down_s = down_s
        self.kill_ns = -1
        self.restart_ns = -1
        self.killed = ""
        self.killed_epoch = 0
        self.result: TakeoverResult | None = None

    @property
    def down(self) -> bool:
        """Never: the standby keeps the plane up."""
        return False

    def evaluate(self, agent_summaries: Sequence[dict[str, Any]], controllers: dict[str, dict[str, Any]],
                 period_s: float) -> TakeoverResult:
        """Judge the drill: agents' mode transitions, and the successor's record of its takeover."""
        nodes = fell = held = 0
        for s in agent_summaries:
            held += int(s.get("held", 0))
            for u in s.get("units", []):
                n = int(u.get("nodes", 0))
                nodes += n
                if any(str(m) == "fallback" and int(t) >= self.kill_ns for m, t in u.get("transitions", [])):
                    fell += n
        successor, epoch, acquired_s, periods = "", 0, float("nan"), float("nan")
        for name, doc in controllers.items():
            if name == self.killed:
                continue
            for t in (doc.get("authority") or {}).get("takeovers", []):
                if int(t["epoch"]) > self.killed_epoch and int(t["acquired_ns"]) >= self.kill_ns:
                    successor, epoch = name, int(t["epoch"])
                    acquired_s = (int(t["acquired_ns"]) - self.kill_ns) / NS_PER_S
                    first = int(t["first_plan_ns"])
                    periods = (first - int(t["acquired_ns"])) / NS_PER_S / period_s if first >= 0 else float("nan")
                    break
        # The restarted controller's record: it planned as a standby (the successor held authority).
        again = controllers.get(self.killed, {}).get("authority") or {}
        rejoined = self.restart_ns >= 0 and int(again.get("standby_plans", 0)) > 0
        self.result = TakeoverResult(self.at_s, self.killed, self.killed_epoch, successor, epoch, nodes, fell, held,
                                     acquired_s, periods, rejoined)
        return self.result
