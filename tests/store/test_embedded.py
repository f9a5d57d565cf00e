"""The embedded SQLite store: restart, query by time and tags, events, health."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from models.events import Event
from models.readings import ReadingBatch, SeriesRegistry
from store.base import Sink
from store.embedded import EmbeddedStore


def _seed(store: EmbeddedStore, reg: SeriesRegistry) -> tuple[int, int, int]:
    r1 = reg.id("power.power_w", 600e3, site="demo", level="rack", id="r01")
    r2 = reg.id("power.power_w", 600e3, site="demo", level="rack", id="r02")
    pue = reg.id("site.pue", site="demo")
    for k in range(10):
        store.write(ReadingBatch.of(np.int64(k * 1_000_000_000), [r1, r2, pue],
                                    [1000.0 * k, 2000.0 * k + 0.5, 1.25], np.array([0, 2, 0], np.uint8), reg))
    return r1, r2, pue


def test_store_survives_restart_and_queries_by_time_and_tags(tmp_path: Path) -> None:
    reg = SeriesRegistry()
    store = EmbeddedStore(tmp_path)
    assert isinstance(store, Sink)
    _seed(store, reg)
    store.write_events([Event(3_000_000_000, "dr_start", "warning", "grid", "DR event, target 4 MW",
                              fields={"target_w": 4e6})])
    assert store.stats().written_points == 30
    store.close()

    store = EmbeddedStore(tmp_path)  # a new process would see the same
    df = store.query("power.power_w", 2_000_000_000, 5_000_000_000, id="r02")
    assert list(df.columns) == ["id", "level", "site", "value", "quality"]
    assert df.index.name == "time" and str(df.index.tz) == "UTC"
    assert list(df.index.asi8) == [2_000_000_000, 3_000_000_000, 4_000_000_000]
    assert df["value"].tolist() == [4000.5, 6000.5, 8000.5]
    assert df["quality"].tolist() == [2, 2, 2]
    assert set(df["id"]) == {"r02"}
    both = store.query("power.power_w", 0, 10**12, level="rack")
    assert len(both) == 20 and set(both["id"]) == {"r01", "r02"}
    assert store.query("power.power_w", 0, 10**12, id="nope").empty
    assert store.query("cooling.flow_lpm", 0, 10**12).empty
    ev = store.events(0, 10**12)
    assert ev["kind"].tolist() == ["dr_start"] and ev["fields"].iloc[0] == {"target_w": 4e6}
    assert ev.index[0] == pd.Timestamp(3_000_000_000, unit="ns", tz="UTC")
    assert store.time_range() == (0, 9_000_000_000)
    ser = store.series("power.power_w")
    assert ser["_rating"].tolist() == [600e3, 600e3]
    store.close()


def test_rewriting_a_point_overwrites_it_and_bad_values_are_counted(tmp_path: Path) -> None:
    reg = SeriesRegistry()
    store = EmbeddedStore(tmp_path)
    sid = reg.id("site.it_w", site="demo")
    store.write(ReadingBatch.of(np.array([1, 2, 3]), [sid, sid, sid], [1.0, math.nan, 3.0], 0, reg))
    store.write(ReadingBatch.of(np.array([1]), [sid], [10.0], 0, reg))  # a replay after a crash
    assert store.query("site.it_w", 0, 10)["value"].tolist() == [10.0, 3.0]
    st = store.stats()
    # the replay overwrote a stored point: counted as overwritten, not as another point written,
    # so the count matches what the store holds
    assert (st.written_points, st.overwritten_points, st.rejected_points) == (2, 1, 1)
    assert st.last_error is not None and "non-finite" in st.last_error
    health = store.health_batch(99, "demo").to_frame()
    assert isinstance(health, pd.DataFrame)
    assert dict(zip(health["metric"].astype(str), health["value"], strict=True)) == {
        "store.written_points": 2.0, "store.spooled_points": 0.0, "store.rejected_points": 1.0,
        "store.dropped_points": 0.0}
    assert set(health["sink"]) == {"embedded"}
    store.close()


def test_two_registries_share_one_store(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    a, b = SeriesRegistry(), SeriesRegistry()
    b.id("site.pue", site="x")  # different ids for the same series in the two registries
    store.write(ReadingBatch.of(1, [a.id("site.it_w", site="x")], [1.0], 0, a))
    store.write(ReadingBatch.of(2, [b.id("site.it_w", site="x")], [2.0], 0, b))
    assert store.query("site.it_w", 0, 10, site="x")["value"].tolist() == [1.0, 2.0]
    store.close()


def test_a_reader_queries_while_a_writer_writes(tmp_path: Path) -> None:
    import threading

    reg = SeriesRegistry()
    writer = EmbeddedStore(tmp_path)
    sid = reg.id("site.it_w", site="demo")
    writer.write(ReadingBatch.of(0, [sid], [0.0], 0, reg))
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        k = 1
        try:
            while not stop.is_set():
                writer.write(ReadingBatch.of(k, [sid], [float(k)], 0, reg))
                k += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=write)
    t.start()
    seen = []
    for _ in range(20):
        reader = EmbeddedStore(tmp_path)  # as `powerplane report` does, in its own connection
        seen.append(len(reader.query("site.it_w", 0, 2**62)))
        reader.close()
    stop.set()
    t.join()
    total = writer.stats().written_points
    writer.close()
    assert not errors
    assert seen == sorted(seen) and seen[0] >= 1 and seen[-1] <= total
