"""What the scale-out drills share: processes of the plane, and observers of the broker and of etcd.

Everything observed is timestamped on arrival in this process, so orders and gaps between
what different processes did can be compared on one clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controllers.actuation.layout import Layouts
from controllers.actuation.messages import AgentStatus, CapCommand, SiteKey, open_status, verify_command
from models import wire
from models.readings import SeriesRegistry
from tests.conftest import ROOT

KEY = SiteKey(b"scaleout-site-key-0123456789abcd")
SITE = "demo-hall"
RACKS = tuple(f"r0{i}" for i in range(1, 9))


class Fleet:
    """``python -m powerplane`` processes with their logs; stopped at the end."""

    def __init__(self, workdir: Path, key: SiteKey = KEY) -> None:
        self.workdir = workdir
        self.env = dict(os.environ, POWERPLANE_SITE_KEY=key.hex(), PYTHONPATH=str(ROOT))
        self.procs: dict[str, tuple[subprocess.Popen[bytes], TextIO, Path]] = {}
        self._done: list[tuple[subprocess.Popen[bytes], TextIO]] = []

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        if name in self.procs:  # a restart: the old process is gone
            old, old_fh, _ = self.procs.pop(name)
            self._done.append((old, old_fh))
        fh = log.open("a")
        p = subprocess.Popen([sys.executable, "-m", "powerplane", *map(str, args)], stdout=fh,
                             stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        self.procs[name] = (p, fh, log)
        return p

    def proc(self, name: str) -> subprocess.Popen[bytes]:
        return self.procs[name][0]

    def kill(self, name: str) -> None:
        """SIGKILL: a crash, no goodbye."""
        p = self.proc(name)
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def stop(self, name: str, timeout_s: float = 30.0) -> int:
        p = self.proc(name)
        if p.poll() is None:
            p.terminate()
        try:
            return p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(5)

    def summary(self, name: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self.workdir / f"{name}.json").read_text()))
        except (OSError, ValueError):
            return {}

    def logs(self, names: Sequence[str] | None = None) -> str:
        out = []
        for n, (_, _, log) in self.procs.items():
            if names is None or n in names:
                out.append(f"--- {n}\n{log.read_text(errors='replace')[-2500:]}")
        return "\n".join(out)

    def stop_all(self) -> None:
        for p, _, _ in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for _name, (p, fh, _) in self.procs.items():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            fh.close()
        for p, fh in self._done:
            if p.poll() is None:
                p.kill()
                p.wait(5)
            fh.close()


def wait(pred: Callable[[], bool], timeout_s: float, what: str, diag: Callable[[], str] = str) -> None:
    """Wait (this thread) until ``pred()``."""
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {timeout_s:g} s\n{diag()}", pytrace=False)
        time.sleep(0.05)


class Bus:
    """Every agent status and rack command on the broker, opened as the agents and the controller open them."""

    def __init__(self, port: int, layouts: Layouts, lease_s: float, key: SiteKey = KEY) -> None:
        self.layouts, self.lease_s, self.key = layouts, lease_s, key
        self.lock = threading.Lock()
        self.statuses: list[tuple[int, AgentStatus]] = []
        self.latest: dict[str, AgentStatus] = {}
        self.commands: list[tuple[int, CapCommand]] = []
        self.raw: dict[tuple[str, int], bytes] = {}  # newest command payload per (rack, epoch)
        self.refused: list[str] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-bus-{os.getpid()}-{id(self)}")
        c.on_connect = lambda cl, *_a: cl.subscribe([(f"powerplane/{SITE}/status/+", 1),
                                                     (f"powerplane/{SITE}/caps/+", 1)])
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 2)
        c.connect_async("127.0.0.1", port)
        c.loop_start()
        self._client = c

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time_ns()
        payload = bytes(msg.payload)
        rack = msg.topic.rsplit("/", 1)[-1]
        if "/caps/" in msg.topic:
            cmd = verify_command(payload, self.key, site=SITE, layout=self.layouts[rack], now_ns=now, last_order=0,
                                 lease_s=self.lease_s, skew_s=3600.0)
            with self.lock:
                if isinstance(cmd, CapCommand):
                    self.commands.append((now, cmd))
                    self.raw[(rack, cmd.epoch)] = payload
                elif not msg.retain:
                    self.refused.append(f"command {msg.topic}: {cmd.reason} {cmd.detail}")
            return
        st = open_status(msg.topic, payload, self.layouts, site=SITE)
        with self.lock:
            if isinstance(st, AgentStatus):
                self.statuses.append((now, st))
                self.latest[st.rack] = st
            else:
                self.refused.append(f"{msg.topic}: {st.reason} {st.detail}")

    def all(self, pred: Callable[[AgentStatus], bool], racks: Sequence[str] = RACKS) -> bool:
        with self.lock:
            return all(r in self.latest and pred(self.latest[r]) for r in racks)

    def first_command_ns(self, epoch: int) -> int | None:
        with self.lock:
            return min((t for t, c in self.commands if c.epoch == epoch), default=None)

    def count(self, epoch: int) -> int:
        with self.lock:
            return sum(1 for _, c in self.commands if c.epoch == epoch)

    def last_command_ns(self, epoch: int) -> int | None:
        with self.lock:
            return max((t for t, c in self.commands if c.epoch == epoch), default=None)

    def fallbacks(self) -> list[AgentStatus]:
        with self.lock:
            return [s for _, s in self.statuses if s.mode == "fallback"]

    def above_plan(self, from_epoch: int) -> tuple[list[str], int]:
        """Statuses of epochs >= ``from_epoch`` that enforce a cap above anything those epochs ever granted
        that GPU (up to the command acknowledged); and how many statuses were checked.

        A status acknowledging a rack's first command of the new authority is not checked: the sim
        boards' read-back may still show the caps they had for a broker round trip (actuation lag,
        which the controller's verification allows for); later statuses are."""
        with self.lock:
            cmds = sorted(((c.rack, c.epoch, c.seq), c) for _, c in self.commands if c.epoch >= from_epoch)
            granted: dict[tuple[str, int, int], np.ndarray] = {}
            first: dict[str, tuple[int, int]] = {}
            top: dict[str, np.ndarray] = {}
            for (rack, epoch, seq), c in cmds:
                top[rack] = c.caps_w if rack not in top else np.maximum(top[rack], c.caps_w)
                granted[(rack, epoch, seq)] = top[rack]
                first.setdefault(rack, (epoch, seq))
            out = []
            checked = 0
            for _, st in self.statuses:
                if st.epoch < from_epoch or st.mode != "controlled" or first.get(st.rack) == (st.epoch, st.seq):
                    continue
                allowed = granted.get((st.rack, st.epoch, st.seq))
                if allowed is None:
                    out.append(f"{st.rack}: status for ({st.epoch}, {st.seq}) but no such command was seen")
                    continue
                checked += 1
                lay = self.layouts[st.rack]
                idx = np.concatenate([np.arange(lay.node_first[k], lay.node_first[k] + lay.node_gpus[k])
                                      for k in st.nodes])
                over = st.enforced_w > allowed[idx] + 0.5
                if over.any():
                    out.append(f"{st.rack} epoch {st.epoch} seq {st.seq}: enforces {st.enforced_w[over][:3]} over "
                               f"{allowed[idx][over][:3]}")
            return out, checked

    def show(self) -> str:
        with self.lock:
            return "\n".join(f"{r}: {s.mode} epoch {s.epoch} seq {s.seq} held {s.held_epoch} rejected {s.rejected}"
                             for r, s in sorted(self.latest.items()))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class LeaderWatch:
    """Polls the authority's leader key in etcd every 20 ms: who held it, and when it appeared and vanished."""

    def __init__(self, port: int, site: str = SITE) -> None:
        import etcd3gw

        self.client = etcd3gw.client(host="127.0.0.1", port=port, timeout=2)
        self.key = f"/powerplane/{site}/authority/leader"
        self.changes: list[tuple[int, dict[str, Any] | None]] = []  # (arrival ns, value or None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: dict[str, Any] | str | None = "?"
        while not self._stop.wait(0.02):
            try:
                vals = self.client.get(self.key)
            except Exception:
                continue
            cur = json.loads(vals[0]) if vals else None
            if cur != last:
                self.changes.append((time.time_ns(), cur))
                last = cur

    def holder(self) -> dict[str, Any] | None:
        return self.changes[-1][1] if self.changes else None

    def vanished_ns(self, epoch: int) -> int | None:
        """When the key of ``epoch`` was last seen gone (its lease expired or was revoked)."""
        seen = False
        for t, v in self.changes:
            if v is not None and v.get("epoch") == epoch:
                seen = True
            elif seen and v is None:
                return t
            elif seen and v is not None:
                return t  # replaced between two polls
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Recorder:
    """Every reading batch the collectors published (a plain QoS 1 subscriber of ``readings/+``)."""

    def __init__(self, port: int) -> None:
        self.registry = SeriesRegistry()
        self.cache = wire.SeriesCache(self.registry)
        self.lock = threading.Lock()
        self.readings: dict[tuple[str, tuple[tuple[str, str], ...], int], float] = {}
        self.batches = 0
        self.duplicates = 0
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-recorder-{os.getpid()}")
        c.on_connect = lambda cl, *_a: cl.subscribe(f"powerplane/{SITE}/readings/+", 1)
        c.on_message = self._on_message
        c.connect_async("127.0.0.1", port)
        c.loop_start()
        self._client = c
        self.connected = threading.Event()
        c.on_subscribe = lambda *_a: self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        d = wire.decode(bytes(msg.payload), self.cache, site=SITE, now_ns=time.time_ns())
        assert d.refused is None, d.refused
        b = d.batch
        with self.lock:
            self.batches += 1
            for sid, ts, v in zip(b.series.tolist(), b.ts_ns.tolist(), b.value.tolist(), strict=True):
                k = self.registry.key(sid)
                key = (k.metric, tuple(sorted(k.tags)), ts // 1_000_000)  # the store keeps milliseconds
                if key in self.readings:
                    self.duplicates += 1
                self.readings[key] = v

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
