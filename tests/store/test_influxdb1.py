"""InfluxDB 1.x: our schema through the v1 /write endpoint, queried with InfluxQL; 400 partial writes."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from models.events import Event
from models.readings import ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.topology import Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim
from store.influx import InfluxSink
from store.lineproto import encode
from testbed.realservers import InfluxDB1
from tests.store.conftest import influxql

pytestmark = pytest.mark.servers

T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def _db(srv: InfluxDB1) -> str:
    name = "t" + uuid.uuid4().hex[:12]
    influxql(srv, f'CREATE DATABASE "{name}"')
    return name


def _sink(srv: InfluxDB1, db: str, tmp_path: Path, events: list[Event] | None = None) -> InfluxSink:
    hook = events.append if events is not None else None
    return InfluxSink(srv.url, "", "", db, spool_dir=tmp_path / "spool", api="v1", site="demo-hall",
                      flush_interval_s=0.05, on_event=hook)


def test_schema_answers_influxql(influxdb1: InfluxDB1, demo_site: SiteConfig, demo_topo: Topology,
                                 tmp_path: Path) -> None:
    db = _db(influxdb1)
    sim = TwinSim(demo_site, demo_topo, start_ns=T0_NS, seed=7)
    reg = SeriesRegistry()
    feed = TwinFeed(sim, "demo-hall", registry=reg)
    sink = _sink(influxdb1, db, tmp_path)
    batches = []
    for _ in range(5):
        sim.step(10)  # one second of site time
        batches.append(feed.batch())
        sink.write(batches[-1])
    msg = 'cap on "r01" \\ row a1, 電力 = 5 kW'
    sink.write_events([Event(T0_NS + 1, "cap_plan", "info", "controller", msg, entity="r01",
                             fields={"cut_w": 5000.0})])
    sink.flush(30)
    st = sink.stats()
    sink.close()
    assert (st.rejected_points, st.spooled_points) == (0, 0)

    names = {v[0] for s in influxql(influxdb1, "SHOW MEASUREMENTS", db) for v in s["values"]}
    assert names == {"power", "cooling", "site", "grid", "events"}
    tag_keys = {v[0] for s in influxql(influxdb1, "SHOW TAG KEYS FROM power", db) for v in s["values"]}
    assert tag_keys == {"site", "level", "id"}
    (fk,) = influxql(influxdb1, "SHOW FIELD KEYS FROM cooling", db)
    assert {v[1] for v in fk["values"]} == {"float"}  # every field is a float, always

    racks = influxql(influxdb1, "SELECT power_w FROM power WHERE level = 'rack' GROUP BY id", db)
    assert sorted(s["tags"]["id"] for s in racks) == [f"r0{i}" for i in range(1, 9)]
    frame = ReadingBatch.concat(batches).to_frame()
    for s in racks:
        want = frame[(frame["metric"] == "power.power_w") & (frame["id"] == s["tags"]["id"])]
        assert [v[1] for v in s["values"]] == want["value"].tolist()  # exact float64
        assert [v[0] for v in s["values"]] == [int(t.value) for t in want["time"]]  # exact ns

    (pue,) = influxql(influxdb1, "SELECT last(pue) FROM site WHERE site = 'demo-hall'", db)
    assert pue["values"][0][1] == pytest.approx(sim.facility_w / sim.it_w)
    (ev,) = influxql(influxdb1, "SELECT message, cut_w, entity FROM events WHERE kind = 'cap_plan'", db)
    assert ev["values"] == [[T0_NS + 1, msg, 5000.0, "r01"]]


def test_partial_write_is_reported_with_its_line_and_not_retried(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    db = _db(influxdb1)
    # Another writer (say, a Telegraf with integer fields) made power_w an integer field.
    # (In 1.x field types are per shard, so the point sits in the shard the test writes to.)
    seed = f"power,site=demo-hall power_w=1i {T0_NS - 1}\n".encode()
    req = urllib.request.Request(f"{influxdb1.url}/write?db={db}", data=seed)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204
    reg = SeriesRegistry()
    pue = reg.id("site.pue", site="demo-hall")
    power = reg.id("power.power_w", site="demo-hall", level="rack", id="r01")
    batch = ReadingBatch.of(np.array([T0_NS, T0_NS, T0_NS + 1]), [pue, power, pue], [1.2, 5e5, 1.3], 0, reg)
    events: list[Event] = []
    sink = _sink(influxdb1, db, tmp_path, events)
    sink.write(batch)
    sink.flush(30)
    st = sink.stats()
    requests = sink.requests
    sink.close()
    assert (st.written_points, st.rejected_points, st.spooled_points) == (2, 1, 0)
    assert requests == 1  # never retried
    (bad_line,) = [ln for ln in encode(batch).decode().splitlines() if "power_w" in ln]
    assert st.last_error is not None and "HTTP 400" in st.last_error and f"(line: {bad_line})" in st.last_error
    assert [(e.kind, e.fields["points"]) for e in events] == [("store_rejected", 1.0)]
    (s,) = influxql(influxdb1, "SELECT pue FROM site", db)
    assert s["values"] == [[T0_NS, 1.2], [T0_NS + 1, 1.3]]  # the rest of the batch was stored


def test_awkward_names_survive_a_real_server(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    db = _db(influxdb1)
    reg = SeriesRegistry()
    ids = ["rack 1,row=a", "c:\\pdu\\b", 'quote"d', "電力-⚡", "x=y z"]
    sids = [reg.id("power.power_w", site="hall, a=1", level="rack", id=i) for i in ids]
    sink = _sink(influxdb1, db, tmp_path)
    sink.write(ReadingBatch.of(T0_NS, sids, np.arange(len(ids), dtype=np.float64), 0, reg))
    sink.flush(30)
    st = sink.stats()
    sink.close()
    assert (st.written_points, st.rejected_points) == (len(ids), 0)
    (s,) = influxql(influxdb1, 'SHOW TAG VALUES FROM power WITH KEY = "id"', db)
    assert sorted(v[1] for v in s["values"]) == sorted(ids)
    (site,) = influxql(influxdb1, 'SHOW TAG VALUES FROM power WITH KEY = "site"', db)
    assert site["values"] == [["site", "hall, a=1"]]
