"""Benchmark: SNMP collection throughput and fan-out.

1. Walking a 4,032-OID PDU table (Sentry4 st4OutletMonitorTable: 4 daisy-chained units x
   2 cords x 36 outlets x 14 columns), served by net-snmp snmpd (C, so the client is what
   is measured), in OIDs/s:
     ours  - the collector: SnmpPoller with a profile mapping all 14 columns, i.e. walk,
             decode into a ReadingBatch, intern series (first poll excluded);
     peer  - raw pysnmp 7.1: bulk_walk_cmd over the same table, values left undecoded;
     also  - net-snmp's own snmpbulkwalk (C) over the same table, for scale.
   All with max-repetitions 50.
2. 500 simulated APC rPDU2 PDUs (24 metered outlets each) served by one snmpsim process
   on one UDP port (one community per PDU), all polled concurrently by one collector
   process; reports how long a full round takes against a 10 s interval (steady rounds;
   the first, which also sets up 500 sessions, separately) and the CPU each side spent.

Agreement is on values: every (unit, cord, outlet, column) value the collector decoded must
equal the integer raw pysnmp read for that OID, and both must equal the recording; every
PDU of the fleet must yield the recording's readings in every round. The bench exits 1
otherwise.

The machine is shared (2 cores, other sessions running): figures are under contention.

    python bench/snmp.py [--rounds 5] [--pdus 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # testbed/ (real servers, recordings)

from collectors.base import DeviceConfig
from collectors.profiles import load_profile
from collectors.snmp.client import SnmpPoller, acquire_engine, release_engine
from collectors.snmp.profile import SnmpProfile
from models.readings import ReadingBatch, SeriesRegistry
from testbed.realservers import Snmpd, Snmpsim
from testbed.recordings import apc_rpdu2, render, sentry4

TABLE = "1.3.6.1.4.1.1718.4.1.8.3.1"  # st4OutletMonitorEntry
REPS = 50

BENCH_PROFILE = f"""
protocol = "snmp"
name = "bench-sentry4-outlets"
description = "all 14 columns of st4OutletMonitorTable (benchmark only)"
max_repetitions = {REPS}
[[tables]]
name = "st4OutletMonitorTable"
entry = "{TABLE}"
index = ["unit", "cord", "outlet"]
""" + "".join(f"""
[[tables.columns]]
column = {c}
metric = "power.power_w"
tags = {{ column = "{c}" }}
""" for c in range(1, 15))


def table_rows() -> list[tuple[str, int, object]]:
    """The outlet-table rows of the 4-unit Sentry4 recording."""
    return [r for r in sentry4(units=4, cords=2, outlets=36) if r[0].startswith(TABLE + ".")]


Values = dict[str, float]  # by the row's OID


async def ours(port: int, profile: SnmpProfile, rounds: int) -> tuple[float, int, Values]:
    """Best-of OIDs/s of the collector over the table (first poll warms up series interning), and its values."""
    reg = SeriesRegistry()
    dev = DeviceConfig(name="big", protocol="snmp", profile=profile.name, host="127.0.0.1", port=port,
                       timeout_s=5.0, tags=(("site", "bench"), ("level", "pdu"), ("id", "big")),
                       options={"community": "public"})
    p = SnmpPoller(dev, profile, reg)
    try:
        r = await p.poll(0)
        n = len(r.batch)
        best = 0.0
        for i in range(rounds):
            t = time.perf_counter()
            r = await p.poll(i + 1)
            dt = time.perf_counter() - t
            assert len(r.batch) == n and not r.errors
            best = max(best, n / dt)
        keys = r.batch.registry.keys()
        got: Values = {}
        for sid, v in zip(r.batch.series.tolist(), r.batch.value.tolist(), strict=True):
            t = dict(keys[sid].tags)
            got[f"{TABLE}.{t['column']}.{t['unit']}.{t['cord']}.{t['outlet']}"] = v
        return best, n, got
    finally:
        await p.close()


async def raw_pysnmp(port: int, rounds: int) -> tuple[float, int, Values]:
    """Best-of OIDs/s of pysnmp's bulk_walk_cmd over the same table (no decoding), and what it read."""
    from pysnmp.hlapi.v3arch import asyncio as hl

    engine = acquire_engine()
    try:
        target = await hl.UdpTransportTarget.create(("127.0.0.1", port), timeout=5.0, retries=0)
        best, n = 0.0, 0
        last: list[object] = []
        for _ in range(rounds + 1):
            t = time.perf_counter()
            n = 0
            last = []
            async for ei, es, _ex, vbs in hl.bulk_walk_cmd(
                    engine, hl.CommunityData("public"), target, hl.ContextData(), 0, REPS,
                    hl.ObjectType(hl.ObjectIdentity(TABLE)), lookupMib=False, lexicographicMode=False):
                if ei or es:
                    raise RuntimeError(f"pysnmp walk failed: {ei or es}")
                n += len(vbs)
                last += vbs  # kept as they come; turned into numbers after the clock stops
            best = max(best, n / (time.perf_counter() - t))
        got: Values = {str(vb[0]): float(int(vb[1])) for vb in last}  # type: ignore[index]
        return best, n, got
    finally:
        release_engine(engine)


