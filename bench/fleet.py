"""Benchmark: how many processes of each kind a 1,700-rack (about 1 GW) site needs, measured here.

Four measurements, each against real servers on loopback:

1. **SNMP collectors at 10 s.** ``--pdus`` simulated APC rPDU2 PDUs (snmpsim, one community
   each) polled concurrently by one collector process (``SnmpPoller``) for ``--rounds``
   rounds: the collector's CPU per PDU poll. A process can carry as many PDUs as fit in
   ``UTIL`` of one core at one poll per 10 s.
2. **Modbus collectors at 1 s.** The twin of a generated site with the 1 GW site's device
   shapes (CDUs, 10-rack busway runs, SunSpec and float meters), frozen, served by
   ``powerplane twin``; every Modbus device polled by one collector process as fast as it
   answers: the CPU per poll of each model, weighted by the 1 GW site's mix.
3. **Reading batches through mosquitto.** Real collector batches (``models.wire``), QoS 1,
   from one publisher to three subscribers (a store writer's share and two controllers):
   batches/s delivered to every subscriber.
4. **Store writers.** The same batches, queued at the broker, written to VictoriaMetrics:
   **ours** is ``store.writer.ReadingsWriter`` (MQTT 5 shared subscription, the durable
   spool, a PUBACK only once a batch is durable); the **peer** is what one writes without
   powerplane: a paho subscriber that acknowledges on receipt and writes each batch with
   influxdb-client's write API (``Point``s, synchronous). Both decode with ``models.wire``.
   Points/s from the first batch taken to the last one stored.

Agreement is on values: every PDU and Modbus device decodes the same values every round
(the servers are frozen); every subscriber gets every batch byte for byte; and the samples
VictoriaMetrics holds from ours equal the peer's, series by series. Exit 1 otherwise.

The sizing table divides the 1 GW site's load — its device inventory (``models.twin.devices``)
at the measured readings per poll — by what one process sustains here, and prints the
processes of each kind. The last line is the usual JSON (headline: points/s per store
writer, ours vs the peer).

    python bench/fleet.py [--pdus 200] [--rounds 3] [--seconds 4] [--batches 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # testbed/ (real servers) and bench.snmp

from bus.mqtt import AckInbox, Inbox, MqttAddress, MqttLink
from collectors.config import devices_from_twin, load_endpoints
from collectors.modbus.poller import ModbusPoller
from collectors.profiles import load_profile
from collectors.registry import make_poller
from collectors.snmp.profile import SnmpProfile
from models import wire
from models.clock import SystemClock
from models.generate import generate_site
from models.readings import ReadingBatch, SeriesRegistry
from models.site import load_site
from models.topology import build_topology
from models.twin.devices import inventory
from store.influx import InfluxSink
from store.writer import ReadingsWriter, shared_readings_topic
from testbed.realservers import Mosquitto, Snmpsim, VictoriaMetrics
from testbed.recordings import apc_rpdu2, render

ROOT = Path(__file__).resolve().parent.parent
SITE_RACKS = 1700
SNMP_INTERVAL_S = 10.0
MODBUS_INTERVAL_S = 1.0
UTIL = 0.5  # share of one core a process may use at steady state: room for bursts, GC and a slow device
FLUSH_PER_S = 20  # a collector process publishes at most one batch per 50 ms (collectors.publish)
SITE = "bench-fleet"


# ---- 1. SNMP ----------------------------------------------------------------------------------------
def snmp_part(pdus: int, rounds: int, work: Path) -> dict[str, Any]:
    from bench.snmp import fleet

    data = work / "pdus"
    data.mkdir()
    text = render(apc_rpdu2())
    names = [f"pdu-{i:03d}" for i in range(pdus)]
    for n in names:
        (data / f"{n}.snmprec").write_text(text)
    apc = load_profile(ROOT / "collectors/profiles/snmp/apc-rpdu2.toml")
    assert isinstance(apc, SnmpProfile)
    sim = Snmpsim(data)
    sim.start()
    try:
        assert sim.proc is not None
        res = asyncio.run(fleet(sim.port, names, apc, 1 + max(2, rounds), sim.proc.pid))
    finally:
        sim.stop()
        sim.cleanup()
    steady = res[1:]
    cpu_ms = 1e3 * statistics.median(r[3] for r in steady) / pdus
    round_s = max(r[0] for r in steady)
    readings = res[1][1] / pdus
    agree = all(r[2] == 0 and r[5] == 0 for r in res) and readings > 0
    cap = int(SNMP_INTERVAL_S * UTIL / (cpu_ms / 1e3))
    # The round's wall time is bounded by snmpsim, which serves every PDU from one Python process on
    # the same cores; a site's PDUs each answer for themselves. The collector's CPU is what sizes it.
    print(f"SNMP: {pdus} PDUs polled concurrently: {cpu_ms:.2f} ms collector CPU per PDU poll (rounds of "
          f"{round_s:.1f} s wall, snmpsim-bound), {readings:.0f} readings per poll -> {cap:,} PDUs per process at "
          f"{SNMP_INTERVAL_S:g} s ({UTIL:.0%} of a core)", flush=True)
    return {"cpu_ms_per_poll": cpu_ms, "round_s_worst": round_s, "readings_per_poll": readings,
            "devices_per_process": cap, "agree": agree, "pdus": pdus}


# ---- 2. Modbus --------------------------------------------------------------------------------------
async def _modbus_polls(eps_file: Path, seconds: float) -> tuple[dict[str, float], dict[str, float],
                                                                  list[ReadingBatch], bool]:
    """Per model: CPU ms per poll and readings per poll, polling that model's devices concurrently as fast
    as they answer; some polled batches; whether every device read the same values every poll."""
    site_name, eps = load_endpoints(eps_file)
    reg = SeriesRegistry()
    model = {e.device: e.model for e in eps}
    by_model: dict[str, list[ModbusPoller]] = {}
    for d in devices_from_twin(eps, site_name):
        if d.protocol == "modbus":
            p = make_poller(d, reg)
            assert isinstance(p, ModbusPoller)
            await p.ensure_plan()
            await p.poll(0)  # warm-up: connection, discovery, series
            by_model.setdefault(model[d.name], []).append(p)
    cpu_ms: dict[str, float] = {}
    readings: dict[str, float] = {}
    batches: list[ReadingBatch] = []
    agree = True
    each = seconds / len(by_model)
    for m, pollers in sorted(by_model.items()):
        counts = [0] * len(pollers)
        sizes: list[int] = []
        ref: dict[tuple[int, int], dict[int, float]] = {}

        async def run(i: int, p: ModbusPoller, end: float, counts: list[int], sizes: list[int],
                      ref: dict[tuple[int, int], dict[int, float]]) -> None:
            nonlocal agree
            while time.perf_counter() < end:
                r = await p.poll(counts[i] + 1)
                counts[i] += 1
                got = dict(zip(r.batch.series.tolist(), r.batch.value.tolist(), strict=True))
                # The twin is frozen: a device reads the same values at the same slow/fast phase.
                agree &= not r.errors and ref.setdefault((i, counts[i] % p.slow_every), got) == got
                sizes.append(len(r.batch))
                if len(batches) < 64 and counts[i] % p.slow_every:
                    batches.append(r.batch)

        t_cpu = time.process_time()
        end = time.perf_counter() + each
        await asyncio.gather(*(run(i, p, end, counts, sizes, ref) for i, p in enumerate(pollers)))
        cpu_ms[m] = 1e3 * (time.process_time() - t_cpu) / max(1, sum(counts))
        readings[m] = statistics.mean(sizes) if sizes else 0.0
        for p in pollers:
            await p.close()
    return cpu_ms, readings, batches, agree and all(readings.values())


def modbus_part(seconds: float, work: Path) -> tuple[dict[str, Any], list[ReadingBatch]]:
    site_file = work / "gen.toml"
    site_file.write_text(generate_site(30, name=SITE))
    eps = work / "endpoints.json"
    twin = subprocess.Popen([sys.executable, "-m", "powerplane", "twin", "--site", str(site_file), "--no-mqtt",
                             "--endpoints-out", str(eps), "--duration", "1e-6", "--speed", "1e-9"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not eps.exists():
            if time.monotonic() > deadline or twin.poll() is not None:
                raise SystemExit("the twin did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        cpu_ms, readings, batches, agree = asyncio.run(_modbus_polls(eps, seconds))
    finally:
        twin.terminate()
        twin.wait(20)
    site = load_site_text(generate_site(SITE_RACKS))
    mix = Counter(d.model for d in inventory(site, build_topology(site)) if d.protocol == "modbus")
    total = sum(mix.values())
    missing = set(mix) - set(cpu_ms)
    if missing:
        raise SystemExit(f"the generated twin serves no {sorted(missing)}")
    mean_ms = sum(cpu_ms[m] * n for m, n in mix.items()) / total
    cap = int(MODBUS_INTERVAL_S * UTIL / (mean_ms / 1e3))
    for m in sorted(cpu_ms):
        print(f"Modbus {m}: {cpu_ms[m]:.2f} ms CPU per poll, {readings[m]:.0f} readings", flush=True)
    print(f"Modbus: {mean_ms:.2f} ms collector CPU per poll over the 1 GW site's mix -> {cap:,} devices per process "
          f"at {MODBUS_INTERVAL_S:g} s ({UTIL:.0%} of a core)", flush=True)
    return ({"cpu_ms_per_poll": mean_ms, "per_model_ms": {m: round(v, 3) for m, v in cpu_ms.items()},
             "readings_per_poll": readings, "devices_per_process": cap, "agree": agree, "mix": dict(mix)}, batches)


def load_site_text(text: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "site.toml"
        p.write_text(text)
        return load_site(p)


# ---- 3. batches through mosquitto --------------------------------------------------------------------
def payloads(batches: list[ReadingBatch], n: int, readings: int = 1000) -> list[bytes]:
    """``n`` collector batches on the wire, each about ``readings`` readings: what one collector process
    flushes every 50 ms at the Modbus rate above. Polled batches are packed in; each gets its own
    millisecond, so every reading is its own point (quality cleared: the peer writes no quality fields)."""
    import numpy as np

    base = time.time_ns() - 3_600 * 10**9
    out = []
    j = 0
    for k in range(n):
        parts, size = [], 0
        while size < readings:
            b = batches[j % len(batches)]
            parts.append(ReadingBatch(np.full(len(b), base + j * 1_000_000, np.int64), b.series, b.value,
                                      np.zeros(len(b), np.uint8), b.registry))
            size += len(b)
            j += 1
        out.append(wire.encode(ReadingBatch.concat(parts), site=SITE, src="bench", seq=k + 1))
    return out


def broker_part(msgs: list[bytes], port: int) -> dict[str, Any]:
    addr = MqttAddress("127.0.0.1", port)
    subs = []
    for i in range(3):
        link = MqttLink(addr, f"bench-sub-{i}", clean_session=True)
        box = link.subscribe(f"powerplane/{SITE}/readings/+", qos=1, inbox=Inbox(maxlen=10**7, max_bytes=1 << 24))
        link.start()
        subs.append((link, box))
    pub = MqttLink(addr, "bench-pub", clean_session=True)
    pub.start()
    for link, _ in subs:
        link.connected.wait(10)
    pub.connected.wait(10)
    time.sleep(0.5)
    got: list[list[bytes]] = [[] for _ in subs]
    t0 = time.perf_counter()
    for m in msgs:
        pub.publish(f"powerplane/{SITE}/readings/bench", m, qos=1)
    deadline = time.monotonic() + 120
    while any(len(g) < len(msgs) for g in got) and time.monotonic() < deadline:
        for (_link, box), g in zip(subs, got, strict=True):
            g.extend(p for _t, p in box.drain())
        time.sleep(0.002)
    dt = time.perf_counter() - t0
    for link, _ in [*subs, (pub, None)]:
        link.stop()
    agree = all(g == msgs for g in got)
    rate = len(msgs) / dt
    mb = sum(map(len, msgs)) / len(msgs) / 1e6
    print(f"mosquitto: {len(msgs)} batches of {mb * 1e3:.0f} kB (QoS 1) to 3 subscribers: {rate:,.0f} batches/s "
          f"each ({rate * 3:,.0f} deliveries/s, {rate * mb * 4:,.0f} MB/s in and out of the broker)", flush=True)
    return {"batches_per_s": rate, "kb_per_batch": mb * 1e3, "subscribers": 3, "agree": agree}


# ---- 4. store writers ---------------------------------------------------------------------------------
def _publish_queued(port: int, msgs: list[bytes]) -> None:
    pub = MqttLink(MqttAddress("127.0.0.1", port), "bench-queue", clean_session=True)
    pub.start()
    pub.connected.wait(10)
    mids = [pub.publish(f"powerplane/{SITE}/readings/bench", m, qos=1) for m in msgs]
    deadline = time.monotonic() + 120
    while pub.acked < len(mids) and time.monotonic() < deadline:
        time.sleep(0.01)
    pub.stop()


def ours_writer(port: int, vm: VictoriaMetrics, msgs: list[bytes], work: Path) -> float:
    """Points/s of ReadingsWriter: its session holds every batch before it starts."""
    addr = MqttAddress("127.0.0.1", port)
    link = MqttLink(addr, "bench-writer", clean_session=False, receive_maximum=200)
    inbox = link.subscribe_acked(shared_readings_topic("bench", "powerplane", SITE), AckInbox(1 << 24))
    link.start()  # create the session, then queue everything, then write
    link.connected.wait(10)
    time.sleep(0.3)
    link.stop()
    _publish_queued(port, msgs)
    sink = InfluxSink(vm.url, "", "o", "b", spool_dir=work / "spool", batch_size=50_000, flush_interval_s=0.2)
    link = MqttLink(addr, "bench-writer", clean_session=False, receive_maximum=200)
    inbox = link.subscribe_acked(shared_readings_topic("bench", "powerplane", SITE), AckInbox(1 << 24))
    writer = ReadingsWriter(sink, link, inbox, site=SITE, clock=SystemClock(), max_messages=200)

    async def go() -> float:
        link.start()
        await inbox.wait(30)
        t0 = time.perf_counter()
        while writer.stats.acked < len(msgs):
            await inbox.wait(1.0)
            await writer.step()
        await asyncio.to_thread(sink.flush, 120)
        return time.perf_counter() - t0

    dt = asyncio.run(go())
    link.stop()
    sink.close()
    return writer.stats.readings / dt


def peer_writer(port: int, vm: VictoriaMetrics, msgs: list[bytes]) -> float:
    """Points/s of a plain paho subscriber (acknowledging on receipt) writing with influxdb-client's Point API."""
    import paho.mqtt.client as mqtt
    from influxdb_client import InfluxDBClient, Point
    from influxdb_client.client.write_api import SYNCHRONOUS
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-peer", clean_session=False)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(f"powerplane/{SITE}/readings/+", qos=1)
    time.sleep(0.5)  # the session and its subscription exist: everything queues for it
    c.disconnect()
    c.loop_stop()
    _publish_queued(port, msgs)
    client = InfluxDBClient(url=vm.url, token="", org="o")
    api = client.write_api(write_options=SYNCHRONOUS)
    cache = wire.SeriesCache(SeriesRegistry())
    done = threading.Event()
    state = {"n": 0, "points": 0, "t0": 0.0}

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if not state["t0"]:
            state["t0"] = time.perf_counter()
        d = wire.decode(bytes(msg.payload), cache, site=SITE, now_ns=time.time_ns(), max_age_s=86_400)
        keys = d.batch.registry.keys()
        pts = []
        for sid, ts, v in zip(d.batch.series.tolist(), d.batch.ts_ns.tolist(), d.batch.value.tolist(), strict=True):
            k = keys[sid]
            meas, field = k.metric.split(".", 1)
            p = Point(meas).field(field, float(v)).time(ts)
            for tk, tv in k.tags:
                p = p.tag(tk, tv)
            pts.append(p)
        api.write(bucket="b", record=pts)
        state["points"] += len(pts)
        state["n"] += 1
        if state["n"] >= len(msgs):
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-peer", clean_session=False)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(600)
    dt = time.perf_counter() - state["t0"]
    c.disconnect()
    c.loop_stop()
    client.close()
    return state["points"] / dt


