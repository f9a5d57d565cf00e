"""Actuation drills with real processes: a real mosquitto, the twin's GPU boards, node agents as
separate ``powerplane agent`` processes and the controller in-process or as ``powerplane controller``.

A two-rack site (four nodes) with a 3 s lease keeps every drill short; deadlines are generous
(things that must happen get the lease plus slack), never tight timing thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from controllers.actuation.link import MqttAddress
from paho.mqtt.enums import CallbackAPIVersion

from controllers.actuation.actuator import Actuator
from controllers.actuation.messages import AgentStatus, CapCommand, SiteKey, caps_topic
from models.clock import NS_PER_S, SystemClock
from models.events import EV_NON_COMPLIANT
from models.site import SiteConfig, load_site
from models.topology import L_NODE, Topology, build_topology
from powerplane.runtime import ControlPlane
from store.embedded import EmbeddedStore
from testbed.realservers import Mosquitto
from twin.runner import Twin

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]

KEY = SiteKey(b"drill-site-key-0123456789abcdef!")
WRONG_KEY = SiteKey(b"not-the-site-key-0123456789abcd!")
LEASE_S = 3.0
SLACK_S = 5.0  # noisy shared CI machines
SITE_ID = "drill"
NODES = ("r01/node-000", "r01/node-001", "r02/node-000", "r02/node-001")

SITE_TOML = """\
[site]
name = "drill"
timezone = "UTC"
interconnect_limit_kw = 60

[facility]
overhead_fixed_kw = 1
overhead_linear = 0.06
overhead_quadratic = 0.04

[[feeds]]
id = "utility-1"
limit_kw = 80
voltage_v = 415

[[ups]]
id = "ups-a"
feed = "utility-1"
limit_kw = 60
efficiency = 0.965
battery_kwh = 40

[[halls]]
id = "hall-a"
ups = "ups-a"
limit_kw = 55

[[rows]]
id = "row-a1"
hall = "hall-a"
limit_kw = 50

[rack_types.small]
rated_kw = 12
nodes = 2
gpus_per_node = 4
gpu_model = "rubin-ultra"
gpu_min_w = 300
gpu_max_w = 880
gpu_idle_w = 120
node_base_w = 350
psu_efficiency = 0.97
rack_overhead_w = 200
pdus = 1
pdu_limit_kw = 12
pdu_model = "mixed"
liquid_fraction = 0.95

[[racks]]
id = "r01"
row = "row-a1"
type = "small"
loop = "cdu-1"

[[racks]]
id = "r02"
row = "row-a1"
type = "small"
loop = "cdu-1"

[[loops]]
id = "cdu-1"
coolant = "water"
flow_lpm = 200
supply_c = 30
max_return_c = 45
hx_rated_kw = 60
pumps = 2

[[jobs]]
id = "train"
kind = "training"
priority = 1
placement = ["r01", "r02"]
utilization = 0.9

[actuation]
lease_s = 3
status_every_s = 1
settle_s = 3

