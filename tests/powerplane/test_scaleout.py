"""The scale-out drills, with real processes: mosquitto, etcd, the twin serving its devices and GPU
boards, sharded collectors, store writers, two controllers and the agents.

* kill the active controller (SIGKILL): the standby plans within 2 periods of the authority lease
  expiring; no agent falls back;
* partition the active controller from etcd (not from MQTT): it stops before the other starts, its
  commands are refused by epoch, no cap above the new authority's plan is enforced;
* kill a store writer mid-stream: every acknowledged reading is stored, by count and by value;
* kill a collector: its devices are reported down, and planned at worst case (never as zero).

Deadlines are what the design promises plus slack for scheduling processes on a shared
two-core machine; everything else is an order or a count.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collectors.shard import shard_of
from controllers.actuation.layout import Layouts
from controllers.actuation.messages import caps_topic
from models.clock import NS_PER_S, SystemClock
from models.site import SiteConfig, load_site
from models.topology import build_topology
from testbed.realservers import Etcd, Mosquitto, VictoriaMetrics
from testbed.tcpproxy import CuttableProxy
from tests.conftest import DEMO_SITE
from tests.powerplane.scaleout_rig import RACKS, SITE, Bus, Fleet, LeaderWatch, Recorder, wait
from twin.runner import Twin

pytestmark = [pytest.mark.servers, pytest.mark.timeout(300)]

TTL_S = 2  # the authority lease (etcd)
SLACK_S = 3.0  # scheduling loaded processes on a shared machine


class TwinThread:
    """The twin on its own event loop in a thread: devices and GPU boards keep answering while the test waits."""

    def __init__(self, site: SiteConfig, port: int, endpoints: Path | None = None) -> None:
        self.site, self.port, self.endpoints = site, port, endpoints
        self.twin: Twin | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(60), "the twin did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        twin = Twin(self.site, SystemClock(), mqtt=("127.0.0.1", self.port))
        await twin.start()
        if self.endpoints is not None:
            twin.write_endpoints(self.endpoints)
        twin.run_in_background()
        self.twin = twin
        self._ready.set()
        await self._stop.wait()
        await twin.stop()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture
def site_file() -> Path:
    return DEMO_SITE


@pytest.fixture
def ha(mosquitto: Mosquitto, etcd: Etcd, tmp_path: Path) -> Iterator[tuple[Fleet, Bus, LeaderWatch, SiteConfig]]:
    site = load_site(DEMO_SITE)
    bus = Bus(mosquitto.port, Layouts(build_topology(site)), site.actuation.lease_s)
    leader = LeaderWatch(etcd.port)
    fleet = Fleet(tmp_path)
    twin = TwinThread(site, mosquitto.port)
    try:
        yield fleet, bus, leader, site
    finally:
        fleet.stop_all()
        twin.close()
        bus.close()
        leader.close()


def agents(fleet: Fleet, url: str) -> None:
    for name, racks in (("agents-a", RACKS[:4]), ("agents-b", RACKS[4:])):
        args = ["agent", "--site", DEMO_SITE, "--mqtt", url, "--backend", "sim", "--state-dir",
                fleet.workdir / f"{name}-state", "--summary-out", fleet.workdir / f"{name}.json"]
        for r in racks:
            args += ["--rack", r]
        fleet.start(name, args)


def controller(fleet: Fleet, url: str, etcd_port: int, cid: str, *extra: Any) -> None:
    fleet.start(cid, ["controller", "--site", DEMO_SITE, "--mqtt", url, "--authority", f"etcd://127.0.0.1:{etcd_port}",
                      "--authority-ttl", TTL_S, "--controller-id", cid, "--state-dir", fleet.workdir / f"{cid}-state",
                      "--data-dir", fleet.workdir / f"{cid}-data", "--summary-out", fleet.workdir / f"{cid}.json",
                      *extra])


def replay(port: int, payloads: dict[str, bytes]) -> None:
    """Publish old commands again (as a delayed or replayed message would arrive)."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-replay")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for rack, payload in payloads.items():
            pub.publish(caps_topic("powerplane", SITE, rack), payload, qos=1).wait_for_publish(10)
    finally:
        pub.disconnect()
        pub.loop_stop()


