"""What the MQTT wire drills share (issue 13): the shipped broker configuration with an ACL that
``powerplane acl`` generates and a hashed password file, a small drill site, signed commands,
and powerplane processes started as an operator would (``python -m powerplane ...``).

The drill site has four racks of two nodes (four GPUs each) and a 3 s lease, so every drill
is short. Deadlines given to ``until`` are how long to wait before failing, never a measured
threshold.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from controllers.actuation.layout import Layouts
from controllers.actuation.messages import CapCommand, SiteKey, caps_topic, status_topic
from models.clock import NS_PER_S
from models.site import load_site
from models.topology import build_topology
from powerplane.commands.acl import Accounts, acl_text
from testbed.realservers import ShippedMosquitto
from tests.conftest import ROOT

SITE = "drill"
PREFIX = f"powerplane/{SITE}"
RACKS = ("r01", "r02", "r03", "r04")
LEASE_S = 3.0
KEY = SiteKey(b"drill-site-key-0123456789abcdef!")
ACCOUNTS = Accounts(controllers=("controller",), collectors=("collector-0",), operators=("operator",))
NOT_AUTHORIZED = 135  # MQTT 5 reason code of a PUBACK/SUBACK the broker's ACL refused

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

[[racks]]
id = "r03"
row = "row-a1"
type = "small"
loop = "cdu-1"

[[racks]]
id = "r04"
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
placement = ["r01", "r02", "r03", "r04"]
utilization = 0.9

[actuation]
lease_s = 3
status_every_s = 1
settle_s = 3

[twin]
seed = 7
step_s = 0.1
"""


def until(pred: Callable[[], bool], timeout_s: float, what: str, diag: Callable[[], str] = str) -> float:
    """Wait until ``pred()``; fail after ``timeout_s`` (a deadline, not a measurement). Returns the wait."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s:g} s\n{diag()}", pytrace=False)
        time.sleep(0.1)
    return time.monotonic() - t0


class Wire:
    """A plain paho client of one account: what it published (with the broker's reason codes) and received."""

    def __init__(self, port: int, user: str | None, password: str | None, *, client_id: str | None = None,
                 v5: bool = True) -> None:
        self.user = user
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects = 0
        self.connect_rc: ReasonCode | None = None
        self._acks: dict[int, int] = {}
        self._subacks: dict[int, list[int]] = {}
        self._cond = threading.Condition()
        self._connected = threading.Event()
        cid = client_id if client_id is not None else f"wire-{user}-{secrets.token_hex(3)}"
        self.client = c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid,
                                      protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if user is not None:
            c.username_pw_set(user, password)
        c.max_inflight_messages_set(200)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert self._connected.wait(10), f"{user}: no CONNACK"

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self.connect_rc = rc
        self._connected.set()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self.disconnects += 1

    def _on_publish(self, c: Any, u: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        with self._cond:
            self._acks[mid] = rc.value
            self._cond.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[ReasonCode], props: Any) -> None:
        with self._cond:
            self._subacks[mid] = [r.value for r in rcs]
            self._cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))

    @property
    def ok(self) -> bool:
        """Whether the broker accepted the connection."""
        return self.connect_rc is not None and not self.connect_rc.is_failure

    def publish(self, topic: str, payload: bytes, *, wait: bool = True) -> int | None:
        """Publish at QoS 1; the PUBACK's reason code (MQTT 5: 0 or 16 accepted, 135 not authorized)."""
        mid = self.client.publish(topic, payload, qos=1).mid
        if not wait:
            return None
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, 30), f"{self.user}: no PUBACK on {topic}"
            return self._acks.pop(mid)

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; the SUBACK's reason code (1 granted QoS 1, 135 not authorized)."""
        mid = self.client.subscribe(topic, qos=1)[1]
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._subacks, 10), f"{self.user}: no SUBACK"
            return self._subacks.pop(mid)[0]

    def received(self, topic: str) -> list[bytes]:
        """Payloads received on ``topic`` so far."""
        with self._cond:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Statuses(Wire):
    """The operator's view of every agent status (it reads everything, writes nothing)."""

    def __init__(self, port: int, password: str) -> None:
        super().__init__(port, "operator", password)
        assert self.subscribe(f"{PREFIX}/status/+") == 1

    def history(self, sender: str) -> list[dict[str, Any]]:
        """Every status on ``sender``'s topic, oldest first, as JSON."""
        return [json.loads(p) for p in self.received(status_topic("powerplane", SITE, sender))]

    def latest(self, sender: str) -> dict[str, Any] | None:
        h = self.history(sender)
        return h[-1] if h else None


def enforced_w(status: dict[str, Any]) -> list[float | None]:
    """A status's enforced limits per GPU (None: unknown)."""
    a = np.frombuffer(base64.b64decode(status["enforced_mw"]), "<u4")
    return [None if v == 0xFFFFFFFF else v / 1000.0 for v in a.tolist()]