[twin]
seed = 7
step_s = 0.1
"""


# ---- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    p = tmp_path / "drill.toml"
    p.write_text(SITE_TOML)
    return p


class Statuses:
    """Every agent status on the broker (retained ones included), as a plain paho subscriber."""

    def __init__(self, port: int) -> None:
        self.latest: dict[str, AgentStatus] = {}
        self.history: list[AgentStatus] = []
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-statuses-{os.getpid()}-{id(self)}")
        c.on_connect = lambda cl, *_a: cl.subscribe(f"powerplane/{SITE_ID}/status/+", qos=1)
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 2)
        c.connect_async("127.0.0.1", port)
        c.loop_start()
        self._client = c

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        st = AgentStatus.from_json(bytes(msg.payload))
        with self._lock:
            self.latest[st.node] = st
            self.history.append(st)

    def get(self, node: str) -> AgentStatus | None:
        with self._lock:
            return self.latest.get(node)

    def all(self, pred: Callable[[AgentStatus], bool], nodes: tuple[str, ...] = NODES) -> bool:
        with self._lock:
            return all(n in self.latest and pred(self.latest[n]) for n in nodes)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Agents:
    """``powerplane agent --backend sim`` processes; stopped (and their logs closed) at the end."""

    def __init__(self, site_file: Path, url: str, workdir: Path) -> None:
        self.site_file, self.url, self.workdir = site_file, url, workdir
        self.procs: list[tuple[subprocess.Popen[bytes], TextIO, Path]] = []

    def spawn(self, nodes: tuple[str, ...], key: SiteKey = KEY, name: str = "agent") -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}-{len(self.procs)}.log"
        fh = log.open("w")
        cmd = [sys.executable, "-m", "powerplane", "agent", "--backend", "sim", "--site", str(self.site_file),
               "--mqtt", self.url, "--state-dir", str(self.workdir / "state")]
        for n in nodes:
            cmd += ["--node", n]
        env = dict(os.environ, POWERPLANE_SITE_KEY=key.hex())
        (self.workdir / "state").mkdir(exist_ok=True)
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        self.procs.append((p, fh, log))
        return p

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, _, log in self.procs)

    def stop(self) -> None:
        for p, _, _ in self.procs:
            if p.poll() is None:
                p.terminate()
        for p, fh, _ in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            fh.close()


def controller_cli(site_file: Path, url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], TextIO]:
    fh = (workdir / "controller.log").open("w")
    env = dict(os.environ, POWERPLANE_SITE_KEY=KEY.hex())
    p = subprocess.Popen([sys.executable, "-m", "powerplane", "controller", "--site", str(site_file),
                          "--mqtt", url, "--data-dir", str(workdir / "controller-data")],
                         stdout=fh, stderr=subprocess.STDOUT, env=env)
    return p, fh


async def until(pred: Callable[[], bool], timeout_s: float, what: str, diag: Callable[[], str] = str) -> float:
    """Wait (on the event loop) until ``pred()``; return the wall seconds it took."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s:g} s\n{diag()}", pytrace=False)
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


@contextlib.asynccontextmanager
async def twin_running(site: SiteConfig, port: int) -> AsyncIterator[Twin]:
    twin = Twin(site, SystemClock(), mqtt=("127.0.0.1", port))
    await twin.start()
    twin.run_in_background()
    try:
        yield twin
    finally:
        await twin.stop()


@contextlib.asynccontextmanager
async def plane_running(site: SiteConfig, topo: Topology, port: int, store_dir: Path,
                        key: SiteKey = KEY) -> AsyncIterator[ControlPlane]:
    actuator = Actuator(site, topo, key, MqttAddress("127.0.0.1", port), client_id=f"test-controller-{os.getpid()}")
    store = EmbeddedStore(store_dir)
    plane = ControlPlane(site, topo, SystemClock(), store, actuator=actuator)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()
        store.close()


@pytest.fixture
def rig(mosquitto: Mosquitto, site_file: Path, tmp_path: Path) -> Iterator[tuple[Statuses, Agents]]:
    statuses = Statuses(mosquitto.port)
    agents = Agents(site_file, mosquitto.url, tmp_path)
    try:
        yield statuses, agents
    finally:
        agents.stop()
        statuses.close()


def controlled(st: AgentStatus) -> bool:
    return st.mode == "controlled"


