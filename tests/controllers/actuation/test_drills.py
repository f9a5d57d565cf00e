"""Actuation drills with real processes: a real mosquitto, the twin (in this process) serving its
GPU boards over MQTT, ``powerplane agent --backend sim --rack ...`` and ``powerplane controller``
as separate processes, and an attacker publishing with plain paho.

The demo hall with a 3 s lease keeps every drill short. Deadlines are what the design promises
(a fallback within one lease, plus slack for process scheduling on a shared machine) or generous
waits for things that must eventually happen; nothing is a timing threshold on speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from paho.mqtt.enums import CallbackAPIVersion

from controllers.actuation.layout import Layouts
from controllers.actuation.messages import AgentStatus, CapCommand, SiteKey, caps_topic, open_status
from models.clock import NS_PER_S, SystemClock
from models.site import SiteConfig, load_site
from models.topology import build_topology
from testbed.realservers import Mosquitto
from tests.conftest import DEMO_SITE, ROOT
from twin.runner import Twin

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

KEY = SiteKey(b"drill-site-key-0123456789abcdef!")
WRONG_KEY = SiteKey(b"not-the-site-key-0123456789abcd!")
LEASE_S = 3.0
SLACK_S = 5.0  # lease checks every 0.25 s, plus scheduling loaded processes on a shared machine
SAFE_W = 300.0  # the demo's gpu_min_w: the default safe cap
SITE = "demo-hall"
RACKS = tuple(f"r0{i}" for i in range(1, 9))


# ---- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    """The demo hall with a 3 s lease."""
    text = DEMO_SITE.read_text()
    assert "\n[actuation]\n" in text
    p = tmp_path / "demo-lease3.toml"
    p.write_text(text.replace("\n[actuation]\n", f"\n[actuation]\nlease_s = {LEASE_S:g}\n", 1))
    return p


class Statuses:
    """Every agent status on the broker, opened as the controller opens them (a plain paho subscriber)."""

    def __init__(self, port: int, layouts: Layouts) -> None:
        self.layouts = layouts
        self.latest: dict[str, AgentStatus] = {}
        self.refused: list[str] = []
        self.commands: dict[str, bytes] = {}  # the newest command seen per rack
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-statuses-{os.getpid()}-{id(self)}")
        c.on_connect = lambda cl, *_a: cl.subscribe([(f"powerplane/{SITE}/status/+", 1),
                                                     (f"powerplane/{SITE}/caps/+", 1)])
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 2)
        c.connect_async("127.0.0.1", port)
        c.loop_start()
        self._client = c

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if "/caps/" in msg.topic:
            with self._lock:
                self.commands[msg.topic.rsplit("/", 1)[-1]] = payload
            return
        st = open_status(msg.topic, payload, self.layouts, site=SITE)
        with self._lock:
            if isinstance(st, AgentStatus):
                self.latest[st.rack] = st
            else:
                self.refused.append(f"{msg.topic}: {st.reason} {st.detail}")

    def get(self, rack: str) -> AgentStatus | None:
        with self._lock:
            return self.latest.get(rack)

    def all(self, pred: Callable[[AgentStatus], bool], racks: tuple[str, ...] = RACKS) -> bool:
        with self._lock:
            return all(r in self.latest and pred(self.latest[r]) for r in racks)

    def show(self) -> str:
        with self._lock:
            return "\n".join(f"{r}: {s.mode} epoch {s.epoch} seq {s.seq} since {s.since_ns} rejected {s.rejected}"
                             for r, s in sorted(self.latest.items()))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Procs:
    """``python -m powerplane`` processes; stopped (and their logs closed) at the end."""

    def __init__(self, site_file: Path, url: str, workdir: Path) -> None:
        self.site_file, self.url, self.workdir = site_file, url, workdir
        self.procs: list[tuple[subprocess.Popen[bytes], TextIO, Path]] = []

    def _spawn(self, name: str, args: list[str], key: SiteKey) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}-{len(self.procs)}.log"
        fh = log.open("w")
        env = dict(os.environ, POWERPLANE_SITE_KEY=key.hex(), PYTHONPATH=str(ROOT))
        p = subprocess.Popen([sys.executable, "-m", "powerplane", *args, "--site", str(self.site_file),
                              "--mqtt", self.url], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        self.procs.append((p, fh, log))
        return p

    def agent(self, racks: tuple[str, ...], *, key: SiteKey = KEY, name: str = "agent") -> subprocess.Popen[bytes]:
        args = ["agent", "--backend", "sim", "--state-dir", str(self.workdir / f"{name}-state"),
                "--summary-out", str(self.workdir / f"{name}-summary.json")]
        for r in racks:
            args += ["--rack", r]
        return self._spawn(name, args, key)

    def controller(self, *, state_dir: str = "controller-state") -> subprocess.Popen[bytes]:
        return self._spawn("controller", ["controller", "--state-dir", str(self.workdir / state_dir),
                                          "--data-dir", str(self.workdir / "controller-data"),
                                          "--summary-out", str(self.workdir / "controller-summary.json")], KEY)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, _, log in self.procs)

    def stop(self) -> None:
        for p, _, _ in self.procs:
            if p.poll() is None:
                p.terminate()
        for p, fh, _ in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            fh.close()


async def until(pred: Callable[[], bool], timeout_s: float, what: str, diag: Callable[[], str] = str) -> None:
    """Wait (on the event loop, so the twin keeps ticking) until ``pred()``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s:g} s\n{diag()}", pytrace=False)
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def twin_running(site: SiteConfig, port: int) -> AsyncIterator[Twin]:
    twin = Twin(site, SystemClock(), mqtt=("127.0.0.1", port))
    await twin.start()
    twin.run_in_background()
    try:
        yield twin
    finally:
        await twin.stop()