def _series(vm: VictoriaMetrics) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for s in vm.export():
        m = dict(s["metric"])
        key = json.dumps(m, sort_keys=True)
        out.setdefault(key, []).extend(zip(s["timestamps"], s["values"], strict=True))
    # Each round writes the same points again; VictoriaMetrics may keep a rewritten sample twice
    # until it merges: compare the distinct (time, value) pairs of every series.
    return {k: sorted(set(v)) for k, v in out.items()}


def writer_part(msgs: list[bytes], work: Path, repeat: int) -> dict[str, Any]:
    vm_ours, vm_peer = VictoriaMetrics(work / "vm-ours"), VictoriaMetrics(work / "vm-peer")
    mq = Mosquitto(work / "mq-writers")
    for s in (mq, vm_ours, vm_peer):
        s.start()
    try:
        # Interleaved rounds, best of each: the machine is shared, so its load drifts during a run.
        # A round writes the same points again (each sink overwrites them with themselves).
        ours = peer = 0.0
        for _ in range(repeat):
            ours = max(ours, ours_writer(mq.port, vm_ours, msgs, work))
            peer = max(peer, peer_writer(mq.port, vm_peer, msgs))
        a, b = _series(vm_ours), _series(vm_peer)
        agree = a == b and len(a) > 0
    finally:
        for s in (mq, vm_ours, vm_peer):
            s.stop()
    print(f"store writer: ours {ours:,.0f} points/s (acknowledged once durable), peer (paho + influxdb-client "
          f"Point API) {peer:,.0f} points/s; {len(a)} series agree: {agree}", flush=True)
    return {"ours": ours, "peer": peer, "agree": agree, "series": len(a)}


