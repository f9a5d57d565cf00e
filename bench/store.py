"""Benchmark: telemetry points encoded and written to VictoriaMetrics.

ours: powerplane.store.InfluxSink — vectorised line protocol from columnar batches, each
      batch fsynced to the durable spool, then delivered by the sender thread (gzip,
      influxdb-client's synchronous write API, 20,000 lines per request).
peer: influxdb-client's Point API for the same points — one Point per reading
      (tag/field/time), written with the same client and request size, gzip on (the
      client's own gzip, level 9; ours uses level 1 — see V2Transport).
Also: encode-only rate (bytes of line protocol from batches), and the spool's replay rate
(a spool filled while the server is unreachable, then drained into VictoriaMetrics).

The points are demo-site snapshots from the twin (TwinFeed: every power node, loop, site
and grid series). VictoriaMetrics is started the way the test fixture starts it, once for
ours and once for the peer. Figures are wall-clock on a shared 2-core machine.

    python bench/store.py [--snapshots 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.readings import ReadingBatch, SeriesRegistry  # noqa: E402
from models.site import load_site  # noqa: E402
from models.topology import build_topology  # noqa: E402
from models.twin.feed import TwinFeed  # noqa: E402
from models.twin.sim import TwinSim  # noqa: E402
from powerplane.store.influx import InfluxSink  # noqa: E402
from powerplane.store.lineproto import encode  # noqa: E402
from testbed.lpparse import parse_line  # noqa: E402
from testbed.realservers import VictoriaMetrics, free_port  # noqa: E402
from tests.powerplane.store.conftest import vm_export  # noqa: E402

REQUEST_LINES = 20_000


def snapshots(n: int) -> list[ReadingBatch]:
    """``n`` snapshots of the demo site, 1 s of site time apart."""
    site = load_site(ROOT / "deploy" / "sites" / "demo.toml")
    sim = TwinSim(site, build_topology(site), start_ns=1_767_225_600_000_000_000)
    feed = TwinFeed(sim, site.site.name, registry=SeriesRegistry())
    out = []
    for _ in range(n):
        sim.step(10)
        out.append(feed.batch())
    return out


def vm_count(vm: VictoriaMetrics) -> int:
    """Raw samples stored in VictoriaMetrics (all series), read back with /api/v1/export."""
    return sum(len(s["values"]) for s in vm_export(vm))


def run_ours(vm: VictoriaMetrics, batches: list[ReadingBatch], spool: Path) -> float:
    """Seconds to spool and deliver every batch through InfluxSink."""
    t0 = time.perf_counter()
    sink = InfluxSink(vm.url, "", "org", "bench", spool_dir=spool, batch_size=REQUEST_LINES, flush_interval_s=0.05)
    for b in batches:
        sink.write(b)
    sink.flush(600)
    dt = time.perf_counter() - t0
    st = sink.stats()
    sink.close()
    assert st.spooled_points == 0 and st.rejected_points == 0, st
    return dt


def peer_points(batches: list[ReadingBatch]) -> list[object]:
    """influxdb-client Points for every reading (the peer's way to build them)."""
    from influxdb_client.client.write.point import Point
    from influxdb_client.domain.write_precision import WritePrecision

    points: list[object] = []
    for b in batches:
        keys = b.registry.keys()
        for ts, sid, v in zip(b.ts_ns.tolist(), b.series.tolist(), b.value.tolist(), strict=True):
            key = keys[sid]
            meas, _, field = key.metric.partition(".")
            p = Point(meas)
            for k, tv in key.tags:
                p = p.tag(k, tv)
            points.append(p.field(field, float(v)).time(ts, WritePrecision.NS))
    return points


def run_peer(vm: VictoriaMetrics, batches: list[ReadingBatch]) -> float:
    """Seconds to build Points and write them with influxdb-client (same request size, gzip)."""
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    t0 = time.perf_counter()
    points = peer_points(batches)
    with InfluxDBClient(url=vm.url, token="", org="org", enable_gzip=True, timeout=60_000) as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        for i in range(0, len(points), REQUEST_LINES):
            api.write("bench", "org", record=points[i:i + REQUEST_LINES])
    return time.perf_counter() - t0


def run_replay(vm: VictoriaMetrics, batches: list[ReadingBatch], spool: Path) -> tuple[float, int]:
    """Fill a spool while the server is unreachable, then time draining it into ``vm``."""
    dead = f"http://127.0.0.1:{free_port()}"
    quiet = logging.getLogger("powerplane.store.influx")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # "unreachable" is the point of this phase
    sink = InfluxSink(dead, "", "org", "bench", spool_dir=spool, batch_size=REQUEST_LINES, flush_interval_s=3600)
    for b in batches:
        sink.write(b)
    n = sink.stats().spooled_points
    sink.close()
    quiet.setLevel(level)
    t0 = time.perf_counter()
    sink = InfluxSink(vm.url, "", "org", "bench", spool_dir=spool, batch_size=REQUEST_LINES, flush_interval_s=0.05)
    sink.flush(600)
    dt = time.perf_counter() - t0
    left = sink.stats().spooled_points
    sink.close()
    assert left == 0, left
    return dt, n


def main() -> None:
    """Run the benchmark and print one JSON line last."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshots", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    batches = snapshots(args.snapshots)
    n = sum(len(b) for b in batches)
    print(f"{n:,} points in {len(batches)} batches of {len(batches[0]):,} series", flush=True)

    encode(batches[0])  # interns the escaped series prefixes once, as a running writer has
    enc_s = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        nbytes = sum(len(encode(b)) for b in batches)
        enc_s = min(enc_s, time.perf_counter() - t0)

    # Both write the same points (the peer spells 30.0 as "30", also a float): a fair race.
    ours_lines = [parse_line(ln) for ln in encode(batches[0]).decode().splitlines()]
    peer_lines = [parse_line(p.to_line_protocol()) for p in peer_points(batches[:1])]  # type: ignore[attr-defined]
    same = ours_lines == peer_lines

    # Best of --repeat runs, each against a fresh VictoriaMetrics: the machine is shared,
    # and the best run is the one least disturbed by the other tenants.
    work = Path(tempfile.mkdtemp(prefix="powerplane-bench-store-"))
    ours_s = peer_s = replay_s = float("inf")
    replayed = ours_stored = peer_stored = 0
    try:
        for r in range(args.repeat):
            vm = VictoriaMetrics(work / f"vm-ours-{r}")
            vm.start()
            try:
                ours_s = min(ours_s, run_ours(vm, batches, work / f"spool-ours-{r}"))
                ours_stored = vm_count(vm)
                dt, replayed = run_replay(vm, batches[: max(1, len(batches) // 2)], work / f"spool-replay-{r}")
                replay_s = min(replay_s, dt)
            finally:
                vm.stop()
            vm = VictoriaMetrics(work / f"vm-peer-{r}")
            vm.start()
            try:
                peer_s = min(peer_s, run_peer(vm, batches))
                peer_stored = vm_count(vm)
            finally:
                vm.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours, peer = n / ours_s, n / peer_s
    print(f"encode only:      {n / enc_s:12,.0f} points/s ({nbytes / enc_s / 1e6:,.1f} MB/s of line protocol)")
    print(f"ours (InfluxSink): {ours:11,.0f} points/s  ({ours_s:.2f} s, stored {ours_stored:,})")
    print(f"peer (Point API):  {peer:11,.0f} points/s  ({peer_s:.2f} s, stored {peer_stored:,})")
    print(f"spool replay:     {replayed / replay_s:12,.0f} points/s ({replayed:,} points)")
    print(f"same points (parsed) in the first batch: {same}")
    print(json.dumps({"bench": "store_write_vm", "ours": round(ours), "peer": round(peer),
                      "ratio": round(ours / peer, 2), "unit": "points/s", "encode_only": round(n / enc_s),
                      "spool_replay": round(replayed / replay_s), "points": n, "repeat": args.repeat,
                      "stored_ours": ours_stored,
                      "stored_peer": peer_stored, "same_points": same,
                      "note": "wall clock, shared 2-core machine under contention; VictoriaMetrics on the same host"}))


if __name__ == "__main__":
    main()