@pytest.fixture
def rig(mosquitto: Mosquitto, site_file: Path, tmp_path: Path) -> Iterator[tuple[Statuses, Procs, SiteConfig]]:
    site = load_site(site_file)
    assert site.actuation.lease_s == LEASE_S
    statuses = Statuses(mosquitto.port, Layouts(build_topology(site)))
    procs = Procs(site_file, mosquitto.url, tmp_path)
    try:
        yield statuses, procs, site
    finally:
        procs.stop()
        statuses.close()


def controlled(st: AgentStatus) -> bool:
    return st.mode == "controlled"


# ---- a. the controller dies, and a restarted one (a new epoch) is obeyed ------------------------------
def test_controller_killed_every_node_falls_back_and_a_restarted_controller_is_obeyed(
        mosquitto: Mosquitto, tmp_path: Path, rig: tuple[Statuses, Procs, SiteConfig]) -> None:
    statuses, procs, site = rig

    def diag() -> str:
        return f"{statuses.show()}\n{procs.logs()}"

    async def go() -> None:
        async with twin_running(site, mosquitto.port) as twin:
            procs.agent(RACKS[:4], name="agents-a")
            procs.agent(RACKS[4:], name="agents-b")
            ctl = procs.controller()
            await until(lambda: statuses.all(lambda s: controlled(s) and s.epoch == 1), 60,
                        "every rack under control of epoch 1", diag)
            old = dict(statuses.commands)  # epoch 1's commands, to replay later
            ctl.send_signal(signal.SIGKILL)
            ctl.wait(10)
            killed_ns = time.time_ns()
            # The fallback never raises a cap: min(current, safe) per GPU, i.e. the safe cap here.
            await until(lambda: statuses.all(lambda s: s.mode == "fallback"), LEASE_S + SLACK_S + 5,
                        "every rack falls back", diag)
            for r in RACKS:
                st = statuses.get(r)
                assert st is not None
                assert (st.since_ns - killed_ns) / NS_PER_S <= LEASE_S + SLACK_S  # on its own, within a lease
                assert st.since_ns >= st.lease_expires_ns and st.safe_cap_w == SAFE_W
            await until(lambda: statuses.all(lambda s: bool((s.enforced_w <= SAFE_W + 0.5).all())), 10,
                        "every GPU at the safe cap", diag)
            await until(lambda: bool((twin.sim.gpu_cap_w <= SAFE_W + 0.5).all()), 10, "the twin's boards follow")
            # A restarted controller raises its epoch from --state-dir and is obeyed from seq 1 on.
            procs.controller()
            await until(lambda: statuses.all(lambda s: controlled(s) and s.epoch == 2), 60,
                        "every rack under control of epoch 2", diag)
            assert (tmp_path / "controller-state" / "epoch").read_text().strip() == "2"
            # Epoch 1's commands, replayed, are refused as stale by every rack.
            pub = attacker(mosquitto.port)
            try:
                for r in RACKS:
                    pub.publish(caps_topic("powerplane", SITE, r), old[r], qos=1).wait_for_publish(10)
            finally:
                pub.disconnect()
                pub.loop_stop()
            await until(lambda: statuses.all(lambda s: s.rejected.get("stale_seq", 0) >= 1 and controlled(s)
                                             and s.epoch == 2), 20, "old-epoch replays refused", diag)
        assert statuses.refused == []

    asyncio.run(go())


