"""The embedded telemetry store: one SQLite database in WAL mode.

Why SQLite: it is in the standard library (nothing to install or run), a committed
transaction survives a process crash and, with ``synchronous=FULL``, a power loss; WAL
lets the report read while the demo writes; and a ``(series, ts_ns)`` primary key makes
"one series over a time range" a single index range scan. Rows are written with
``executemany`` from the batch's columns — hundreds of thousands per second, far beyond
the demo's few thousand. The primary key also makes a replayed reading overwrite itself,
as it does in InfluxDB, instead of being stored twice.

Tables::

    series(id, metric, tags JSON, rating)          one row per series ever written
    readings(series, ts_ns, value, quality)        WITHOUT ROWID, key (series, ts_ns)
    events(ts_ns, kind, severity, source, entity, message, fields JSON)
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.errors import StoreError
from models.events import Event
from models.files import private_dir, touch_private
from models.readings import ReadingBatch, SeriesKey, SeriesRegistry, rating_of
from store.base import StoreStats
from store.base import health_batch as _health_batch

log = logging.getLogger(__name__)

DB_NAME = "telemetry.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    metric TEXT NOT NULL,
    tags TEXT NOT NULL,
    rating REAL,
    UNIQUE (metric, tags)
);
CREATE TABLE IF NOT EXISTS readings (
    series INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    value REAL NOT NULL,
    quality INTEGER NOT NULL,
    PRIMARY KEY (series, ts_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    source TEXT NOT NULL,
    entity TEXT,
    message TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ns);
"""


_MAX_IN = 10_000
_META = ("_series", "_metric", "_rating")  # tag keys beginning with "_" are reserved, as in InfluxDB


_rating = rating_of


def _tags_json(key: SeriesKey) -> str:
    return json.dumps(dict(key.tags), sort_keys=True, ensure_ascii=False)