def netsnmp(port: int, rounds: int) -> tuple[float, int]:
    """Best-of OIDs/s of net-snmp's snmpbulkwalk (process start included)."""
    exe = shutil.which("snmpbulkwalk")
    if exe is None:
        return float("nan"), 0
    best, n = 0.0, 0
    for _ in range(rounds):
        t = time.perf_counter()
        out = subprocess.run([exe, "-v2c", "-c", "public", f"-Cr{REPS}", "-On", "-Oq", f"127.0.0.1:{port}",
                              "." + TABLE], capture_output=True, text=True, check=True,
                             env={**os.environ, "MIBS": ""}).stdout
        dt = time.perf_counter() - t
        n = len(out.splitlines())
        best = max(best, n / dt)
    return best, n


def signature(batch: ReadingBatch) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """A PDU's readings without its own name: (metric, other tags, value), sorted."""
    keys = batch.registry.keys()
    return sorted((keys[s].metric, tuple(t for t in keys[s].tags if t[0] != "id"), v)
                  for s, v in zip(batch.series.tolist(), batch.value.tolist(), strict=True))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, with reaped children) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


Round = tuple[float, int, int, float, float, int]


async def fleet(port: int, names: list[str], profile: SnmpProfile, rounds: int, agent_pid: int) -> list[Round]:
    """Per round: (seconds for all PDUs, readings, failed PDUs, our CPU s, agent CPU s, PDUs whose values
    differ from the first PDU's first round), all polled at once."""
    reg = SeriesRegistry()
    pollers = [SnmpPoller(DeviceConfig(name=n, protocol="snmp", profile=profile.name, host="127.0.0.1",
                                       port=port, timeout_s=8.0,
                                       tags=(("site", "bench"), ("level", "pdu"), ("id", n)),
                                       options={"community": n, "retries": 1}), profile, reg)
               for n in names]
    out = []
    ref: object = None
    try:
        for i in range(rounds):
            t, cpu, agent = time.perf_counter(), time.process_time(), cpu_s(agent_pid)
            results: list[Any] = await asyncio.gather(*(p.poll(i) for p in pollers), return_exceptions=True)
            dt = time.perf_counter() - t
            failed = sum(1 for r in results if isinstance(r, BaseException) or r.errors)
            readings = sum(len(r.batch) for r in results if not isinstance(r, BaseException))
            cpu_ours, cpu_agent = time.process_time() - cpu, cpu_s(agent_pid) - agent
            # Every PDU serves the same recording: each must decode to the same values.
            sigs = [None if isinstance(r, BaseException) else signature(r.batch) for r in results]
            ref = ref if i else sigs[0]
            out.append((dt, readings, failed, cpu_ours, cpu_agent, sum(1 for g in sigs if g != ref)))
    finally:
        for p in pollers:
            await p.close()
    return out