# ---- a. the controller dies ---------------------------------------------------------------------
def test_controller_killed_every_agent_falls_back_within_a_lease(
        mosquitto: Mosquitto, site_file: Path, tmp_path: Path, rig: tuple[Statuses, Agents]) -> None:
    statuses, agents = rig
    site = load_site(site_file)

    async def go() -> None:
        async with twin_running(site, mosquitto.port):
            agents.spawn(NODES[:2])
            agents.spawn(NODES[2:])
            ctl, fh = controller_cli(site_file, mosquitto.url, tmp_path)
            try:
                def diag() -> str:
                    return f"{statuses.latest}\n{agents.logs()}\n{(tmp_path / 'controller.log').read_text()[-3000:]}"

                await until(lambda: statuses.all(controlled), 45, "every node under control", diag)
                ctl.send_signal(signal.SIGKILL)
                ctl.wait(10)
                killed_ns = time.time_ns()
                # The fallback never raises a cap: min(current, safe) per GPU, and the safe cap
                # (the board's minimum here) is what the twin's boards then report.
                await until(lambda: statuses.all(lambda s: s.mode == "fallback" and all(
                    e is not None and e <= 300.5 for e in s.enforced_w)), LEASE_S + SLACK_S + 5,
                            "every node falls back to its safe cap", diag)
                for n in NODES:
                    st = statuses.get(n)
                    assert st is not None
                    # Fell back on its own within one lease of the controller's death (plus slack).
                    assert (st.mode_since_ns - killed_ns) / NS_PER_S <= LEASE_S + SLACK_S
                    assert st.mode_since_ns >= st.lease_expires_ns and st.safe_cap_w == 300.0
            finally:
                if ctl.poll() is None:
                    ctl.kill()
                ctl.wait(10)
                fh.close()

    asyncio.run(go())


# ---- b. the broker restarts -----------------------------------------------------------------------
def test_broker_restart_plans_resume(mosquitto: Mosquitto, site_file: Path, tmp_path: Path,
                                     rig: tuple[Statuses, Agents]) -> None:
    statuses, agents = rig
    site = load_site(site_file)
    topo = build_topology(site)

    async def go() -> None:
        async with twin_running(site, mosquitto.port), plane_running(site, topo, mosquitto.port, tmp_path / "store"):
            agents.spawn(NODES)
            await until(lambda: statuses.all(controlled), 45, "every node under control",
                        lambda: f"{statuses.latest}\n{agents.logs()}")
            # Down for longer than a lease: the agents must fall back meanwhile.
            await asyncio.to_thread(mosquitto.stop)
            await asyncio.sleep(LEASE_S + 1.5)
            await asyncio.to_thread(mosquitto.start)
            restarted_ns = time.time_ns()
            await until(lambda: statuses.all(lambda s: controlled(s) and s.mode_since_ns >= restarted_ns - NS_PER_S),
                        45, "every node back under control after the restart",
                        lambda: f"{statuses.latest}\n{agents.logs()}")

    asyncio.run(go())


# ---- c. tampered and replayed commands -------------------------------------------------------------
def test_tampered_and_replayed_commands_are_rejected(mosquitto: Mosquitto, site_file: Path,
                                                     rig: tuple[Statuses, Agents]) -> None:
    statuses, agents = rig
    site = load_site(site_file)
    node = NODES[0]
    topic = caps_topic("powerplane", SITE_ID, node)

    async def go() -> None:
        async with twin_running(site, mosquitto.port):
            agents.spawn((node,))
            await until(lambda: statuses.all(lambda s: s.mode == "starting", (node,)), 30, "agent up",
                        agents.logs)
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-attacker")
            pub.connect("127.0.0.1", mosquitto.port)
            pub.loop_start()
            try:
                def send(payload: bytes) -> None:
                    pub.publish(topic, payload, qos=1).wait_for_publish(10)

                now = time.time_ns()
                good = CapCommand(SITE_ID, node, now, 1, now, now + 120 * NS_PER_S, (600.0, 610.0, 620.0, 630.0))
                send(good.envelope(KEY))
                # The twin's boards report the new limits back through the agent's heartbeat.
                await until(lambda: statuses.all(lambda s: controlled(s) and s.enforced_w == list(good.caps_w)
                                                 and s.seq == good.seq, (node,)),
                            30, "the genuine command enforced", agents.logs)
                env = good.envelope(KEY).decode()
                raised = CapCommand(SITE_ID, node, now + 1, 1, now, now + 120 * NS_PER_S, (880.0,) * 4)
                tampered = env.replace("600.0", "880.0").encode()  # body edited, signature kept
                send(tampered)
                send(raised.envelope(WRONG_KEY))  # a raise signed with another key
                send(good.envelope(KEY))  # replay of the applied command
                await until(lambda: statuses.all(lambda s: s.rejected.get("bad_signature", 0) == 2
                                                 and s.rejected.get("stale_seq", 0) == 1, (node,)),
                            30, "rejects reported", lambda: f"{statuses.latest}\n{agents.logs()}")
                # Several heartbeats later the boards still enforce the genuine caps.
                st = statuses.get(node)
                assert st is not None
                ts = st.ts_ns
                await until(lambda: (s := statuses.get(node)) is not None and s.ts_ns > ts + 2 * NS_PER_S, 20,
                            "later heartbeats")
                st = statuses.get(node)
                assert st is not None
                assert (st.mode, st.seq, st.enforced_w) == ("controlled", good.seq, list(good.caps_w))
                assert st.rejected == {"bad_signature": 2, "stale_seq": 1}
                assert "bad_signature" in st.last_reject or "stale_seq" in st.last_reject
            finally:
                pub.disconnect()
                pub.loop_stop()

    asyncio.run(go())


