"""InfluxSink against a real VictoriaMetrics: exact round trip, outage drill, writer crash drill.

VictoriaMetrics keeps millisecond timestamps, so the points here sit on whole milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.events import Event
from models.readings import ReadingBatch, SeriesRegistry
from store.influx import InfluxSink
from testbed.realservers import VictoriaMetrics
from tests.conftest import ROOT
from tests.store.writer_proc import SERIES, T0_MS, batch_of

pytestmark = pytest.mark.servers


def _samples(vm: VictoriaMetrics, name: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for s in vm.export(f'{{__name__="{name}"}}'):
        out.setdefault(s["metric"]["id"], []).extend(zip(s["timestamps"], s["values"], strict=True))
    return {k: sorted(v) for k, v in out.items()}


def test_round_trip_exact_values_and_timestamps(victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    reg = SeriesRegistry()
    rng = np.random.default_rng(1)
    sids = np.array([reg.id("power.power_w", site="rt", level="rack", id=f"r,{i} x=") for i in range(20)], np.int32)
    # Meter-like values (mW resolution) over a wide range, and ms timestamps.
    values = np.round(rng.uniform(-1e6, 6e5, (30, 20)), 3)
    values[0, :5] = [0.0, 1e-3, 123456789.125, -0.5, 2.0**40]
    sink = InfluxSink(victoriametrics.url, "", "org", "bucket", spool_dir=tmp_path / "spool",
                      batch_size=128, flush_interval_s=0.05)
    for k in range(30):
        sink.write(ReadingBatch.of((T0_MS + 1000 * k) * 1_000_000, sids, values[k], 0, reg))
    sink.flush(30)
    st = sink.stats()
    sink.close()
    assert (st.written_points, st.spooled_points, st.rejected_points) == (600, 0, 0)
    got = _samples(victoriametrics, "power_power_w")
    assert sorted(got) == sorted(f"r,{i} x=" for i in range(20))
    for i in range(20):
        assert got[f"r,{i} x="] == [(T0_MS + 1000 * k, float(values[k, i])) for k in range(30)]


@pytest.mark.parametrize("gzip_level", [0, 9])
def test_any_gzip_level_round_trips(victoriametrics: VictoriaMetrics, tmp_path: Path, gzip_level: int) -> None:
    reg = SeriesRegistry()
    sid = reg.id("power.power_w", site="gz", level="rack", id=f"level-{gzip_level}")
    sink = InfluxSink(victoriametrics.url, "", "org", "bucket", spool_dir=tmp_path / "spool", gzip_level=gzip_level,
                      flush_interval_s=0.05)
    sink.write(ReadingBatch.of((T0_MS + np.arange(50) * 1000) * 1_000_000, np.full(50, sid), np.arange(50.0), 0, reg))
    sink.flush(30)
    sink.close()
    assert _samples(victoriametrics, "power_power_w")[f"level-{gzip_level}"] == [
        (T0_MS + 1000 * k, float(k)) for k in range(50)]


def test_events_reach_the_server(victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    sink = InfluxSink(victoriametrics.url, "", "org", "bucket", spool_dir=tmp_path / "spool", site="demo hall")
    sink.write_events([Event(T0_MS * 1_000_000, "cap_plan", "info", "controller", 'cut "r01"', entity="r01",
                             fields={"cut_w": 1500.0})])
    sink.flush(30)
    sink.close()
    (s,) = victoriametrics.export('{__name__="events_cut_w"}')
    assert s["metric"] == {"__name__": "events_cut_w", "site": "demo hall", "kind": "cap_plan",
                           "severity": "info", "source": "controller", "entity": "r01"}
    assert (s["timestamps"], s["values"]) == ([T0_MS], [1500.0])


def test_outage_drill_every_point_exactly_once(victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    reg = SeriesRegistry()
    sink = InfluxSink(victoriametrics.url, "", "org", "db", spool_dir=tmp_path / "spool",
                      batch_size=200, flush_interval_s=0.02, max_backoff_s=0.5)
    for k in range(60):
        if k == 20:
            sink.flush(30)
            victoriametrics.stop()
        if k == 45:
            assert sink.stats().spooled_points == 25 * SERIES  # held while the server was down
            assert sink.stats().last_error is not None
            victoriametrics.start()  # same port, same data directory
        sink.write(batch_of(k, reg))
    sink.flush(60)
    st = sink.stats()
    sink.close()
    assert (st.written_points, st.spooled_points, st.rejected_points, st.dropped_points) == (60 * SERIES, 0, 0, 0)
    got = _samples(victoriametrics, "power_power_w")
    assert len(got) == SERIES
    for i in range(SERIES):
        assert got[f"n{i}"] == [(T0_MS + k, k * 1000.0 + i) for k in range(60)]


def _start_writer(url: str, spool: Path, first: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.store.writer_proc", url, str(spool), str(first)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _acknowledged(proc: subprocess.Popen[str], n: int) -> list[int]:
    assert proc.stdout is not None
    acked = []
    while len(acked) < n:
        line = proc.stdout.readline()
        assert line, "writer died"
        acked.append(int(line))
    return acked


def test_writer_killed_mid_stream_loses_nothing_acknowledged(victoriametrics: VictoriaMetrics,
                                                             tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    victoriametrics.stop()  # part of what is acknowledged is only in the spool when the writer dies
    proc = _start_writer(victoriametrics.url, spool, 0)
    acked = _acknowledged(proc, 30)
    victoriametrics.start()
    acked += _acknowledged(proc, 30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.stdout is not None
    acked += [int(x) for x in proc.stdout.read().split()]  # acknowledged before the kill, not yet read
    proc.stdout.close()

    reg = SeriesRegistry()
    sink = InfluxSink(victoriametrics.url, "", "org", "db", spool_dir=spool, flush_interval_s=0.02)
    sink.flush(60)  # the restarted writer replays what the dead one left in the spool
    assert sink.stats().spooled_points == 0
    sink.write(batch_of(10_000, reg))
    sink.flush(30)
    sink.close()
    got = _samples(victoriametrics, "power_power_w")
    for i in range(SERIES):
        stored = {ts for ts, _ in got[f"n{i}"]}
        assert {T0_MS + k for k in acked} <= stored
        assert T0_MS + 10_000 in stored