def standby_warm(fleet: Fleet, cid: str) -> bool:
    a = fleet.summary(cid).get("authority") or {}
    return a.get("role") == "standby" and a.get("standby_plans", 0) >= 3


# ---- 1. the active controller is killed ---------------------------------------------------------------
def test_kill_the_active_controller_the_standby_takes_over_and_no_agent_falls_back(
        mosquitto: Mosquitto, etcd: Etcd, ha: tuple[Fleet, Bus, LeaderWatch, SiteConfig]) -> None:
    fleet, bus, leader, site = ha
    period_s = site.controller.period_s

    def diag() -> str:
        return f"{bus.show()}\nleader {leader.changes[-3:]}\n{fleet.logs()}"

    agents(fleet, mosquitto.url)
    controller(fleet, mosquitto.url, etcd.port, "ctl-a")
    controller(fleet, mosquitto.url, etcd.port, "ctl-b")
    wait(lambda: bus.all(lambda s: s.mode == "controlled" and s.epoch == 1), 120, "every rack under epoch 1", diag)
    holder = leader.holder()
    assert holder is not None and holder["epoch"] == 1
    active, standby = (holder["holder"], "ctl-b" if holder["holder"] == "ctl-a" else "ctl-a")
    wait(lambda: standby_warm(fleet, standby), 60, "the standby plans (warm)", diag)
    old = {r: bus.raw[(r, 1)] for r in RACKS}
    fleet.kill(active)
    killed_ns = time.time_ns()
    wait(lambda: bus.all(lambda s: s.mode == "controlled" and s.epoch == 2), 30, "every rack under epoch 2", diag)
    # The standby's first command came within two periods of the authority lease expiring.
    gone_ns = leader.vanished_ns(1)
    first_ns = bus.first_command_ns(2)
    assert gone_ns is not None and first_ns is not None and killed_ns < gone_ns < first_ns
    assert (gone_ns - killed_ns) / NS_PER_S <= TTL_S + SLACK_S  # the lease ran out on its own
    assert (first_ns - gone_ns) / NS_PER_S <= 2 * period_s + SLACK_S
    print(f"takeover: lease gone {(gone_ns - killed_ns) / 1e9:.2f} s after the kill, first epoch-2 command "
          f"{(first_ns - gone_ns) / 1e9:.2f} s after that")
    assert leader.holder() == {"holder": standby, "epoch": 2}
    # Its own record: warm before (it planned as a standby), and it planned in the period it took over.
    wait(lambda: (fleet.summary(standby).get("authority") or {}).get("takeovers"), 10, "the record", diag)
    doc = fleet.summary(standby)
    (take,) = doc["authority"]["takeovers"]
    assert take["epoch"] == 2 and take["plans_before"] >= 3
    assert 0 <= take["first_plan_ns"] - take["acquired_ns"] <= 2 * period_s * NS_PER_S
    # Nobody fell back: the agents' leases never ran out, and epoch 1's commands are refused now.
    replay(mosquitto.port, old)
    wait(lambda: bus.all(lambda s: s.rejected.get("stale_seq", 0) >= 1 and s.epoch == 2), 20,
         "epoch 1's commands refused", diag)
    assert bus.fallbacks() == [], diag()
    wait(lambda: bus.above_plan(2)[1] >= 2 * len(RACKS), 30, "statuses under epoch 2", diag)
    above, _ = bus.above_plan(2)
    assert above == [], above[:5]
    for name in ("agents-a", "agents-b"):
        assert fleet.stop(name) == 0
        s = fleet.summary(name)
        assert s["fallbacks"] == 0 and s["modes"] == {"controlled": 4 * 144}, s
    assert fleet.stop(standby) == 0
    assert fleet.summary(standby)["plans_with_violations"] == 0
    assert bus.refused == []


