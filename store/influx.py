"""Writing to InfluxDB (2.x, 3.x, 1.8+ through /api/v2/write, 1.x through /write) and to
anything else that speaks the InfluxDB write API (VictoriaMetrics).

Every batch goes first to the durable ``Spool`` (``write`` returns once it is fsynced),
then a sender thread delivers the spool in order through influxdb-client's synchronous
write API (gzip on) and marks each request's fate explicitly:

- 2xx: acknowledged; the spool forgets it.
- 429 / 503: retried after ``Retry-After`` (seconds or HTTP date) or exponential backoff.
- 413: the request is split in halves on line boundaries until it fits.
- 401 / 403 / 404: a configuration problem (token, org, bucket), not the batch's fault:
  kept in the spool and retried with backoff, so fixing the token loses nothing.
- other 4xx (400 parse error, field-type conflict, 422): rejected — counted, logged with
  the offending line, reported as an ``Event``, never retried. A 400 "partial write" means
  the server stored the other lines.
- connection errors and other 5xx: retried with backoff; the spool holds the data.

influxdb-client's batching mode is not used: its background pipeline re-batches records
and retries out of order, so its callbacks cannot be tied to spool positions; the spool
is our batch queue instead, and every request's outcome is handled here.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import urllib3

from models.clock import Clock, SystemClock
from models.errors import StoreError
from models.events import Event, EventKind
from models.readings import ReadingBatch
from models.retry import Backoff, parse_retry_after
from store.base import StoreStats
from store.base import health_batch as _health_batch
from store.lineproto import LineProtocolError, distinct_times, encode_batch, event_line
from store.spool import Record, Spool

log = logging.getLogger(__name__)

Api = Literal["v2", "v1"]
EventHook = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class Response:
    """What a server said to one write request (status 0: no answer at all)."""

    status: int
    body: str = ""
    retry_after_s: float | None = None


class Transport:
    """Posts line protocol to a server; one implementation per API flavour."""

    def post(self, payload: bytes) -> Response:
        """Send ``payload``; never raises for HTTP or connection errors."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


GZIP_LEVEL = 1


def _body(payload: bytes, gzip_level: int) -> tuple[bytes, dict[str, str]]:
    """The request body and its Content-Encoding header (none at level 0)."""
    if gzip_level <= 0:
        return payload, {}
    return gzip.compress(payload, gzip_level), {"Content-Encoding": "gzip"}


class V2Transport(Transport):
    """influxdb-client's write service: ``POST /api/v2/write``, gzip (level 1 by default), ns precision.

    The client's own ``enable_gzip`` compresses at level 9 (about 30 MB/s here, most of
    a write's cost); level 1 runs at about 200 MB/s for 15 % more bytes on the wire.
    """

    def __init__(self, url: str, token: str, org: str, bucket: str, timeout_s: float,
                 gzip_level: int = GZIP_LEVEL) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.service.write_service import WriteService

        # retries=False: the sender owns retries, so that it sees every attempt's status.
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout_s * 1000), retries=False)
        self._service = WriteService(self._client.api_client)  # type: ignore[no-untyped-call]
        self._bucket = bucket
        self._org = org
        self._gzip_level = gzip_level

    def post(self, payload: bytes) -> Response:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        data, enc = _body(payload, self._gzip_level)
        try:
            self._service.post_write(  # type: ignore[no-untyped-call]
                org=self._org, bucket=self._bucket, body=data, precision=WritePrecision.NS,
                content_type="text/plain; charset=utf-8",
                **({"content_encoding": enc["Content-Encoding"]} if enc else {}))
        except ApiException as exc:
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
            headers: Any = exc.headers or {}
            return Response(int(exc.status or 0), body or str(exc.reason or ""),
                            parse_retry_after(headers.get("Retry-After"), time.time()))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Response(0, f"{type(exc).__name__}: {exc}")
        return Response(204)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


class V1Transport(Transport):
    """InfluxDB 1.x ``/write?db=&rp=`` (for 1.x before 1.8, which has no /api/v2)."""

    def __init__(self, url: str, token: str, bucket: str, timeout_s: float, gzip_level: int = GZIP_LEVEL) -> None:
        db, _, rp = bucket.partition("/")
        params = {"db": db, "precision": "ns"}
        if rp:
            params["rp"] = rp
        user, sep, password = token.partition(":")
        if sep:
            params.update(u=user, p=password)
        self._url = f"{url.rstrip('/')}/write?{urllib.parse.urlencode(params)}"
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout_s), retries=False)
        self._gzip_level = gzip_level

    def post(self, payload: bytes) -> Response:
        data, enc = _body(payload, self._gzip_level)
        try:
            r = self._http.request("POST", self._url, body=data, headers={**enc, "Content-Type": "text/plain"})
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Response(0, f"{type(exc).__name__}: {exc}")
        return Response(r.status, r.data.decode(errors="replace"),
                        parse_retry_after(r.headers.get("Retry-After"), time.time()))

    def close(self) -> None:
        self._http.clear()


