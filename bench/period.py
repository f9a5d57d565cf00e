"""Benchmark: one whole control period at scale, rack-level actuation vs the per-node design it replaced.

For each size a generated site (``models.generate``, 576 GPUs per rack) runs on a private
mosquitto on loopback, with every party in its own process:

controller  the real ``ControlPlane`` as ``powerplane controller`` wires it: one MqttLink,
            the real ``Actuator`` (signed per-rack commands, per-rack statuses, array
            verification), reading batches from MQTT (``models.wire``), MQTT hook events,
            move advice, the embedded SQLite store behind its writer thread, the state
            snapshot. Pinned to one core.
fleet       2 processes simulating every agent: they subscribe to the command topics,
            verify each command's signature and bounds (``verify_command``), enforce the
            caps on simulated GPUs and publish one status per rack (the real
            ``AgentStatus``, power measured per GPU) per period.
readings    1 process publishing collector batches (``wire.encode``): each rack's power,
            PDUs and cooling loop every 2nd period, the site and grid every period.

The period is driven in lockstep so that both designs see exactly the same inputs: the
controller publishes ``go k`` with site time ``t0 + k * period``, the fleet and the
collector publish what they have for that moment and say ``done``, the controller runs
``ControlPlane.step(now)``, whose commands the fleet enforces before ``go k+1``. Every
period renews every lease (``renew_s`` below the period), so every rack gets a command
every period: the heaviest message load the design allows. ``period_*_ms`` is the wall
time of ``step()`` (ingest, verify, solve, publish, store hand-off, events) with a whole
period's statuses waiting in its inbox; ``controller_cpu_ms`` is the controller process's
CPU time per period (every thread: paho's network loop, the store writer, hooks), the
store's backlog flushed at the end counted in.

peer: the per-node design of commit 8cbfd99 (``bench/pernode.py``): one JSON command and one
JSON status per node, in the same control plane, on the same broker set-up and fleet shape.
Agreement: the per-GPU caps both sent, and the caps the fleet reported enforcing, at the
same periods, within the cap quantum; and every status and command taken in on both sides.

    python bench/period.py [--sizes 10000,100000,1000000] [--periods 100]

One JSON line per size, then the summary line. Exit 1 when the designs disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GPUS_PER_RACK = 576
FLEET_WORKERS = 2
RACK_BATCH_EVERY = 2  # periods between two collector batches of one rack
WARMUP_PERIODS = 10
SNAP_EVERY = 5  # periods between two agreement snapshots
BENCH = "bench"  # topics of the lockstep driver (not part of the product)
GO, DONE, READY, STOP = f"{BENCH}/go", f"{BENCH}/done", f"{BENCH}/ready", f"{BENCH}/stop"
DESIGNS = ("ours", "peer")


# ---- shared ------------------------------------------------------------------------------------
def site_text(racks: int, tmp: Path) -> str:
    """The generated site, with every lease renewed every period and hooks writing into ``tmp``."""
    from models.generate import generate_site

    return generate_site(racks, name="bench") + (
        "\n[actuation]\nrenew_s = 0.5\n\n"
        f'[hooks]\ndead_letter = "{tmp / "hooks-dead-letter.jsonl"}"\n')


def load(path: str) -> tuple[Any, Any]:
    """Site and topology from a site file."""
    from models.site import load_site
    from models.topology import build_topology

    site = load_site(path)
    return site, build_topology(site)


def pin(cpus: str) -> list[int]:
    """Run on these CPUs (comma separated; empty: leave as is); return the CPUs this process may use."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    return sorted(os.sched_getaffinity(0))


def demand_w(topo: Any, gpus: np.ndarray, k: int) -> np.ndarray:
    """What the simulated GPUs ``gpus`` would draw uncapped in period ``k`` (W, to 0.01 W).

    Seeded per GPU between 60 and 100 % of its span, with a slow wave per rack, so that
    limits bind and caps move every period. 0.01 W steps: the per-node status carried two
    decimals and today's carries milliwatts, so both designs see exactly the same values.
    """
    u = np.random.default_rng(1).uniform(0.6, 1.0, topo.n_gpus)[gpus]
    rack = np.repeat(np.arange(topo.rack_gpus.size), topo.rack_gpus)[gpus]
    idle, top = topo.gpu_idle_w[gpus], topo.gpu_max_w[gpus]
    wave = 0.9 + 0.1 * np.sin(2 * np.pi * k / 20 + 0.37 * rack)
    return np.round(idle + (top - idle) * u * wave, 2)


