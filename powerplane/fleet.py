"""The demo's node agents and its controller-outage drill.

``AgentFleet`` runs ``powerplane agent --backend sim`` as separate processes (racks split
between them), sharing the demo's scaled clock and a per-run site key: caps reach the
twin's GPUs only through them. ``OutageDrill`` kills the controller's side mid-run (its
MQTT connection dropped without a DISCONNECT, its control loop stopped), waits, then starts
a fresh one, and checks from the agents' own reports that every node fell back to its
safe cap within one lease and came back under control after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from controllers.actuation.actuator import Actuator
from controllers.actuation.messages import KEY_ENV, SiteKey
from models.clock import NS_PER_S
from models.topology import L_RACK, Topology

FALLBACK_SLACK_S = 1.0  # the agent checks its lease every 0.25 s of site time
FALLBACK_SLACK_WALL_S = 0.3  # ... and a loaded agent process takes this long to get to every node


class AgentFleet:
    """``procs`` agent processes covering every node of the site."""

    def __init__(self, site_path: Path, topo: Topology, mqtt_url: str, clock_anchor: str, key: SiteKey,
                 log_dir: Path, procs: int = 2) -> None:
        self.site_path = site_path
        self.racks = topo.ids(L_RACK)
        self.mqtt_url = mqtt_url
        self.clock_anchor = clock_anchor
        self.key = key
        self.log_dir = log_dir
        self.n = max(1, min(procs, len(self.racks)))
        self.procs: list[asyncio.subprocess.Process] = []
        self.exit_codes: list[int | None] = []

    async def start(self) -> None:
        """Start the agent processes."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **{KEY_ENV: self.key.hex()})
        for i in range(self.n):
            racks = self.racks[i::self.n]
            args = [sys.executable, "-m", "powerplane", "agent", "--site", str(self.site_path), "--backend", "sim",
                    "--mqtt", self.mqtt_url, "--clock", self.clock_anchor]
            for r in racks:
                args += ["--node", f"{r}/*"]
            log = open(self.log_dir / f"agent-{i}.log", "wb")  # noqa: SIM115 - owned by the process
            proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env)
            log.close()
            self.procs.append(proc)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every agent and wait for it (the GPUs keep their limits)."""
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), timeout_s)
            except TimeoutError:
                p.kill()
                await p.wait()
        self.exit_codes = [p.returncode for p in self.procs]

    def alive(self) -> int:
        """Agent processes still running."""
        return sum(1 for p in self.procs if p.returncode is None)


@dataclass
class DrillResult:
    """What the controller-outage drill showed."""

    at_s: float
    down_s: float
    lease_s: float
    nodes: int
    fell_back: int  # nodes that reported a fallback after the kill
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
        return (f"controller killed at t={self.at_s:.0f} s for {self.down_s:.0f} s: {self.in_time}/{self.nodes} nodes "
                f"fell back to their safe cap within one lease ({self.lease_s:g} s + {self.slack_s:.0f} s for "
                f"lease checks and process scheduling; latest after "
                f"{self.worst_fallback_s:.1f} s); {self.back}/{self.nodes} back under control "
                f"{self.worst_back_s:.1f} s after the restart")


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

    def kill(self, actuator: Actuator, now_ns: int) -> None:
        """Drop the controller's connection as a crash would."""
        actuator.stop(clean=False)
        self.kill_ns = now_ns

    def restarted(self, now_ns: int) -> None:
        """Note the restart time."""
        self.restart_ns = now_ns

    def evaluate(self, actuator: Actuator, lease_s: float, speed: float = 1.0) -> DrillResult:
        """Judge the drill from the restarted controller's view of the agents' statuses."""
        v = actuator.verifier
        fb = v.fallback_ns
        fell = fb >= self.kill_ns
        delay = (fb - self.kill_ns) / NS_PER_S
        slack = FALLBACK_SLACK_S + FALLBACK_SLACK_WALL_S * speed
        in_time = fell & (delay <= lease_s + slack)
        back = (v.controlled_ns >= self.restart_ns) & (v.mode == "controlled")
        back_s = (v.controlled_ns - self.restart_ns) / NS_PER_S
        self.result = DrillResult(
            at_s=self.at_s, down_s=self.down_s, lease_s=lease_s, nodes=len(fb), fell_back=int(fell.sum()),
            in_time=int(in_time.sum()), worst_fallback_s=float(delay[fell].max()) if fell.any() else float("nan"),
            back=int(back.sum()), worst_back_s=float(back_s[back].max()) if back.any() else float("nan"),
            slack_s=slack)
        return self.result