class EmbeddedStore:
    """A ``Sink`` backed by SQLite under ``path`` (a directory), queryable into pandas."""

    name = "embedded"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            private_dir(self.path)
            # Created 0600 before SQLite opens it: its -wal and -shm files take the database's mode.
            touch_private(self.path / DB_NAME)
            self._db = sqlite3.connect(self.path / DB_NAME, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a returned write survives power loss
            self._db.execute("PRAGMA busy_timeout=10000")  # `powerplane report` may read while the demo writes
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open embedded store {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        self._maps: weakref.WeakKeyDictionary[SeriesRegistry, NDArray[np.int64]] = weakref.WeakKeyDictionary()
        self._written = 0
        self._overwritten = 0
        self._events = 0
        self._rejected = 0
        self._last_error: str | None = None
        self._closed = False

    # ---- writing ------------------------------------------------------------------------
    def _series_ids(self, batch: ReadingBatch) -> NDArray[np.int64]:
        reg = batch.registry
        table = self._maps.get(reg, np.empty(0, np.int64))
        if table.shape[0] < len(reg):
            table = np.concatenate([table, np.full(len(reg) - table.shape[0], -1, np.int64)])
        # Only the series this store has not seen yet need sorting out: an O(n) gather, not a
        # sort of every reading (0.1 s a period at 1M GPUs, bench/period.py).
        missing = np.unique(batch.series[table[batch.series] < 0])
        if missing.size:
            _, hi = reg.bounds()
            rows = []
            for sid in missing.tolist():
                key = reg.key(sid)
                rows.append((key.metric, _tags_json(key), _rating(key, float(hi[sid]))))
            self._db.executemany("INSERT OR IGNORE INTO series (metric, tags, rating) VALUES (?, ?, ?)", rows)
            for sid, (m, t, _) in zip(missing.tolist(), rows, strict=True):
                table[sid] = self._db.execute("SELECT id FROM series WHERE metric = ? AND tags = ?",
                                              (m, t)).fetchone()[0]
        self._maps[reg] = table
        return table[batch.series]

    def write(self, batch: ReadingBatch) -> None:
        """Commit ``batch`` (non-finite values are counted as rejected and skipped)."""
        if not len(batch):
            return
        finite = np.isfinite(batch.value)
        n_bad = int(len(batch) - finite.sum())
        if n_bad:
            batch = batch.select(finite)
        with self._lock:
            self._check_open()
            if n_bad:
                self._rejected += n_bad
                self._last_error = f"{n_bad} non-finite values skipped"
            if not len(batch):
                return
            try:
                self._db.execute("BEGIN")
                ids = self._series_ids(batch)
                rows = list(zip(ids.tolist(), batch.ts_ns.tolist(), batch.value.tolist(), batch.quality.tolist(),
                                strict=True))
                cur = self._db.executemany(
                    "INSERT OR IGNORE INTO readings (series, ts_ns, value, quality) VALUES (?, ?, ?, ?)", rows)
                added = cur.rowcount
                if added < len(rows):
                    # A point with the same series and time is overwritten, as InfluxDB does; it is
                    # counted as overwritten, not as another point written, so that the count
                    # matches what the store holds.
                    self._db.executemany("UPDATE readings SET value = ?, quality = ? WHERE series = ? AND ts_ns = ?",
                                         [(v, q, s_, t) for s_, t, v, q in rows])
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._last_error = f"sqlite: {exc}"
                raise StoreError(f"embedded store {self.path}: {exc}") from exc
            self._written += added
            self._overwritten += len(rows) - added

    def write_events(self, events: Sequence[Event]) -> None:
        """Commit ``events``."""
        if not events:
            return
        rows = [(int(e.ts_ns), e.kind, e.severity, e.source, e.entity, e.message,
                 json.dumps({k: float(v) for k, v in e.fields.items()}, sort_keys=True)) for e in events]
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._last_error = f"sqlite: {exc}"
                raise StoreError(f"embedded store {self.path}: {exc}") from exc
            self._events += len(rows)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._maps = weakref.WeakKeyDictionary()  # ids inserted in the rolled-back transaction are gone

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"embedded store {self.path} is closed")

    def flush(self, timeout_s: float = 10.0) -> None:
        """Nothing to wait for: every write is committed when it returns."""

    def close(self) -> None:
        """Checkpoint the WAL (if this store wrote) and close the database."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._written or self._events:  # a reader (the report) must not stall a running writer
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

    def stats(self) -> StoreStats:
        """Counters since opening."""
        return StoreStats(written_points=self._written, rejected_points=self._rejected,
                          written_events=self._events, overwritten_points=self._overwritten,
                          last_error=self._last_error)

    def health_batch(self, ts_ns: int, site: str) -> ReadingBatch:
        """``store.*`` readings of this store."""
        return _health_batch(self.stats(), self.name, ts_ns, site)

    # ---- reading ------------------------------------------------------------------------
    def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            self._check_open()
            return self._db.execute(sql, params).fetchall()

    def series(self, metric_name: str | None = None, **tags: str) -> pd.DataFrame:
        """Series stored (one column per tag, ``_series``, ``_metric``, ``_rating``) matching the filter."""
        if metric_name is None:
            rows = self._read("SELECT id, metric, tags, rating FROM series ORDER BY id", ())
        else:
            rows = self._read("SELECT id, metric, tags, rating FROM series WHERE metric = ? ORDER BY id",
                              (metric_name,))
        recs = []
        for sid, m, t, rating in rows:
            tag = json.loads(t)
            if all(tag.get(k) == v for k, v in tags.items()):
                recs.append({**tag, "_series": sid, "_metric": m, "_rating": rating})
        return pd.DataFrame.from_records(recs, columns=None if recs else list(_META))

    def query(self, metric: str, start_ns: int, end_ns: int, **tags: str) -> pd.DataFrame:
        """Readings of ``metric`` with ``start_ns <= ts < end_ns`` whose tags match ``tags``.

        Time-indexed (UTC, ``time``), one column per tag, then ``value`` and ``quality``.
        """
        ser = self.series(metric, **tags)
        tag_cols = [c for c in ser.columns if c not in _META]
        if ser.empty:
            empty = pd.DataFrame({**{c: pd.Series(dtype=object) for c in tag_cols},
                                  "value": pd.Series(dtype=np.float64), "quality": pd.Series(dtype=np.uint8)})
            empty.index = pd.DatetimeIndex([], tz="UTC", name="time")
            return empty
        ids = ser["_series"].astype(np.int64).tolist()
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(ids), _MAX_IN):  # SQLite bounds the number of parameters
            part = ids[i:i + _MAX_IN]
            rows += self._read(f"SELECT series, ts_ns, value, quality FROM readings WHERE series IN "
                               f"({','.join('?' * len(part))}) AND ts_ns >= ? AND ts_ns < ?",
                               [*part, int(start_ns), int(end_ns)])
        rows.sort(key=lambda r: (r[1], r[0]))
        c_sid, c_ts, c_val, c_q = zip(*rows, strict=True) if rows else ((), (), (), ())
        ts = np.array(c_ts, np.int64)
        pos = pd.Index(ser["_series"].astype(np.int64)).get_indexer(np.array(c_sid, np.int64))
        cols: dict[str, Any] = {c: ser[c].to_numpy(dtype=object)[pos] for c in tag_cols}
        cols["value"] = np.array(c_val, np.float64)
        cols["quality"] = np.array(c_q, np.uint8)
        return pd.DataFrame(cols, index=pd.DatetimeIndex(pd.to_datetime(ts, unit="ns", utc=True), name="time"))

    def events(self, start_ns: int, end_ns: int) -> pd.DataFrame:
        """Events with ``start_ns <= ts < end_ns``, time-indexed, ``fields`` as a dict column."""
        rows = self._read("SELECT ts_ns, kind, severity, source, entity, message, fields FROM events "
                          "WHERE ts_ns >= ? AND ts_ns < ? ORDER BY ts_ns", (int(start_ns), int(end_ns)))
        ts = np.array([r[0] for r in rows], np.int64)
        df = pd.DataFrame({"kind": [r[1] for r in rows], "severity": [r[2] for r in rows],
                           "source": [r[3] for r in rows], "entity": [r[4] for r in rows],
                           "message": [r[5] for r in rows], "fields": [json.loads(r[6]) for r in rows]},
                          index=pd.DatetimeIndex(pd.to_datetime(ts, unit="ns", utc=True), name="time"))
        return df

    def time_range(self) -> tuple[int, int] | None:
        """``(first_ts_ns, last_ts_ns)`` of all stored readings, or None when empty."""
        # Per-series min/max walk the primary key; a bare MIN(ts_ns) would scan the table.
        row = self._read("SELECT MIN(lo), MAX(hi) FROM (SELECT (SELECT MIN(ts_ns) FROM readings r "
                         "WHERE r.series = s.id) AS lo, (SELECT MAX(ts_ns) FROM readings r "
                         "WHERE r.series = s.id) AS hi FROM series s)", ())
        lo, hi = row[0]
        return None if lo is None else (int(lo), int(hi))