# ---- 2. the active controller is cut off from etcd, not from MQTT -------------------------------------
def test_partition_from_etcd_the_old_authority_stops_first_and_is_refused_by_epoch(
        mosquitto: Mosquitto, etcd: Etcd, ha: tuple[Fleet, Bus, LeaderWatch, SiteConfig]) -> None:
    fleet, bus, leader, _site = ha
    proxy = CuttableProxy(etcd.port)

    def diag() -> str:
        return f"{bus.show()}\nleader {leader.changes[-3:]}\n{fleet.logs()}"

    try:
        agents(fleet, mosquitto.url)
        controller(fleet, mosquitto.url, proxy.port, "ctl-a")  # reaches etcd only through the proxy
        wait(lambda: bus.all(lambda s: s.mode == "controlled" and s.epoch == 1), 120, "every rack under epoch 1",
             diag)
        assert leader.holder() == {"holder": "ctl-a", "epoch": 1}
        controller(fleet, mosquitto.url, etcd.port, "ctl-b")
        wait(lambda: standby_warm(fleet, "ctl-b"), 90, "ctl-b plans as a warm standby", diag)
        proxy.cut()
        wait(lambda: bus.all(lambda s: s.mode == "controlled" and s.epoch == 2), 30, "every rack under epoch 2",
             diag)
        assert leader.holder() == {"holder": "ctl-b", "epoch": 2}
        # ctl-a is alive and still on MQTT, but it stopped publishing before ctl-b started (same clock).
        assert fleet.proc("ctl-a").poll() is None
        wait(lambda: any(t["kind"] == "lost" for t in (fleet.summary("ctl-a").get("authority") or {})
                         .get("transitions", [])), 10, "ctl-a's record of the loss", diag)
        lost = next(t for t in fleet.summary("ctl-a")["authority"]["transitions"] if t["kind"] == "lost")
        won = next(t for t in fleet.summary("ctl-b")["authority"]["transitions"] if t["kind"] == "acquired")
        assert lost["epoch"] == 1 and won["epoch"] == 2 and lost["wall_ns"] < won["wall_ns"]
        last_old, first_new = bus.last_command_ns(1), bus.first_command_ns(2)
        assert last_old is not None and first_new is not None and last_old < first_new
        # Whatever of epoch 1 still reaches an agent (a delayed or replayed command) is refused by epoch.
        old = {r: bus.raw[(r, 1)] for r in RACKS}
        sent_by_a = bus.count(1)
        replay(mosquitto.port, old)
        wait(lambda: bus.all(lambda s: s.rejected.get("stale_seq", 0) >= 1 and s.epoch == 2), 20,
             "epoch 1's commands refused", diag)
        # Healed, ctl-a stays a standby and sends nothing under any epoch.
        proxy.heal()
        time.sleep(2 * TTL_S)
        a = fleet.summary("ctl-a")["authority"]
        assert a["role"] == "standby" and a["seen_holder"] == "ctl-b"
        assert bus.count(1) == sent_by_a + len(RACKS)  # only the replays
        # No agent enforced a cap above the plan of the command it acknowledged under epoch 2; none fell back.
        wait(lambda: bus.above_plan(2)[1] >= 2 * len(RACKS), 30, "statuses under epoch 2", diag)
        above, _ = bus.above_plan(2)
        assert above == [], above[:5]
        assert bus.fallbacks() == [], diag()
        held = [s for _, s in bus.statuses if s.held_epoch]
        assert all(s.held_epoch == 1 and s.epoch == 2 for s in held)
    finally:
        proxy.close()