def main() -> int:
    """Run both parts and print one JSON line; 1 if a value disagrees."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pdus", type=int, default=500)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="powerplane-bench-snmp-"))
    try:
        prof_path = work / "bench-sentry4-outlets.toml"
        prof_path.write_text(BENCH_PROFILE)
        table_profile = load_profile(prof_path)
        assert isinstance(table_profile, SnmpProfile)
        rows = table_rows()
        types = {2: "integer"}
        conf = "\n".join(f"override .{oid} {types[t]} {v}" for oid, t, v in rows)
        snmpd = Snmpd(work / "snmpd", extra_conf=conf)
        snmpd.start()
        try:
            ours_ops, n_ours, ours_v = asyncio.run(ours(snmpd.port, table_profile, args.rounds))
            peer_ops, n_peer, peer_v = asyncio.run(raw_pysnmp(snmpd.port, args.rounds))
            c_ops, n_c = netsnmp(snmpd.port, args.rounds)
        finally:
            snmpd.stop()
        truth = {oid: float(v) for oid, _t, v in rows}  # type: ignore[arg-type]
        diff = sorted(k for k in truth.keys() | ours_v.keys() | peer_v.keys()
                      if not (ours_v.get(k) == peer_v.get(k) == truth.get(k)))
        for k in diff[:5]:
            print(f"DISAGREE {k}: ours {ours_v.get(k)}, pysnmp {peer_v.get(k)}, recording {truth.get(k)}")
        walk_agrees = n_ours == n_peer == len(rows) and not diff
        print(f"table walk, {len(rows)} OIDs: collector {ours_ops:,.0f} OIDs/s, raw pysnmp bulk_walk_cmd "
              f"{peer_ops:,.0f} OIDs/s, net-snmp snmpbulkwalk {c_ops:,.0f} OIDs/s ({n_c} OIDs)", flush=True)

        data = work / "fleet"
        data.mkdir()
        text = render(apc_rpdu2())
        names = [f"pdu-{i:03d}" for i in range(args.pdus)]
        for n in names:
            (data / f"{n}.snmprec").write_text(text)
        apc = load_profile(Path(__file__).resolve().parent.parent / "collectors/profiles/snmp/apc-rpdu2.toml")
        assert isinstance(apc, SnmpProfile)
        t0 = time.perf_counter()
        sim = Snmpsim(data)
        sim.start()
        start_s = time.perf_counter() - t0
        try:
            assert sim.proc is not None
            rounds = asyncio.run(fleet(sim.port, names, apc, 1 + max(2, args.rounds - 1), sim.proc.pid))
        finally:
            sim.stop()
            sim.cleanup()
        for i, (dt, readings, failed, ours_cpu, agent_cpu, odd) in enumerate(rounds):
            print(f"round {i}: {args.pdus} PDUs in {dt:.2f} s, {readings} readings, {failed} PDUs failed, "
                  f"{odd} with other values; CPU: collector {ours_cpu:.2f} s, snmpsim {agent_cpu:.2f} s", flush=True)
        first = rounds[0][0]  # includes setting up 500 sessions on the engine
        worst = max(r[0] for r in rounds[1:])
        median = statistics.median(r[0] for r in rounds[1:])
        failed_total = sum(r[2] for r in rounds)
        fleet_agrees = failed_total == 0 and rounds[0][1] > 0 and all(r[5] == 0 for r in rounds)
        ours_cpu_ms = 1e3 * statistics.median(r[3] for r in rounds[1:]) / args.pdus
        agent_cpu_ms = 1e3 * statistics.median(r[4] for r in rounds[1:]) / args.pdus
    finally:
        shutil.rmtree(work, ignore_errors=True)

    agree = walk_agrees and fleet_agrees
    print(json.dumps({
        "bench": "snmp", "ours": round(ours_ops), "peer": round(peer_ops), "ratio": round(ours_ops / peer_ops, 3),
        "unit": "OIDs/s", "agree": agree, "values_compared": len(truth), "walk_agrees": walk_agrees,
        "fleet_agrees": fleet_agrees, "table_oids": len(rows), "max_repetitions": REPS,
        "netsnmp_snmpbulkwalk_oids_per_s": round(c_ops), "fleet_pdus": args.pdus,
        "fleet_first_round_s": round(first, 2),
        "fleet_round_s_median": round(median, 2), "fleet_round_s_worst": round(worst, 2),
        "fleet_interval_s": 10.0, "fleet_within_interval": worst <= 10.0, "fleet_failed_polls": failed_total,
        "fleet_collector_cpu_ms_per_pdu": round(ours_cpu_ms, 2), "fleet_snmpsim_cpu_ms_per_pdu": round(agent_cpu_ms, 2),
        "snmpsim_start_s": round(start_s, 1), "contention": "2 shared cores, other sessions running",
    }))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