# ---- the sizing ---------------------------------------------------------------------------------------
def sizing(snmp: dict[str, Any], modbus: dict[str, Any], broker: dict[str, Any], writer: float) -> list[dict[str, Any]]:
    site = load_site_text(generate_site(SITE_RACKS))
    topo = build_topology(site)
    inv = inventory(site, topo)
    n_snmp = sum(1 for d in inv if d.protocol == "snmp")
    n_modbus = sum(1 for d in inv if d.protocol == "modbus")
    snmp_procs = n_snmp / snmp["devices_per_process"]
    modbus_procs = n_modbus / modbus["devices_per_process"]
    collectors = math.ceil(snmp_procs + modbus_procs)
    mix = modbus["mix"]
    pts = n_snmp * snmp["readings_per_poll"] / SNMP_INTERVAL_S + sum(
        n * modbus["readings_per_poll"].get(m, 0.0) for m, n in mix.items()) / MODBUS_INTERVAL_S
    writers = math.ceil(pts / writer) + 1  # one spare: a writer's share waits while it restarts
    batches = collectors * FLUSH_PER_S
    brokers = max(1, math.ceil(batches / (broker["batches_per_s"] * UTIL)))
    racks = len(site.racks)
    return [
        {"kind": "collector (SNMP, every 10 s)", "load": f"{n_snmp:,} PDUs and UPSes",
         "per_process": f"{snmp['devices_per_process']:,} devices", "processes": math.ceil(snmp_procs)},
        {"kind": "collector (Modbus, every 1 s)", "load": f"{n_modbus:,} CDUs, busways, meters",
         "per_process": f"{modbus['devices_per_process']:,} devices", "processes": math.ceil(modbus_procs)},
        {"kind": "collector processes (both)", "load": "", "per_process": "", "processes": collectors},
        {"kind": "store writer", "load": f"{pts:,.0f} points/s", "per_process": f"{writer:,.0f} points/s",
         "processes": writers},
        {"kind": "mosquitto broker", "load": f"{batches:,} batches/s (+ {racks:,} rack statuses/s)",
         "per_process": f"{broker['batches_per_s']:,.0f} batches/s x 3 subscribers", "processes": brokers},
        {"kind": "controller", "load": f"{racks:,} racks, {topo.n_gpus:,} GPUs", "per_process": "the whole site",
         "processes": 2},
        {"kind": "etcd", "load": "one lease, renewed every TTL/3", "per_process": "", "processes": 3},
    ]