class Paho:
    """A bare paho client for the simulated parties: batched subscriptions, a queue of messages."""

    def __init__(self, port: int, client_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.q: collections.deque[tuple[str, bytes]] = collections.deque()
        self.subacks = 0
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        c.max_inflight_messages_set(2000)
        c.max_queued_messages_set(0)
        c.on_connect = lambda *a: self.connected.set()
        c.on_message = lambda cl, u, m: self.q.append((m.topic, m.payload))
        c.on_subscribe = self._suback
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        if not self.connected.wait(30):
            raise SystemExit(f"{client_id}: no connection to the broker")
        self.c = c

    def _suback(self, *a: Any) -> None:
        self.subacks += 1

    def subscribe(self, topics: list[str], chunk: int = 500) -> None:
        """Subscribe to every topic (QoS 1) and wait for all SUBACKs."""
        want = self.subacks
        for i in range(0, len(topics), chunk):
            self.c.subscribe([(t, 1) for t in topics[i:i + chunk]])
            want += 1
        deadline = time.monotonic() + 600
        while self.subacks < want:
            if time.monotonic() > deadline:
                raise SystemExit("no SUBACK")
            time.sleep(0.01)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1."""
        self.c.publish(topic, payload, qos=1, retain=retain)

    def next(self) -> tuple[str, bytes]:
        """The next message (waits)."""
        while True:
            try:
                return self.q.popleft()
            except IndexError:
                time.sleep(0.0005)

    def close(self) -> None:
        """Let QoS 1 messages go out, then disconnect."""
        time.sleep(0.5)
        self.c.disconnect()
        self.c.loop_stop()


# ---- the simulated agent fleet -------------------------------------------------------------------
def fleet(args: argparse.Namespace) -> int:
    """Simulate the agents of every ``--workers``-th rack from ``--index`` until told to stop."""
    from bench import pernode
    from controllers.actuation.layout import Layouts
    from controllers.actuation.messages import (
        AgentStatus,
        CapCommand,
        SiteKey,
        caps_topic,
        status_topic,
        verify_command,
    )

    pin(args.cpus)
    site, topo = load(args.site)
    key = SiteKey.load()
    sid, prefix = site.site.name, site.actuation.topic_prefix
    lease_s = site.actuation.lease_s
    layouts = Layouts(topo)
    lays = [layouts[r] for r in topo_racks(topo)[args.index::args.workers]]
    mine = np.concatenate([np.arange(la.gpu0, la.gpu0 + la.n_gpus) for la in lays])
    enforced = np.full(topo.n_gpus, np.nan)
    enforced[mine] = topo.gpu_min_w[mine]  # the safe cap (the board minimum) until commanded
    name = f"fleet-{args.index}"
    mq = Paho(args.port, f"bench-{args.design}-{name}")
    # One unit per rack (ours) or per node (peer): [topic, status topic, gpu slice, mode, since,
    # epoch/seq (or seq), plan_id, lease, requested, (min, max) as lists for the per-node check]
    units: list[dict[str, Any]] = []
    for la in lays:
        if args.design == "ours":
            units.append({"topic": caps_topic(prefix, sid, la.rack), "status": status_topic(prefix, sid, la.rack),
                          "g": slice(la.gpu0, la.gpu0 + la.n_gpus), "lay": la, "order": 0, "epoch": 0, "seq": 0})
        else:
            for k, node in enumerate(la.nodes):
                g0 = la.gpu0 + int(la.node_first[k])
                g = slice(g0, g0 + int(la.node_gpus[k]))
                units.append({"topic": pernode.caps_topic(prefix, sid, node.replace("/", "@")),
                              "status": status_topic(prefix, sid, node), "g": g, "node": node, "seq": 0,
                              "min": topo.gpu_min_w[g].tolist(), "max": topo.gpu_max_w[g].tolist(),
                              "requested": enforced[g].tolist(), "applied_ns": 0})
    for u in units:
        u.update(mode="starting", since=0, plan_id=0, lease=0)
    by_topic = {u["topic"]: u for u in units}
    mq.subscribe([GO, STOP])
    mq.subscribe(list(by_topic))
    mq.publish(f"{READY}/{name}", b"1", retain=True)
    now = 0
    statuses = commands = rejected = 0
    safe = float(topo.gpu_min_w[mine].max())
    while True:
        topic, payload = mq.next()
        u = by_topic.get(topic)
        if u is not None:
            if args.design == "ours":
                res = verify_command(payload, key, site=sid, layout=u["lay"], now_ns=now, last_order=u["order"],
                                     lease_s=lease_s)
                ok = isinstance(res, CapCommand)
                if ok:
                    u.update(order=res.order, epoch=res.epoch, seq=res.seq)
            else:
                res = pernode.verify_command(payload, key, site=sid, node=u["node"], now_ns=now, last_seq=u["seq"],
                                             min_w=u["min"], max_w=u["max"])
                ok = isinstance(res, pernode.CapCommand)
                if ok:
                    u.update(seq=res.seq, requested=list(res.caps_w), applied_ns=now)
            if not ok:
                rejected += 1
                print(f"{name}: rejected {topic}: {res}", file=sys.stderr)
                continue
            commands += 1
            enforced[u["g"]] = np.asarray(res.caps_w, np.float64)
            if u["mode"] != "controlled":
                u.update(mode="controlled", since=now)
            u.update(plan_id=res.plan_id, lease=res.expires_ns)
        elif topic == GO:
            msg = json.loads(payload)
            k, now = int(msg["k"]), int(msg["now_ns"])
            power = np.full(topo.n_gpus, np.nan)
            power[mine] = np.round(np.minimum(enforced[mine], demand_w(topo, mine, k)), 2)
            for u in units:
                g = u["g"]
                if args.design == "ours":
                    la = u["lay"]
                    body = AgentStatus(sid, la.rack, list(range(la.n_nodes)), now, u["mode"], u["since"],
                                       u["epoch"], u["seq"], u["plan_id"], u["lease"], enforced[g], power[g],
                                       0.05, safe, "bench", {}, "", 0, now).to_json()
                else:
                    body = pernode.AgentStatus(
                        sid, u["node"], now, u["mode"], u["seq"], u["plan_id"], [float(x) for x in u["requested"]],
                        [pernode.num(x) for x in enforced[g].tolist()], [pernode.num(x) for x in power[g].tolist()],
                        0.05, u["applied_ns"], u["lease"], safe, "bench", {}, "", u["since"]).to_json()
                mq.publish(u["status"], body)
                statuses += 1
            mq.publish(f"{DONE}/{name}", json.dumps({"k": k, "statuses": statuses, "commands": commands,
                                                     "rejected": rejected}).encode())
        elif topic == STOP:
            break
    mq.close()
    print(json.dumps({"role": name, "statuses": statuses, "commands": commands, "rejected": rejected}))
    return 0


def topo_racks(topo: Any) -> list[str]:
    """Rack ids in site order."""
    from models.topology import L_RACK

    return list(topo.ids(L_RACK))


# ---- the collectors -------------------------------------------------------------------------------
def readings(args: argparse.Namespace) -> int:
    """Publish collector batches (rack power, PDUs, cooling loops, site and grid) until told to stop."""
    from collectors.publish import readings_topic
    from models import wire
    from models.readings import ReadingBatch, SeriesRegistry
    from models.topology import L_FEED, L_HALL, L_PDU, L_RACK, L_ROW, L_UPS, LEVELS

    pin(args.cpus)
    site, topo = load(args.site)
    sid, prefix = site.site.name, site.actuation.topic_prefix
    reg = SeriesRegistry()

    def power(level: int, ident: str, j: int) -> int:
        lim = float(topo.node_limit_w[topo.level_slice(level)][j])
        return reg.id("power.power_w", lim, site=sid, level=LEVELS[level], id=ident)

    racks = topo_racks(topo)
    pdu_ids = topo.ids(L_PDU)
    pdus: dict[str, list[int]] = collections.defaultdict(list)
    for j, p in enumerate(pdu_ids):
        pdus[p.split("/", 1)[0]].append(j)
    home = {}  # the first rack of each loop reports it
    for r, lp in enumerate(topo.rack_loop.tolist()):
        home.setdefault(lp, r)
    per_rack = []
    for r, rack in enumerate(racks):
        sids = [power(L_RACK, rack, r)] + [power(L_PDU, pdu_ids[j], j) for j in pdus[rack]]
        lim = [float(topo.node_limit_w[topo.level_slice(L_RACK)][r])] + \
              [float(topo.node_limit_w[topo.level_slice(L_PDU)][j]) for j in pdus[rack]]
        vals = [0.7 * lim[0]] + [0.35 * lim[0] / max(1, len(pdus[rack]))] * len(pdus[rack])
        lp = int(topo.rack_loop[r])
        if home[lp] == r:
            weak = lp % 3 == 0  # a pump down on every third loop: cooling binds beside the power tree
            loop = {"supply_c": 30.0, "return_c": 40.0, "flow_lpm": 2400.0 if weak else 3400.0,
                    "pumps_running": 1.0 if weak else 2.0}
            for f, v in loop.items():
                sids.append(reg.id(f"cooling.{f}", site=sid, loop=topo.loop_ids[lp]))
                vals.append(v)
        per_rack.append((rack, np.asarray(sids, np.int32), np.asarray(vals)))
    site_sids, site_vals = [], []
    for lv in (L_FEED, L_UPS, L_HALL, L_ROW):
        sl = topo.level_slice(lv)
        for j, ident in enumerate(topo.ids(lv)):
            site_sids.append(power(lv, ident, j))
            site_vals.append(0.7 * float(topo.node_limit_w[sl][j]))
    grid = {"limit_w": site.site.interconnect_limit_kw * 1e3, "frequency_hz": 50.0, "price_per_mwh": 80.0,
            "carbon_g_per_kwh": 300.0}
    for f, v in grid.items():
        site_sids.append(reg.id(f"grid.{f}", site=sid))
        site_vals.append(v)
    site_sids.append(reg.id("site.facility_w", site=sid))
    site_vals.append(0.8 * site.site.interconnect_limit_kw * 1e3)
    mq = Paho(args.port, f"bench-{args.design}-readings")
    mq.subscribe([GO, STOP])
    mq.publish(f"{READY}/readings", b"1", retain=True)
    sent = 0
    while True:
        topic, payload = mq.next()
        if topic == STOP:
            break
        msg = json.loads(payload)
        k, now = int(msg["k"]), int(msg["now_ns"])
        wave = 1.0 + 0.02 * math.sin(k / 5)
        out = [(readings_topic(prefix, sid, "bms"), np.asarray(site_sids, np.int32), np.asarray(site_vals) * wave)]
        out += [(readings_topic(prefix, sid, rack), s, v * wave) for r, (rack, s, v) in enumerate(per_rack)
                if (r + k) % RACK_BATCH_EVERY == 0]
        for t, s, v in out:
            mq.publish(t, wire.encode(ReadingBatch.of(now, s, v, 0, reg), site=sid, src=t.rsplit("/", 1)[-1], seq=k))
            sent += 1
        mq.publish(f"{DONE}/readings", json.dumps({"k": k, "batches": sent}).encode())
    mq.close()
    print(json.dumps({"role": "readings", "batches": sent}))
    return 0


# ---- the controller ---------------------------------------------------------------------------------
def controller(args: argparse.Namespace) -> int:
    """Run the control plane in lockstep with the fleet; print one JSON result."""
    from bench import pernode
    from bus.mqtt import Inbox, MqttAddress, MqttLink
    from collectors.publish import readings_topic
    from controllers.actuation.actuator import Actuator
    from controllers.actuation.messages import SiteKey
    from controllers.hooks.build import build_hooks
    from controllers.moves import MoveAdvisor
    from models.clock import ManualClock
    from models.files import jsonable
    from models.topology import L_NODE
    from models.wire import MAX_BATCH_BYTES
    from powerplane.commands.controller import warm_up
    from powerplane.runtime import STAGES, ControlPlane
    from store.embedded import EmbeddedStore

    cpus = pin(args.cpus)
    t_start = time.monotonic()
    site, topo = load(args.site)
    key = SiteKey.load()
    sid, prefix = site.site.name, site.actuation.topic_prefix
    compile_s = warm_up(site, topo)
    addr = MqttAddress("127.0.0.1", args.port)
    link = MqttLink(addr, f"powerplane-controller-{sid}", clean_session=True)
    out_msgs = [0]
    publish = link.publish

    def counted(topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        if not topic.startswith(BENCH):
            out_msgs[0] += 1
        return publish(topic, payload, qos=qos, retain=retain)

    link.publish = counted  # type: ignore[method-assign]
    act: Any = (Actuator(site, topo, key, addr, epoch=1, link=link) if args.design == "ours"
                else pernode.Actuator(site, topo, key, link))
    hooks = build_hooks(site, addr, topo, link=link)
    batches_in = link.subscribe(readings_topic(prefix, sid, "+"), qos=1,
                                inbox=Inbox(maxlen=100_000, max_bytes=MAX_BATCH_BYTES))
    done_in = link.subscribe(f"{DONE}/+", qos=1, inbox=Inbox())
    ready_in = link.subscribe(f"{READY}/+", qos=1, inbox=Inbox())
    state_topic = f"{prefix}/{sid}/controller/state"

    def publish_state(doc: dict[str, Any]) -> None:
        link.publish(state_topic, json.dumps(jsonable(doc)).encode(), qos=0, retain=True)

    period_ns = int(site.controller.period_s * 1e9)
    t0 = (time.time_ns() // period_ns) * period_ns
    clock = ManualClock(t0)
    data = Path(args.tmp) / f"store-{args.design}"
    sink = EmbeddedStore(data)
    plane = ControlPlane(site, topo, clock, sink, actuator=act, hooks=hooks, readings=batches_in,
                         advisors=[MoveAdvisor(topo, sid)], publish_state=publish_state)
    asyncio.run(act.start())
    if hooks is not None:
        hooks.start()
    names = {f"fleet-{i}" for i in range(args.workers)} | {"readings"}
    seen: set[str] = set()
    deadline = time.monotonic() + 900
    while seen != names:
        if time.monotonic() > deadline:
            raise SystemExit(f"never ready: {sorted(names - seen)}")
        seen |= {t.rsplit("/", 1)[-1] for t, _ in ready_in.drain()}
        time.sleep(0.01)
    ready_s = time.monotonic() - t_start

    status_box = act.inbox
    total = WARMUP_PERIODS + args.periods
    snaps = set(range(SNAP_EVERY, total, SNAP_EVERY)) | {total - 1}
    step_ms: list[float] = []
    step_cpu_ms: list[float] = []  # the loop thread's own CPU time in step(): what contention cannot inflate
    cycle_ms: list[float] = []
    cpu_ms: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    msgs: list[int] = []
    marks: dict[str, dict[str, int]] = {}
    commands_before_last = 0
    completed, why = True, ""
    errors = 0
    backlog = 0  # most writes the store thread had waiting after a period (it lags: memory grows)
    cpu_mark = time.process_time()
    cpu_measured = 0.0
    run_started = time.monotonic()
    spy = None
    k = 0
    for k in range(total):
        if k == WARMUP_PERIODS and os.environ.get("BENCH_PYSPY"):
            # Sample this process (every thread) over the measured periods: where the time goes.
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(os.getpid()),
                                    "--rate", "250", "--format", "raw", "--threads", "--nonblocking",
                                    "--output", f"{os.environ['BENCH_PYSPY']}-{args.design}.txt"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        now = t0 + k * period_ns
        clock.advance((now - clock.now_ns()) / 1e9)
        w0 = time.perf_counter()
        in0 = status_box.received + batches_in.received
        out0 = out_msgs[0]
        link.publish(GO, json.dumps({"k": k, "now_ns": now}).encode())
        got: set[str] = set()
        wait_until = time.monotonic() + args.cycle_timeout
        while got != names and time.monotonic() < wait_until:
            for t, p in done_in.drain():
                m = json.loads(p)
                if m["k"] == k:
                    got.add(t.rsplit("/", 1)[-1])
                    marks[t.rsplit("/", 1)[-1]] = m
            if got != names:
                time.sleep(0.0005)
        if got != names:
            completed, why = False, f"period {k}: no answer from {sorted(names - got)} within {args.cycle_timeout:g} s"
            break
        commands_before_last = act.publisher.stats.commands
        s0, t0_cpu = time.perf_counter(), time.thread_time()
        try:
            plane.step(now)
        except Exception as exc:  # counted, as the control loop does; the bench then fails
            errors += 1
            print(f"period {k} failed: {exc!r}", file=sys.stderr)
        s1 = time.perf_counter()
        step_cpu = (time.thread_time() - t0_cpu) * 1e3
        c1 = time.process_time()
        if k >= WARMUP_PERIODS:
            step_ms.append((s1 - s0) * 1e3)
            step_cpu_ms.append(step_cpu)
            cycle_ms.append((s1 - w0) * 1e3)
            cpu_ms.append((c1 - cpu_mark) * 1e3)
            cpu_measured += c1 - cpu_mark
            for s in STAGES:
                stages[s].append(plane.stats.stage_ms[s])
            msgs.append(status_box.received + batches_in.received - in0 + out_msgs[0] - out0)
        cpu_mark = c1
        backlog = max(backlog, plane.writer.depth if plane.writer is not None else 0)
        if k in snaps:
            np.savez(Path(args.tmp) / f"snap-{args.design}-{k}.npz", sent=act.publisher.sent_w,
                     enforced=act.verifier.enforced_w)
        if args.deadline and time.monotonic() - run_started > args.deadline and k < total - 1:
            completed, why = False, f"stopped after {k + 1} of {total} periods: over the {args.deadline:g} s budget"
            break
    periods_run = k + 1 if completed else k
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    link.publish(STOP, b"1")
    # The store's backlog is the loop's work too: flush it and charge its CPU to the periods.
    c0 = time.process_time()
    flushed = plane.writer.flush(120) if plane.writer is not None else True
    flush_cpu = time.process_time() - c0
    cpu_measured += flush_cpu
    store = plane.store_stats()
    fleet_statuses = sum(m.get("statuses", 0) for n, m in marks.items() if n.startswith("fleet"))
    fleet_commands = sum(m.get("commands", 0) for n, m in marks.items() if n.startswith("fleet"))
    fleet_rejected = sum(m.get("rejected", 0) for n, m in marks.items() if n.startswith("fleet"))
    v = act.verifier.stats
    bad = sum(act.rejected.values()) if args.design == "ours" else v.bad_statuses
    statuses_ok = completed and v.statuses == fleet_statuses and bad == 0 and status_box.dropped() == 0
    commands_ok = completed and fleet_commands == commands_before_last and fleet_rejected == 0
    n = len(step_ms)
    plan = plane.last_plan
    # How much the caps bite in the last plan: GPUs capped below their ceiling (a bench whose
    # caps never move would agree trivially).
    capped = round(float((plan.caps_w < topo.gpu_max_w - 1e-9).mean()), 3) if plan is not None else None
    res = {
        "design": args.design, "gpus": int(topo.n_gpus), "racks": int(topo.rack_gpus.size),
        "nodes": int(topo.count(L_NODE)), "periods": n, "completed": completed, "why": why,
        "period_p50_ms": pct(step_ms, 50), "period_p99_ms": pct(step_ms, 99),
        "period_max_ms": round(max(step_ms), 1) if step_ms else None,
        "msgs_per_period": round(float(np.mean(msgs))) if msgs else None,
        "controller_cpu_ms": round(cpu_measured * 1e3 / n, 1) if n else None,
        "controller_cpu_p99_ms": pct(cpu_ms, 99), "cycle_p50_ms": pct(cycle_ms, 50),
        "step_cpu_p50_ms": pct(step_cpu_ms, 50), "step_cpu_p99_ms": pct(step_cpu_ms, 99),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "stage_p50_ms": {s: pct(x, 50) for s, x in stages.items()},
        "stage_p99_ms": {s: pct(x, 99) for s, x in stages.items()},
        "statuses_in": v.statuses, "statuses_sent": fleet_statuses, "statuses_bad": bad,
        "statuses_dropped": status_box.dropped(), "commands_out": act.publisher.stats.commands,
        "commands_enforced": fleet_commands, "commands_rejected": fleet_rejected,
        "statuses_ok": statuses_ok, "commands_ok": commands_ok, "control_errors": errors,
        "plans_with_violations": plane.stats.plans_with_violations,
        "store_backlog_max": backlog, "store_written": store.written_points, "store_dropped": store.dropped_points,
        "store_flushed": flushed,
        "store_flush_cpu_ms": round(flush_cpu * 1e3, 1), "periods_run": periods_run,
        "snapshots": sorted(s for s in snaps if s < periods_run),
        "capped_share": capped, "compile_s": round(compile_s, 2), "setup_s": round(ready_s, 1), "cpus": cpus,
    }
    if plane.writer is not None:
        plane.writer.close(30)
    if hooks is not None:
        hooks.close(5.0)
    time.sleep(1.0)  # let STOP and the last commands leave before the DISCONNECT
    link.stop()
    sink.close()
    print(json.dumps(res))
    return 0


def pct(xs: list[float], q: float) -> float | None:
    """The ``q``th percentile, rounded; None when empty."""
    return round(float(np.percentile(xs, q)), 1) if xs else None


# ---- the driver --------------------------------------------------------------------------------------
def run(design: str, gpus: int, args: argparse.Namespace, tmp: Path, site_path: Path, cpus: tuple[str, str],
        periods: int, deadline_s: float) -> dict[str, Any]:
    """One design at one size on a fresh broker; the controller's result."""
    from controllers.actuation.messages import KEY_ENV, SiteKey
    from powerplane.broker import start_broker

    aloop = asyncio.new_event_loop()
    broker = aloop.run_until_complete(start_broker(prefer="mosquitto"))
    if broker.kind != "mosquitto":
        aloop.run_until_complete(broker.stop())
        raise SystemExit("bench/period.py needs mosquitto on PATH (scripts/setup installs it)")
    env = {**os.environ, KEY_ENV: SiteKey.generate().hex(), "PYTHONPATH": str(ROOT)}
    base = [sys.executable, __file__, "--site", str(site_path), "--port", str(broker.port), "--design", design,
            "--tmp", str(tmp)]
    procs = [subprocess.Popen(base + ["--role", "fleet", "--index", str(i), "--workers", str(FLEET_WORKERS),
                                      "--cpus", cpus[1]], env=env, stdout=subprocess.PIPE, text=True)
             for i in range(FLEET_WORKERS)]
    procs.append(subprocess.Popen(base + ["--role", "readings", "--cpus", cpus[1]], env=env, stdout=subprocess.PIPE,
                                  text=True))
    ctl = subprocess.Popen(base + ["--role", "controller", "--cpus", cpus[0], "--periods", str(periods),
                                   "--workers", str(FLEET_WORKERS), "--deadline", str(deadline_s),
                                   "--cycle-timeout", str(args.cycle_timeout)],
                           env=env, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = ctl.communicate(timeout=deadline_s + 1800)
        res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError) as exc:
        ctl.kill()
        res = {"design": design, "completed": False, "why": f"controller failed: {exc!r}"}
    finally:
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        aloop.run_until_complete(broker.stop())
        aloop.close()
    return res


def agreement(tmp: Path, ours: dict[str, Any], peer: dict[str, Any], quantum_w: float) -> tuple[bool, float, int]:
    """(agree, max |difference| of sent and enforced per-GPU caps over common snapshots, snapshots compared)."""
    common = sorted(set(ours.get("snapshots", [])) & set(peer.get("snapshots", [])))
    worst = 0.0
    for k in common:
        a, b = np.load(tmp / f"snap-ours-{k}.npz"), np.load(tmp / f"snap-peer-{k}.npz")
        for f in ("sent", "enforced"):
            x, y = a[f], b[f]
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                return False, math.inf, len(common)
            m = ~np.isnan(x)
            worst = max(worst, float(np.abs(x[m] - y[m]).max()) if m.any() else 0.0)
    ok = bool(common) and worst <= quantum_w and all(r.get(f) for r in (ours, peer)
                                                      for f in ("statuses_ok", "commands_ok"))
    ok = ok and ours.get("control_errors") == 0 and peer.get("control_errors") == 0
    return ok, worst, len(common)


def main() -> int:
    """Every size: ours, then the peer; JSON lines; exit 1 on disagreement."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="GPU counts, comma separated")
    ap.add_argument("--periods", type=int, default=100, help="measured periods (after 10 warm-up periods)")
    ap.add_argument("--peer-periods", type=int, default=30, help="measured periods of the per-node peer")
    ap.add_argument("--peer-deadline", type=float, default=1200.0,
                    help="wall seconds the peer may take at one size before it is stopped (did not complete)")
    ap.add_argument("--only", choices=DESIGNS, default=None, help="run one design (no ratio, no agreement)")
    ap.add_argument("--cycle-timeout", type=float, default=180.0, help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=("driver", "controller", "fleet", "readings"), default="driver",
                    help=argparse.SUPPRESS)
    for a in ("--site", "--design", "--tmp", "--cpus"):
        ap.add_argument(a, default="", help=argparse.SUPPRESS)
    for a in ("--port", "--index", "--workers"):
        ap.add_argument(a, type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role != "driver":
        return {"controller": controller, "fleet": fleet, "readings": readings}[args.role](args)

    avail = sorted(os.sched_getaffinity(0))
    # The controller gets a core of its own; the broker-side parties (fleet, collectors) the rest.
    cpus = (str(avail[0]), ",".join(map(str, avail[1:])) or str(avail[0]))
    lines = []
    agree_all = True
    keep = os.environ.get("BENCH_TMP")  # keep the stores and snapshots there (to look at afterwards)
    with (contextlib.nullcontext(tempfile.mkdtemp(prefix="bench-period-", dir=keep)) if keep
          else tempfile.TemporaryDirectory(prefix="bench-period-")) as t:
        for gpus in (int(x) for x in args.sizes.split(",")):
            racks = max(1, round(gpus / GPUS_PER_RACK))
            tmp = Path(t) / str(gpus)
            tmp.mkdir()
            site_path = tmp / "site.toml"
            site_path.write_text(site_text(racks, tmp))
            from models.site import load_site

            quantum = load_site(site_path).actuation.quantum_w
            skip = {"completed": False, "why": "not run (--only)"}
            ours = run("ours", gpus, args, tmp, site_path, cpus, args.periods, 0.0) \
                if args.only != "peer" else skip
            peer = run("peer", gpus, args, tmp, site_path, cpus, args.peer_periods, args.peer_deadline) \
                if args.only != "ours" else skip
            line: dict[str, Any] = {"bench": "period", "gpus": ours.get("gpus"), "racks": ours.get("racks"),
                                    "nodes": ours.get("nodes")}
            for f in ("period_p50_ms", "period_p99_ms", "msgs_per_period", "controller_cpu_ms", "peak_rss_mb"):
                line[f] = ours.get(f)
            line["step_cpu_p50_ms"] = ours.get("step_cpu_p50_ms")
            line["step_cpu_p99_ms"] = ours.get("step_cpu_p99_ms")
            line["stage_p50_ms"] = ours.get("stage_p50_ms")
            line["cycle_p50_ms"] = ours.get("cycle_p50_ms")
            line["store_backlog_max"] = ours.get("store_backlog_max")
            line["periods"] = ours.get("periods")
            line["ours_ok"] = bool(ours.get("completed") and ours.get("statuses_ok") and ours.get("commands_ok"))
            if peer.get("completed") and ours.get("completed"):
                ok, diff, n = agreement(tmp, ours, peer, quantum)
                agree_all &= ok
                line.update(peer_ms=peer["period_p99_ms"], peer_p50_ms=peer["period_p50_ms"],
                            peer_step_cpu_p50_ms=peer.get("step_cpu_p50_ms"),
                            ratio=round(peer["period_p99_ms"] / ours["period_p99_ms"], 1),
                            peer_cpu_ms=peer["controller_cpu_ms"],
                            cpu_ratio=round(peer["controller_cpu_ms"] / ours["controller_cpu_ms"], 1),
                            peer_msgs_per_period=peer["msgs_per_period"], peer_peak_rss_mb=peer["peak_rss_mb"],
                            peer_stage_p50_ms=peer["stage_p50_ms"], peer_periods=peer["periods"],
                            agree=ok, max_cap_diff_w=diff, snapshots_compared=n)
            else:
                line.update(peer_ms=None, ratio=None, agree=None,
                            peer_note=f"per-node design did not complete: {peer.get('why')}"
                                      + (f"; {peer['periods']} periods measured, p50 {peer['period_p50_ms']} ms"
                                         if peer.get("periods") else ""))
            line["cpus"] = ours.get("cpus")
            if not line["ours_ok"] and args.only != "peer":
                agree_all = False
                line["ours_note"] = ours.get("why") or "statuses or commands missing"
            print(json.dumps(line), flush=True)
            lines.append(line)
    at = [x for x in lines if x.get("peer_ms") is not None]
    ref = next((x for x in at if x["gpus"] and abs(x["gpus"] - 100_000) < 1_000), at[-1] if at else None)
    print(json.dumps({
        "bench": "period", "ours": ref["period_p99_ms"] if ref else None, "peer": ref["peer_ms"] if ref else None,
        "ratio": ref["ratio"] if ref else None, "unit": "ms", "agree": agree_all and bool(at),
        "gpus": ref["gpus"] if ref else None, "measure": "p99 wall time of ControlPlane.step() per period",
        "cpu_ratio": ref["cpu_ratio"] if ref else None,
        "note": "2 cores shared with other sessions; controller pinned to one core, fleet/collectors on the other",
    }))
    # --only runs one side: nothing to compare, so only its own completeness counts.
    return 0 if agree_all and (at or args.only) else 1


if __name__ == "__main__":
    sys.exit(main())