def attacker(port: int) -> mqtt.Client:
    """A plain paho client on the broker (anonymous access, as the test broker allows)."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-attacker-{os.getpid()}")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    return pub


# ---- b. the broker restarts ------------------------------------------------------------------------
def test_broker_restart_agents_fall_back_then_return_to_control(
        mosquitto: Mosquitto, tmp_path: Path, rig: tuple[Statuses, Procs, SiteConfig]) -> None:
    statuses, procs, site = rig

    def diag() -> str:
        return f"{statuses.show()}\n{procs.logs()}"

    async def go() -> None:
        async with twin_running(site, mosquitto.port):
            agents = procs.agent(RACKS, name="agents")
            ctl = procs.controller()
            await until(lambda: statuses.all(controlled), 60, "every rack under control", diag)
            # Down for longer than a lease: the agents fall back meanwhile, on their own.
            stopped_ns = time.time_ns()
            await asyncio.to_thread(mosquitto.stop)
            await asyncio.sleep(LEASE_S + 2)
            await asyncio.to_thread(mosquitto.start)
            restarted_ns = time.time_ns()
            await until(lambda: statuses.all(lambda s: controlled(s) and s.since_ns >= restarted_ns - NS_PER_S),
                        60, "every rack back under control after the restart", diag)
            for p in (ctl, agents):
                p.send_signal(signal.SIGTERM)
                assert p.wait(30) == 0, diag()
        ctl_summary = json.loads((tmp_path / "controller-summary.json").read_text())
        assert ctl_summary["final"] and ctl_summary["epoch"] == 1 and ctl_summary["plans_with_violations"] == 0
        assert ctl_summary["actuation"]["statuses_rejected"] == {}
        assert ctl_summary["actuation"]["nodes_controlled"] == 8 * 144
        summary = json.loads((tmp_path / "agents-summary.json").read_text())
        assert summary["nodes"] == 8 * 144 and len(summary["units"]) == 8
        for unit in summary["units"]:
            modes = [(m, ts) for m, ts in unit["transitions"]]
            # Fell back once while the broker was away (on its own), and came back after.
            fell = [ts for m, ts in modes if m == "fallback" and stopped_ns < ts < restarted_ns + NS_PER_S]
            assert len(fell) == 1, unit
            assert modes[-1][0] == "controlled" and modes[-1][1] > fell[0]

    asyncio.run(go())


# ---- c. tampered, wrong-key, replayed and old-epoch commands ----------------------------------------
def test_forged_replayed_and_old_epoch_commands_are_refused_and_change_nothing(
        mosquitto: Mosquitto, rig: tuple[Statuses, Procs, SiteConfig]) -> None:
    statuses, procs, site = rig
    lay = statuses.layouts["r01"]
    topic = caps_topic("powerplane", SITE, "r01")
    caps = np.linspace(600.0, 700.0, lay.n_gpus).round()
    g = slice(lay.gpu0, lay.gpu0 + lay.n_gpus)

    def diag() -> str:
        return f"{statuses.show()}\n{procs.logs()}"

    def command(seq: int, c: np.ndarray, *, epoch: int = 5) -> CapCommand:
        now = time.time_ns()
        return CapCommand(SITE, "r01", lay.digest, epoch, seq, seq, now, now + int(LEASE_S * NS_PER_S), c)

    async def go() -> None:
        async with twin_running(site, mosquitto.port) as twin:
            procs.agent(("r01",))
            await until(lambda: statuses.all(lambda s: s.mode == "starting", ("r01",)), 30, "the agent is up", diag)
            pub = attacker(mosquitto.port)
            stop = asyncio.Event()
            seq = [1]
            genuine: list[bytes] = []

            async def renew() -> None:
                # The test is the controller: it renews the lease with the same caps every second.
                while not stop.is_set():
                    seq[0] += 1
                    env = command(seq[0], caps).envelope(KEY)
                    genuine.append(env)
                    pub.publish(topic, env, qos=1, retain=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)

            renewer = asyncio.get_running_loop().create_task(renew())
            try:
                await until(lambda: statuses.all(lambda s: controlled(s) and s.epoch == 5, ("r01",)), 30,
                            "the genuine commands obeyed", diag)
                await until(lambda: np.array_equal(twin.sim.gpu_cap_w[g], caps), 10, "the twin enforces them")
                # Body edited under the original signature (every cap raised to the ceiling).
                env = json.loads(command(10**6, caps).envelope(KEY))
                body = json.loads(env["body"])
                raised = command(10**6, np.full(lay.n_gpus, 880.0))
                env["body"] = env["body"].replace(body["caps_mw"], json.loads(raised.body())["caps_mw"])
                forged = [json.dumps(env).encode(),
                          raised.envelope(WRONG_KEY),  # a raise signed with another key
                          genuine[0],  # a replay of an applied command
                          command(10**9, np.full(lay.n_gpus, 880.0), epoch=4).envelope(KEY)]  # an older epoch
                for payload in forged:
                    pub.publish(topic, payload, qos=1).wait_for_publish(10)
                await until(lambda: statuses.all(lambda s: s.rejected.get("bad_signature", 0) == 2
                                                 and s.rejected.get("stale_seq", 0) == 2, ("r01",)),
                            20, "the forgeries reported", diag)
                st = statuses.get("r01")
                assert st is not None and controlled(st) and st.epoch == 5
                assert st.rejected == {"bad_signature": 2, "stale_seq": 2}
                # Several heartbeats later the boards still enforce the genuine caps.
                ts = st.ts_ns
                await until(lambda: (s := statuses.get("r01")) is not None and s.ts_ns > ts + 2 * NS_PER_S, 20,
                            "later heartbeats", diag)
                st = statuses.get("r01")
                assert st is not None and controlled(st) and np.array_equal(st.enforced_w, caps)
                assert np.array_equal(twin.sim.gpu_cap_w[g], caps)
            finally:
                stop.set()
                await renewer
                pub.disconnect()
                pub.loop_stop()

    asyncio.run(go())