_LINE_NO = re.compile(r"line[s()]*:?\s*(\d+)")
_CONFLICT = re.compile(r'field "([^"]+)" on measurement "([^"]+)"')
_DROPPED = re.compile(r"dropped=(\d+)")


def error_message(body: str) -> str:
    """The error text of a server's answer: InfluxDB wraps it in JSON (``error`` or ``message``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str):
                return str(doc[key]).strip()
    return body.strip()


def offending_line(payload: bytes, message: str) -> str | None:
    """The line of ``payload`` that a server's 4xx ``message`` is about, if it can be told."""
    lines = payload.decode(errors="replace").splitlines()
    m = _LINE_NO.search(message)
    if m and 1 <= int(m.group(1)) <= len(lines):
        return lines[int(m.group(1)) - 1]
    m = _CONFLICT.search(message)
    if m:
        field, meas = m.group(1), m.group(2)
        for ln in lines:
            if ln.startswith((meas + ",", meas + " ")) and (f" {field}=" in ln or f",{field}=" in ln):
                return ln
    for ln in lines:  # a parse error quotes the bad line
        if ln and ln in message:
            return ln
    return None


class InfluxSink:
    """A ``Sink`` for InfluxDB-compatible servers with a durable spool in front."""

    name = "influx"

    def __init__(self, url: str, token: str, org: str, bucket: str, *, spool_dir: Path,
                 spool_max_bytes: int = 1 << 30, batch_size: int = 5000, flush_interval_s: float = 1.0,
                 api: Api = "v2", site: str = "", timeout_s: float = 10.0, max_backoff_s: float = 30.0,
                 on_event: EventHook | None = None, transport: Transport | None = None,
                 gzip_level: int = GZIP_LEVEL, clock: Clock | None = None) -> None:
        self.url = url
        self.clock: Clock = clock if clock is not None else SystemClock()  # stamps the sink's own events
        self.site = site
        self.batch_size = int(batch_size)
        self.flush_interval_s = float(flush_interval_s)
        self.max_backoff_s = float(max_backoff_s)
        self.backoff = Backoff(base_s=0.1, max_s=self.max_backoff_s, jitter=0.5, retry_after_max_s=3600.0)
        self.on_event = on_event
        self.spool = Spool(spool_dir, spool_max_bytes)
        if transport is None:
            transport = (V1Transport(url, token, bucket, timeout_s, gzip_level) if api == "v1"
                         else V2Transport(url, token, org, bucket, timeout_s, gzip_level))
        self._transport = transport
        self._cv = threading.Condition()
        self._written = 0
        self._rejected = 0
        self._dropped = 0
        self._events = 0
        self._last_error: str | None = None
        self._flush_now = False
        self._closing = False
        self._failures = 0
        self._last_send = time.monotonic()
        self.requests = 0
        self._thread = threading.Thread(target=self._run, name="influx-sender", daemon=True)
        self._thread.start()

    # ---- Sink ---------------------------------------------------------------------------
    def write(self, batch: ReadingBatch) -> None:
        """Spool ``batch`` (fsynced) for delivery; count what cannot be encoded or spooled."""
        enc = encode_batch(batch)
        skipped = enc.skipped_non_finite + enc.skipped_bad_name
        if skipped:
            with self._cv:
                self._rejected += skipped
                self._last_error = enc.first_error or f"{enc.skipped_non_finite} non-finite values skipped"
        if enc.lines:
            self._spool(enc.data, enc.lines)

    def write_events(self, events: Sequence[Event]) -> None:
        """Spool ``events`` as ``events`` lines."""
        lines: list[str] = []
        for ev, ts in zip(events, distinct_times(events), strict=True):
            try:
                lines.append(event_line(ev, self.site, ts) + "\n")
            except LineProtocolError as exc:
                with self._cv:
                    self._rejected += 1
                    self._last_error = f"event {ev.kind}: {exc}"
        if lines:
            self._spool("".join(lines).encode(), len(lines))
            with self._cv:
                self._events += len(lines)

    def _spool(self, data: bytes, lines: int) -> None:
        if self._closing:
            raise StoreError(f"sink {self.url} is closed")
        if not self.spool.append(data, lines):
            with self._cv:
                self._dropped += lines
                self._last_error = (f"spool {self.spool.dir} full ({self.spool.pending_bytes:,} of "
                                    f"{self.spool.max_bytes:,} bytes): {lines} points dropped")
                first = self._dropped == lines
            (log.error if first else log.debug)("%s", self._last_error)
            self._alert(EventKind.SPOOL_FULL, "critical", self._last_error, float(lines))
            return
        with self._cv:
            if self.spool.pending_points >= self.batch_size:
                self._cv.notify_all()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Deliver now and wait up to ``timeout_s`` for the spool to empty (what remains stays spooled)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            self._flush_now = True
            self._cv.notify_all()
            while len(self.spool) and time.monotonic() < deadline and self._thread.is_alive():
                self._cv.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._flush_now = False
        if len(self.spool):
            log.warning("%s: %d points still spooled after flush (%s)", self.url, self.spool.pending_points,
                        self._last_error)

    def close(self) -> None:
        """Try to deliver for a moment, then stop; undelivered points stay in the spool."""
        if self._closing:
            return
        self.flush(min(2.0, self.flush_interval_s * 2))
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout=30)
        self._transport.close()
        self.spool.close()

    def stats(self) -> StoreStats:
        """Counters since opening (``spooled_points`` is what waits now)."""
        with self._cv:
            return StoreStats(self._written, self.spool.pending_points, self._rejected, self._dropped,
                              self._events, last_error=self._last_error)

    def health_batch(self, ts_ns: int, site: str) -> ReadingBatch:
        """``store.*`` readings of this sink."""
        return _health_batch(self.stats(), self.name, ts_ns, site)

    # ---- delivery -----------------------------------------------------------------------
    def _alert(self, kind: str, severity: Literal["warning", "error", "critical"], message: str,
               value: float) -> None:
        if self.on_event is None:
            return
        ev = Event(self.clock.now_ns(), kind, severity, "store", message, entity=self.name,
                   fields={"points": value})
        try:
            self.on_event(ev)
        except Exception:  # an alert hook must not stop delivery
            log.exception("store event hook failed")

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closing:
                    due = self._last_send + self.flush_interval_s - time.monotonic()
                    if len(self.spool) and (self._flush_now or due <= 0
                                            or self.spool.pending_points >= self.batch_size):
                        break
                    self._cv.wait(max(0.01, due) if len(self.spool) else 1.0)
                if self._closing:
                    return
            try:
                delay = self._deliver_records(self.spool.peek(self.batch_size))
            except (StoreError, OSError) as exc:  # the spool's disk failed: keep the data, try again
                with self._cv:
                    self._last_error = f"spool {self.spool.dir}: {exc}"
                log.error("%s", self._last_error)
                delay = self.max_backoff_s
            self._last_send = time.monotonic()
            with self._cv:
                self._cv.notify_all()
                if delay > 0:
                    self._cv.wait_for(lambda: self._closing, timeout=delay)

    def _deliver_records(self, recs: list[Record]) -> float:
        """Deliver ``recs`` as one request; seconds to wait before the next try (0 on success)."""
        payload = b"".join(self.spool.read(r) for r in recs)
        points = sum(r.points for r in recs)
        outcome = self._deliver(payload, points)
        if isinstance(outcome, float):
            return outcome
        written, rejected = outcome
        with self._cv:  # ack and count as one step: flush() and stats() never see one without the other
            self.spool.ack(recs[-1])
            self._written += written
            self._rejected += rejected
            if self._failures:
                log.info("%s: delivering again after %d failed attempts", self.url, self._failures)
            self._failures = 0
        return 0.0

    def _deliver(self, payload: bytes, points: int) -> tuple[int, int] | float:
        """``(written, rejected)`` once the server has decided, or a retry delay in seconds."""
        self.requests += 1
        r = self._transport.post(payload)
        if 200 <= r.status < 300:
            return points, 0
        if r.status == 413 and points > 1:
            lines = payload.splitlines(keepends=True)
            half = len(lines) // 2
            total = (0, 0)
            for part in (lines[:half], lines[half:]):
                # A half that then fails to deliver is retried whole with the record, and
                # the half already written is written again: identical points overwrite.
                res = self._deliver(b"".join(part), len(part))
                if isinstance(res, float):
                    return res
                total = (total[0] + res[0], total[1] + res[1])
            return total
        if 400 <= r.status < 500 and r.status not in (401, 403, 404, 429):
            return self._reject(payload, points, r)
        return self._retry_delay(r)

    def _reject(self, payload: bytes, points: int, r: Response) -> tuple[int, int]:
        text = error_message(r.body)
        line = offending_line(payload, text)
        m = _DROPPED.search(text)
        partial = "partial write" in text
        rejected = int(m.group(1)) if (m and partial) else points
        rejected = min(rejected, points)
        msg = f"HTTP {r.status}: {text[:500]}" + (f" (line: {line})" if line else "")
        with self._cv:
            self._last_error = msg
        log.error("%s rejected %d of %d points, not retried: %s", self.url, rejected, points, msg)
        self._alert(EventKind.STORE_REJECTED, "error", msg, float(rejected))
        return points - rejected, rejected

    def _retry_delay(self, r: Response) -> float:
        with self._cv:
            self._failures += 1
            n = self._failures
            what = "unreachable" if r.status == 0 else f"HTTP {r.status}"
            self._last_error = f"{self.url} {what}: {error_message(r.body)[:300]}"
        (log.error if n == 1 else log.debug)("%s; %d points spooled, retrying", self._last_error,
                                             self.spool.pending_points)
        return self.backoff.delay_s(n, retry_after_s=r.retry_after_s)