def main() -> int:
    """Measure, print the sizing table, and the JSON line; 1 if any part disagrees on values."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pdus", type=int, default=200, help="simulated PDUs polled by one collector (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="SNMP rounds after the first (default 3)")
    ap.add_argument("--seconds", type=float, default=4.0, help="Modbus polling time (default 4)")
    ap.add_argument("--repeat", type=int, default=3, help="store-writer rounds, best of each (default 3)")
    ap.add_argument("--batches", type=int, default=300,
                    help="batches (about 1,000 readings each) through the broker and the writers (default 300)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="powerplane-bench-fleet-"))
    try:
        snmp = snmp_part(args.pdus, args.rounds, work)
        modbus, polled = modbus_part(args.seconds, work)
        msgs = payloads(polled, args.batches)
        mq = Mosquitto(work / "mq")
        mq.start()
        try:
            broker = broker_part(msgs, mq.port)
        finally:
            mq.stop()
        writer = writer_part(msgs, work, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = sizing(snmp, modbus, broker, writer["ours"])
    print(f"\nsizing of a {SITE_RACKS:,}-rack site (measured on this machine: {os.cpu_count()} shared cores):")
    w = [max(len(str(r[k])) for r in rows) for k in ("kind", "load", "per_process", "processes")]
    print(f"{'process':<{w[0]}}  {'site load':<{w[1]}}  {'one process':<{w[2]}}  processes")
    for r in rows:
        print(f"{r['kind']:<{w[0]}}  {r['load']:<{w[1]}}  {r['per_process']:<{w[2]}}  {r['processes']}")
    agree = bool(snmp["agree"] and modbus["agree"] and broker["agree"] and writer["agree"])
    print(json.dumps({
        "bench": "fleet", "ours": round(writer["ours"]), "peer": round(writer["peer"]),
        "ratio": round(writer["ours"] / writer["peer"], 2), "unit": "points/s per store writer", "agree": agree,
        "snmp_devices_per_process": snmp["devices_per_process"],
        "snmp_cpu_ms_per_poll": round(snmp["cpu_ms_per_poll"], 2),
        "modbus_devices_per_process": modbus["devices_per_process"],
        "modbus_cpu_ms_per_poll": round(modbus["cpu_ms_per_poll"], 3),
        "broker_batches_per_s": round(broker["batches_per_s"]), "batch_kb": round(broker["kb_per_batch"], 1),
        "sizing": {r["kind"]: r["processes"] for r in rows}, "site_racks": SITE_RACKS, "util": UTIL,
        "contention": "2 shared cores, other sessions running",
    }))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