class Proc:
    """One ``python -m powerplane ...`` child, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self._fh: TextIO = log.open("w")
        self.popen = subprocess.Popen([sys.executable, "-m", "powerplane", *argv], stdout=self._fh,
                                      stderr=subprocess.STDOUT, cwd=ROOT, env=env or dict(os.environ))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} ({'alive' if self.alive else f'exit {self.popen.returncode}'})\n" + \
            self.log.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.alive:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._fh.close()
        return int(self.popen.returncode)


class Rig:
    """A broker running deploy/mosquitto/mosquitto.conf with the drill site's generated ACL, and the
    processes of a drill. Each account's password is a 0600 file; nothing secret is ever in argv."""

    def __init__(self, workdir: Path, *, agents: str = "rack") -> None:
        self.dir = workdir
        self.site_file = workdir / "drill.toml"
        self.site_file.write_text(SITE_TOML)
        self.site = load_site(self.site_file)
        self.layouts = Layouts(build_topology(self.site))
        self.acl = acl_text(self.site, ACCOUNTS, agents="node" if agents == "node" else "rack", twin=True)
        users = [ln.split()[1] for ln in self.acl.splitlines() if ln.startswith("user ")]
        self.passwords = {u: secrets.token_hex(16) for u in users}
        self.secrets = workdir / "secrets"
        self.secrets.mkdir(mode=0o700)
        for u, pw in self.passwords.items():
            self._private(self.secrets / f"{u}.password", pw)
        self.key_file = self._private(self.secrets / "site.key", KEY.hex())
        self.broker = ShippedMosquitto(workdir / "broker", self.acl, self.passwords)
        self.procs: list[Proc] = []
        self.endpoints = workdir / "endpoints.json"

    @staticmethod
    def _private(path: Path, text: str) -> Path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def password_file(self, account: str) -> Path:
        return self.secrets / f"{account}.password"

    def wire(self, account: str | None, *, client_id: str | None = None, v5: bool = True,
             anonymous_listener: bool = False) -> Wire:
        """A client of ``account`` (None: anonymous) on the authenticated listener, or the demo-only one."""
        port = self.broker.twin_port if anonymous_listener else self.broker.port
        return Wire(port, account, self.passwords.get(account or ""), client_id=client_id, v5=v5)

    def statuses(self) -> Statuses:
        return Statuses(self.broker.port, self.passwords["operator"])

    # ---- processes ---------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str]) -> Proc:
        p = Proc(name, argv, self.dir / f"{name}.log")
        self.procs.append(p)
        return p

    def twin(self) -> Proc:
        """The twin, on the demo-only anonymous listener (its simulated GPU boards and signals)."""
        return self.spawn("twin", ["twin", "--site", str(self.site_file), "--mqtt", self.broker.twin_url,
                                   "--start-capped", "--endpoints-out", str(self.endpoints)])

    def controller(self, name: str = "controller", *, clock: str | None = None, extra: tuple[str, ...] = ()) -> Proc:
        argv = ["controller", "--site", str(self.site_file), "--mqtt", self.broker.url("controller"),
                "--mqtt-password-file", str(self.password_file("controller")), "--key-file", str(self.key_file),
                "--state-dir", str(self.dir / "controller-state"), "--data-dir", str(self.dir / f"{name}-data"),
                "--summary-out", str(self.summary_path(name)), *extra]
        if clock is not None:
            argv += ["--clock", clock]
        return self.spawn(name, argv)

    def agent(self, rack: str, *, name: str | None = None, clock: str | None = None) -> Proc:
        """A rack agent (sim backend); its MQTT user is the rack (derived: the URL names none)."""
        name = name or f"agent-{rack}"
        argv = ["agent", "--site", str(self.site_file), "--backend", "sim", "--rack", rack, "--mqtt", self.broker.url(),
                "--mqtt-password-file", str(self.password_file(rack)), "--key-file", str(self.key_file),
                "--state-dir", str(self.dir / f"agent-{rack}-state"), "--summary-out", str(self.summary_path(name))]
        if clock is not None:
            argv += ["--clock", clock]
        return self.spawn(name, argv)

    def collector(self) -> Proc:
        return self.spawn("collector-0", [
            "collect", "--endpoints", str(self.endpoints), "--site", str(self.site_file), "--protocols", "modbus,snmp",
            "--publish", self.broker.url("collector-0"),
            "--mqtt-password-file", str(self.password_file("collector-0"))])

    def summary_path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def summary(self, name: str = "controller") -> dict[str, Any]:
        """A process's JSON summary (rewritten atomically: never half a file); {} before the first."""
        try:
            doc: dict[str, Any] = json.loads(self.summary_path(name).read_text())
        except FileNotFoundError:
            return {}
        return doc

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs) + "\n--- broker\n" + \
            self.broker.log.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop()
        self.broker.stop()


@contextlib.contextmanager
def rig_running(workdir: Path, **kw: Any) -> Iterator[Rig]:
    """A rig with its broker started; every process it started is stopped at the end."""
    rig = Rig(workdir, **kw)
    rig.broker.start()
    try:
        yield rig
    finally:
        rig.close()


def signed(rack: str, rig: Rig, *, seq: int, caps_w: float, epoch: int = 1, issued_ns: int | None = None,
           lease_s: float = LEASE_S, key: SiteKey = KEY) -> bytes:
    """A signed rack command: every GPU of ``rack`` capped at ``caps_w``."""
    lay = rig.layouts[rack]
    now = time.time_ns() if issued_ns is None else issued_ns
    cmd = CapCommand(SITE, rack, lay.digest, epoch, seq, seq, now, now + int(lease_s * NS_PER_S),
                     np.full(lay.n_gpus, caps_w))
    return cmd.envelope(key)


def caps(rack: str) -> str:
    return caps_topic("powerplane", SITE, rack)


def clock_anchor(offset_s: float) -> str:
    """A ``--clock`` for a process whose wall clock is ``offset_s`` ahead of this host's (stepped)."""
    return f"scaled:1.0:{time.time_ns() + int(offset_s * NS_PER_S)}:{time.monotonic_ns()}"