# ---- 3. a store writer is killed mid-stream ------------------------------------------------------------
def _vm_samples(vm: VictoriaMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...], int], float]:
    out = {}
    for s in vm.export():
        labels = dict(s["metric"])
        name = labels.pop("__name__")
        for t, v in zip(s["timestamps"], s["values"], strict=True):
            out[(name, tuple(sorted(labels.items())), int(t))] = float(v)
    return out


def _same(a: float | None, b: float) -> bool:
    # VictoriaMetrics keeps 12 significant decimal digits of a float (its decimal compression); the
    # line protocol we send is exact (repr). A float32 meter register has more digits than that.
    return a is not None and math.isclose(a, b, rel_tol=1e-11, abs_tol=1e-300)


def _expected(rec: Recorder) -> dict[tuple[str, tuple[tuple[str, str], ...], int], float]:
    with rec.lock:
        return {(m.replace(".", "_"), tags, ts): v for (m, tags, ts), v in rec.readings.items()}


def test_kill_a_store_writer_mid_stream_every_acknowledged_reading_is_stored(
        mosquitto: Mosquitto, victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    site = load_site(DEMO_SITE)
    eps = tmp_path / "endpoints.json"
    twin = TwinThread(site, mosquitto.port, endpoints=eps)
    fleet = Fleet(tmp_path)
    rec = Recorder(mosquitto.port)
    try:
        assert rec.connected.wait(10)

        def writer(i: int) -> None:
            fleet.start(f"writer-{i}", ["store-writer", "--site", DEMO_SITE, "--mqtt", mosquitto.url, "--writer-id",
                                        f"writer-{i}", "--influx-url", victoriametrics.url, "--influx-org", "o",
                                        "--influx-bucket", "b", "--data-dir", tmp_path / f"writer-{i}-data",
                                        "--summary-out", tmp_path / f"writer-{i}.json"])

        for i in range(2):
            writer(i)
        wait(lambda: all(fleet.summary(f"writer-{i}").get("mqtt", {}).get("connects") for i in range(2)), 60,
             "writers connected", fleet.logs)
        for i in range(2):
            fleet.start(f"collect-{i}", ["collect", "--endpoints", eps, "--site", DEMO_SITE, "--protocols", "modbus",
                                         "--interval", "0.5", "--publish", mosquitto.url, "--src", f"collect-{i}",
                                         "--shard", f"{i}/2", "--summary-out", tmp_path / f"collect-{i}.json"])
        wait(lambda: fleet.summary("writer-1").get("acked", 0) >= 10, 60, "writer-1 writes", fleet.logs)
        fleet.kill("writer-1")  # mid-stream: batches taken, some written, not all acknowledged
        time.sleep(4)  # its share queues in its session meanwhile
        writer(1)  # its supervisor restarts it, with the same identity
        time.sleep(4)
        for i in range(2):
            assert fleet.stop(f"collect-{i}") == 0  # flushes, and waits for the broker's PUBACKs
        collected = [fleet.summary(f"collect-{i}") for i in range(2)]
        # Every reading the collectors published was acknowledged by the broker ...
        assert all(c["acked_readings"] == c["readings"] > 0 for c in collected), collected
        total = sum(c["readings"] for c in collected)

        def stored() -> bool:
            want, got = _expected(rec), _vm_samples(victoriametrics)
            return bool(want) and all(_same(got.get(k), v) for k, v in want.items())

        def mismatch() -> str:
            want, got = _expected(rec), _vm_samples(victoriametrics)
            missing = [k for k in want if k not in got]
            wrong = [(k, want[k], got[k]) for k in want if k in got and not _same(got[k], want[k])]
            return (f"{len(want)} published, {len(got)} stored, {len(missing)} missing (e.g. {missing[:2]}), "
                    f"{len(wrong)} wrong (e.g. {wrong[:2]}); stored e.g. {list(got)[:2]}\n{fleet.logs()}")

        wait(stored, 90, "every acknowledged reading stored", mismatch)
        want, got = _expected(rec), _vm_samples(victoriametrics)
        # ... and is in the store, by count and by value (the series-and-millisecond key is unique).
        assert len(want) + rec.duplicates == total
        missing = [k for k in want if k not in got]
        wrong = [k for k, v in want.items() if not _same(got.get(k), v)]
        assert missing == [] and wrong == []
        ours = {k for k in got if not k[0].endswith("_quality")}
        assert ours == {k for k in want if not k[0].endswith("_quality")}
        for i in range(2):
            assert fleet.stop(f"writer-{i}") == 0
        docs = [fleet.summary(f"writer-{i}") for i in range(2)]
        assert all(d["pending"] == 0 and d["store"]["dropped_points"] == 0 for d in docs), docs
        assert docs[1]["acked"] > 0  # the restarted writer-1 wrote what had queued in its session
    finally:
        fleet.stop_all()
        rec.close()
        twin.close()


# ---- 4. a collector is killed ---------------------------------------------------------------------------
def test_kill_a_collector_its_devices_are_reported_down_and_planned_at_worst_case(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    site = load_site(DEMO_SITE)
    eps = tmp_path / "endpoints.json"
    twin = TwinThread(site, mosquitto.port, endpoints=eps)
    fleet = Fleet(tmp_path)
    try:
        assert twin.twin is not None
        eps_modbus = [e for e in twin.twin.endpoints() if e.protocol == "modbus"]
        shards = {i: sorted(e.device for e in eps_modbus if shard_of(e.device, 2) == i) for i in range(2)}
        loop_of = {e.device: e.entity for e in eps_modbus if e.level == "loop"}
        victim = next(i for i in range(2) if any(d in loop_of for d in shards[i]))
        for i in range(2):
            fleet.start(f"collect-{i}", ["collect", "--endpoints", eps, "--site", DEMO_SITE, "--protocols", "modbus",
                                         "--interval", "1", "--publish", mosquitto.url, "--src", f"collect-{i}",
                                         "--shard", f"{i}/2"])
        fleet.start("ctl", ["controller", "--site", DEMO_SITE, "--mqtt", mosquitto.url, "--readings",
                            "--collector-timeout", "4", "--state-dir", tmp_path / "ctl-state", "--data-dir",
                            tmp_path / "ctl-data", "--summary-out", tmp_path / "ctl.json"])

        def ctl() -> dict[str, Any]:
            return fleet.summary("ctl")

        def both_up() -> bool:
            c = ctl().get("collectors", {})
            return all(c.get(f"collect-{i}", {}).get("devices") == shards[i] and c[f"collect-{i}"]["up"]
                       for i in range(2)) and not ctl().get("plan", {}).get("stale_loops", ["?"])

        wait(both_up, 120, "both collectors' devices reporting, no loop stale", fleet.logs)
        before = ctl()["plan"]["loop_capacity_w"]
        fleet.kill(f"collect-{victim}")
        wait(lambda: ctl().get("devices_down") == shards[victim], 30, "the dead shard's devices reported down",
             fleet.logs)
        doc = ctl()
        assert doc["collectors"][f"collect-{victim}"]["up"] is False
        assert doc["collectors"][f"collect-{1 - victim}"]["up"] is True
        assert doc["events"].get("collector_down") == 1
        # Its CDUs' loops are planned at worst case: stale, at the last known capacity or less, never zero.
        stale_want = {loop_of[d] for d in shards[victim] if d in loop_of}
        wait(lambda: set(ctl().get("plan", {}).get("stale_loops", [])) >= stale_want and stale_want, 30,
             "the dead shard's loops planned as stale", fleet.logs)
        for _ in range(5):
            plan = ctl()["plan"]
            for lid in set(plan["stale_loops"]):
                assert 0 < plan["loop_capacity_w"][lid] <= before[lid] + 1e-6
            time.sleep(1)
        assert ctl()["plans_with_violations"] == 0 and ctl()["control_errors"] == 0
    finally:
        fleet.stop_all()
        twin.close()