# ---- d. a node that does not comply --------------------------------------------------------------
def test_noncompliant_nodes_are_flagged_and_accounted_at_worst_case(
        mosquitto: Mosquitto, site_file: Path, tmp_path: Path, rig: tuple[Statuses, Agents]) -> None:
    statuses, agents = rig
    site = load_site(site_file)
    topo = build_topology(site)
    wrong, absent = NODES[2], NODES[3]  # one agent has the wrong key, one node has no agent

    async def go() -> None:
        async with twin_running(site, mosquitto.port), \
                plane_running(site, topo, mosquitto.port, tmp_path / "store") as plane:
            agents.spawn(NODES[:2])
            agents.spawn((wrong,), key=WRONG_KEY, name="wrong-key")

            def flagged() -> set[str | None]:
                return {e.entity for e in plane.recent if e.kind == EV_NON_COMPLIANT}

            def diag() -> str:
                return f"events {list(plane.recent)[-10:]}\n{statuses.latest}\n{agents.logs()}"

            await until(lambda: {wrong, absent} <= flagged() and statuses.all(controlled, NODES[:2]), 45,
                        "both non-complying nodes flagged, the others controlled", diag)
            assert flagged() == {wrong, absent}
            v = plane.actuator.verifier if plane.actuator is not None else None
            assert v is not None
            idx = {n: k for k, n in enumerate(topo.ids(L_NODE))}
            assert v.reason == {idx[wrong]: "no acknowledgement", idx[absent]: "no acknowledgement"}
            st = statuses.get(wrong)
            assert st is not None and st.mode == "starting" and st.rejected.get("bad_signature", 0) >= 1
            assert KEY.kid in st.last_reject and WRONG_KEY.kid in st.last_reject
            # Worst case: the node without an agent (nothing known) at its ceiling; the wrong-key
            # node at no less than what it reports enforcing (its safe cap).
            n0 = plane.stats.plans
            await until(lambda: plane.stats.plans > n0, 10, "another plan")
            plan = plane.last_plan
            assert plan is not None
            first = topo.node_first_gpu.astype(int)

            def acc(node: str) -> np.ndarray:
                k = idx[node]
                return plan.accounted_w[first[k]:first[k] + int(topo.node_gpus[k])]

            assert np.allclose(acc(absent), 880.0)
            assert (acc(wrong) >= 300.0 - 1e-6).all()
            assert plan.violations(topo, of="caps") == []
            assert plane.stats.plans_with_violations == 0
            evs = [e for e in plane.recent if e.kind == EV_NON_COMPLIANT]
            assert len(evs) == 2  # once per episode

    asyncio.run(go())
