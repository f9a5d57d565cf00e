"""Webhooks: signed JSON POSTs with retries, a bounded queue per endpoint and a dead letter.

Delivery is at least once, in order per endpoint:

* ``WebhookSender.put`` only appends to a bounded in-memory queue (never blocks the
  control loop); one worker thread per endpoint sends the queue head until it is
  accepted or given up, then the next, so order holds except around dead-lettered events.
* Connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and
  jitter (``Retry-After`` wins when the endpoint sends one, capped); any other 4xx or a
  redirect is permanent (retrying the same signed body cannot help).
* An event that is given up (``max_tries``, permanent failure, queue full, shutdown)
  goes to the dead-letter file, one JSON line each, fsync'd by one writer thread::

      {"time": RFC 3339, "time_ns", "url", "reason": "max_tries|permanent|queue full|shutdown",
       "error": "<last error>", "tries": N, "payload": {...}}

  The file is created 0600 in directories created 0700 (models/files.py).
* Secrets in a webhook URL never reach a log line or a dead letter: ``redact_url`` masks
  the userinfo (``https://***@host/``) and every query value (``?token=***``); the dead
  letter's ``url`` is that redacted form. Replay resolves the real URL — from ``--url``,
  or from the site's ``[[hooks.webhooks]]`` (``powerplane hooks replay --site``) — by
  comparing redacted forms, so a dead letter is replayable without holding a secret.
  (Path segments are not treated as secrets: put a token in the query or userinfo, or
  rely on the HMAC signature, which is what it is for.)

* On overflow the **oldest** queued event is dead-lettered: what a scheduler needs is
  the current state (caps, DR, moves now), and the queue stays a contiguous, ordered tail
  of the stream; the older events are not lost — ``replay`` re-sends them.
* ``close(timeout_s)`` keeps delivering until the timeout, then dead-letters the rest.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from controllers.hooks.payloads import encode, rfc3339, signed_headers
from models.errors import ConfigError
from models.files import open_private, private_dir
from models.retry import Backoff, parse_retry_after
from models.site import Webhook

log = logging.getLogger("powerplane.hooks")

MIN_SECRET_BYTES = 16
RETRY_STATUSES = frozenset({408, 429})
REASON_MAX_TRIES = "max_tries"
REASON_PERMANENT = "permanent"
REASON_QUEUE_FULL = "queue full"
REASON_SHUTDOWN = "shutdown"


# ---- secrets ----------------------------------------------------------------------------
MASK = "***"


def redact_url(url: str) -> str:
    """``url`` fit for logs and dead letters: userinfo and every query value masked, no fragment.

    Idempotent (a redacted URL redacts to itself), so old dead letters that hold a full URL
    and new ones compare equal after redaction.
    """
    try:
        u = urlsplit(url.strip())
        host = u.hostname or ""
        port = u.port
    except ValueError:  # e.g. a port that is not a number: show nothing we cannot parse
        return MASK
    netloc = (f"{MASK}@" if "@" in u.netloc else "") + (f"[{host}]" if ":" in host else host)
    if port is not None:
        netloc += f":{port}"
    query = urlencode([(k, MASK) for k, _ in parse_qsl(u.query, keep_blank_values=True)], safe="*")
    return urlunsplit((u.scheme, netloc, u.path.rstrip("/") or "/", query, ""))


def parse_secret(text: str, where: str, key: str = "") -> bytes:
    """A webhook secret from its text: the stripped UTF-8 bytes, at least 16 of them."""
    raw = text.strip().encode()
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(where, [(key, f"webhook secret is {len(raw)} bytes; at least {MIN_SECRET_BYTES} needed")])
    return raw


def read_secret_file(path: str | Path, key: str = "") -> bytes:
    """The secret held in ``path``; a ConfigError naming the file if unreadable or short."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), [(key, f"cannot read the webhook secret: {exc.strerror}")]) from exc
    return parse_secret(text, str(p), key)


def load_secret(hook: Webhook, key: str, where: str = "site") -> bytes:
    """The secret of ``hook`` (``secret_file`` first, then ``secret_env``); ``key`` is its key path."""
    if hook.secret_file:
        return read_secret_file(hook.secret_file, f"{key}.secret_file")
    if hook.secret_env:
        text = os.environ.get(hook.secret_env)
        if not text:
            raise ConfigError(f"${hook.secret_env}", [(f"{key}.secret_env", "environment variable is not set")])
        return parse_secret(text, f"${hook.secret_env}", f"{key}.secret_env")
    raise ConfigError(where, [(key, "webhook has no secret: set secret_file or secret_env")])


# ---- one attempt, one delivery ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST came to."""

    status: int | None  # None: no HTTP answer (connection error, timeout)
    error: str  # "" when accepted
    retry: bool
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the endpoint accepted the event (2xx)."""
        return self.status is not None and 200 <= self.status < 300


def _scrub(text: str, url: str) -> str:
    """``text`` with the secrets of ``url`` (userinfo, query values) masked: errors may quote the URL."""
    try:
        u = urlsplit(url)
        secrets = [u.username, u.password, *(v for _, v in parse_qsl(u.query))]
    except ValueError:
        return text
    for s in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(s, MASK)
    return text


def post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Attempt:
    """POST ``body`` once; classify the outcome (never raises for network or HTTP errors)."""
    u = urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    try:
        conn = cls(u.hostname or "localhost", u.port, timeout=timeout_s)
    except ValueError as exc:  # a port that is not a number
        return Attempt(None, _scrub(f"bad URL: {exc}", url), False)
    try:
        conn.request("POST", path, body=body, headers=dict(headers))
        resp = conn.getresponse()
        text = resp.read(4096).decode(errors="replace").strip()
        status = resp.status
        if 200 <= status < 300:
            return Attempt(status, "", False)
        err = f"HTTP {status}" + (f": {text[:200]}" if text else "")
        if status in RETRY_STATUSES or status >= 500:
            return Attempt(status, err, True, parse_retry_after(resp.getheader("Retry-After"), time.time()))
        return Attempt(status, err, False)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a malformed URL
        return Attempt(None, _scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, url), True)
    finally:
        conn.close()


def webhook_backoff(**kw: Any) -> Backoff:
    """Webhooks' back-off: 0.5 s doubling to 30 s, each wait shortened by up to half at random."""
    return Backoff(**{"base_s": 0.5, "max_s": 30.0, "jitter": 0.5, **kw})


@dataclass(frozen=True, slots=True)
class Delivery:
    """The end of one event's delivery: accepted, or given up and why."""

    ok: bool
    tries: int
    error: str
    reason: str = ""  # when not ok: max_tries, permanent or shutdown


def _sleep(delay_s: float) -> bool:
    time.sleep(delay_s)
    return True


def deliver(url: str, secret: bytes, payload: Mapping[str, Any], *, max_tries: int, timeout_s: float,
            backoff: Backoff, wait: Callable[[float], bool] | None = None,
            on_retry: Callable[[Attempt], None] | None = None,
            now_s: Callable[[], float] = time.time) -> Delivery:
    """Send one event until accepted or given up; ``wait(s)`` sleeps and returns False to abort."""
    body = encode(payload)
    waiter = wait or _sleep
    tries = 0
    last = Attempt(None, "not sent", True)
    while tries < max_tries:
        tries += 1
        # A fresh timestamp and signature per attempt: a retry minutes later must not look replayed.
        last = post(url, body, signed_headers(secret, payload, body, int(now_s())), timeout_s)
        if last.ok:
            return Delivery(True, tries, "")
        if not last.retry:
            return Delivery(False, tries, last.error, REASON_PERMANENT)
        if tries >= max_tries:
            break
        if on_retry is not None:
            on_retry(last)
        if not waiter(backoff.delay_s(tries, retry_after_s=last.retry_after_s)):
            return Delivery(False, tries, last.error, REASON_SHUTDOWN)
    return Delivery(False, tries, last.error, REASON_MAX_TRIES)


# ---- the dead letter ----------------------------------------------------------------------
def dead_letter_record(payload: Mapping[str, Any], url: str, reason: str, error: str, tries: int,
                       time_ns: int | None = None) -> dict[str, Any]:
    """One dead-letter line: the payload intact, where it was going (redacted) and why it was given up."""
    t = time.time_ns() if time_ns is None else time_ns
    return {"time": rfc3339(t), "time_ns": t, "url": redact_url(url), "reason": reason, "error": error,
            "tries": tries, "payload": dict(payload)}


def read_dead_letter(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a dead-letter file; a torn last line (crash mid-write) is skipped."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not a dead-letter record, skipped", path, n)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("payload"), dict):
                yield rec


class DeadLetter:
    """Appends records to a JSON-lines file from one writer thread; fsync after every batch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written = 0
        self.errors = 0
        self._pending: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hooks-dead-letter", daemon=True)
            self._thread.start()

    def add(self, record: dict[str, Any]) -> None:
        """Queue one record for writing (never blocks on disk; written inline once closed)."""
        with self._cond:
            if not self._closed and self._thread is not None:
                self._pending.append(record)
                self._cond.notify()
                return
        self.write([record])

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                batch, self._pending = self._pending, []
                closed = self._closed
            if batch:
                self.write(batch)
            if closed and not batch:
                return

    def write(self, batch: list[dict[str, Any]]) -> None:
        """Append ``batch`` now, synchronously, and fsync (a new file is 0600, new directories 0700)."""
        try:
            private_dir(self.path.parent)
            with open_private(self.path, "a") as f:
                f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in batch)
                f.flush()
                os.fsync(f.fileno())
            self.written += len(batch)
        except OSError as exc:
            # Nowhere left to put them: say so loudly, with the ids, rather than drop them quietly.
            self.errors += len(batch)
            ids = ", ".join(str(r["payload"].get("id")) for r in batch[:10])
            log.error("hooks: cannot write %d events to the dead letter %s (%s): %s", len(batch), self.path,
                      exc.strerror, ids)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is pending and stop the writer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:  # the thread did not finish in time: write the rest here
            rest, self._pending = self._pending, []
        if rest:
            self.write(rest)


# ---- one endpoint -------------------------------------------------------------------------
@dataclass
class SinkStats:
    """Counters of one sink (webhook, MQTT, Slurm, Kubernetes)."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    failed: int = 0  # adapters: actions that errored; webhooks: given-up events (= dead_lettered)
    dropped: int = 0  # adapters: events dropped on queue overflow (logged)
    queue_depth: int = 0
    last_error: str = ""


class WebhookSender:
    """Delivers payloads to one URL from a bounded queue on its own thread (see module doc)."""

    def __init__(self, url: str, secret: bytes, dead_letter: DeadLetter, *, max_tries: int = 6,
                 timeout_s: float = 5.0, kinds: frozenset[str] = frozenset(), queue_size: int = 1000,
                 backoff: Backoff | None = None, name: str | None = None) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.url = url
        self.name = name or redact_url(url)  # the name goes into logs and stats
        self.kinds = kinds
        self.max_tries = max_tries
        self.timeout_s = timeout_s
        self.backoff = backoff or webhook_backoff()
        self.dead_letter = dead_letter
        self._secret = secret
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._stopping = False
        self._abort = threading.Event()
        self._in_flight: dict[str, Any] | None = None
        self._orphaned = False
        self._thread: threading.Thread | None = None
        self._stats = SinkStats()
        self._failing = False

    def accepts(self, kind: str) -> bool:
        """Whether this endpoint subscribed to ``kind`` (no ``kinds``: every hook kind)."""
        return not self.kinds or kind in self.kinds

    def start(self) -> None:
        """Start the delivery thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"hooks-webhook-{self.name}", daemon=True)
            self._thread.start()

    def put(self, payload: dict[str, Any]) -> bool:
        """Queue one payload; O(1), never blocks. False if the oldest had to be dead-lettered."""
        evicted = None
        with self._cond:
            if self._stopping:
                evicted = payload
            else:
                if len(self._queue) >= self._queue_size:
                    evicted = self._queue.popleft()
                self._queue.append(payload)
                self._cond.notify()
        if evicted is not None:
            self._give_up(evicted, REASON_SHUTDOWN if evicted is payload else REASON_QUEUE_FULL,
                          "sender closed" if evicted is payload else f"queue of {self._queue_size} full", 0)
            return False
        return True

    def _give_up(self, payload: dict[str, Any], reason: str, error: str, tries: int) -> None:
        self.dead_letter.add(dead_letter_record(payload, self.url, reason, error, tries))
        with self._cond:
            self._stats.dead_lettered += 1
            self._stats.failed += 1
            self._stats.last_error = error

    def _wait(self, delay_s: float) -> bool:
        return not self._abort.wait(delay_s)

    def _on_retry(self, attempt: Attempt) -> None:
        with self._cond:
            self._stats.retried += 1
            self._stats.last_error = attempt.error
        if not self._failing:
            self._failing = True
            log.error("hooks: %s: %s (retrying)", self.name, attempt.error)
        else:
            log.debug("hooks: %s: %s (retrying)", self.name, attempt.error)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue or self._abort.is_set():
                    return
                payload = self._in_flight = self._queue.popleft()
            if self._abort.is_set():
                res = Delivery(False, 0, "not sent before the stop timeout", REASON_SHUTDOWN)
            else:
                res = deliver(self.url, self._secret, payload, max_tries=self.max_tries, timeout_s=self.timeout_s,
                              backoff=self.backoff, wait=self._wait, on_retry=self._on_retry)
            with self._cond:
                self._in_flight = None
                orphaned = self._orphaned
                if res.ok:
                    self._stats.delivered += 1
            if res.ok:
                if self._failing:
                    self._failing = False
                    log.info("hooks: %s: delivering again", self.name)
            elif not orphaned:  # close() already dead-lettered it
                log.log(logging.ERROR if res.reason != REASON_SHUTDOWN else logging.WARNING,
                        "hooks: %s: event %s dead-lettered after %d tries (%s): %s", self.name,
                        payload.get("id"), res.tries, res.reason, res.error)
                self._give_up(payload, res.reason, res.error, res.tries)
            if orphaned:
                return

    def stats(self) -> SinkStats:
        """A snapshot of the counters and the current queue depth."""
        with self._cond:
            s = SinkStats(**vars(self._stats))
            s.queue_depth = len(self._queue) + (self._in_flight is not None)
        return s

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout_s``, dead-letter the rest, stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        t = self._thread
        if t is not None:
            t.join(max(0.0, timeout_s))
            self._abort.set()  # stop retrying: backoff waits return at once
            t.join(min(self.timeout_s, 1.0))
        with self._cond:
            rest = list(self._queue)
            self._queue.clear()
            in_flight = self._in_flight if t is not None and t.is_alive() else None
            if in_flight is not None:
                self._orphaned = True  # the thread is stuck in a request; it must not dead-letter it again
        if in_flight is not None:
            rest.insert(0, in_flight)
        for p in rest:
            self._give_up(p, REASON_SHUTDOWN, "not delivered before the stop timeout", 0)
        if rest:
            log.warning("hooks: %s: %d events dead-lettered at shutdown", self.name, len(rest))


# ---- replay -------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    """What a replay came to: counts, and the records that failed again."""

    delivered: int = 0
    skipped: int = 0  # records for another URL
    failed: list[dict[str, Any]] = field(default_factory=list)


def same_endpoint(a: str, b: str) -> bool:
    """Whether two URLs (either may be redacted) name the same endpoint, as far as redaction lets us see."""
    return redact_url(a) == redact_url(b)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a replay may send: the real URL and its secret."""

    url: str
    secret: bytes


def replay_to(path: str | Path, endpoints: list[Endpoint], *, any_url: bool = False, max_tries: int = 3,
              timeout_s: float = 5.0, backoff: Backoff | None = None) -> ReplayResult:
    """Re-send the events of a dead-letter file, in file order, with their original ids.

    A record goes to the endpoint whose redacted URL matches the record's (``same_endpoint``);
    with ``any_url`` records that match none go to the first endpoint. The file is not
    changed; the records that fail again are returned (``failed``), updated as new
    dead-letter records, for the caller to write out.
    """
    out = ReplayResult()
    b = backoff or webhook_backoff()
    for rec in read_dead_letter(path):
        ep = next((e for e in endpoints if same_endpoint(str(rec.get("url", "")), e.url)), None)
        if ep is None and any_url and endpoints:
            ep = endpoints[0]
        if ep is None:
            out.skipped += 1
            continue
        res = deliver(ep.url, ep.secret, rec["payload"], max_tries=max_tries, timeout_s=timeout_s, backoff=b)
        if res.ok:
            out.delivered += 1
        else:
            try:
                tries = int(rec.get("tries", 0)) + res.tries
            except (TypeError, ValueError):
                tries = res.tries
            out.failed.append(dead_letter_record(rec["payload"], ep.url, res.reason, res.error, tries))
    return out


def replay(path: str | Path, url: str, secret: bytes, *, any_url: bool = False, max_tries: int = 3,
           timeout_s: float = 5.0, backoff: Backoff | None = None) -> ReplayResult:
    """Re-send the records of a dead-letter file that were meant for ``url`` (all of them with ``any_url``)."""
    return replay_to(path, [Endpoint(url, secret)], any_url=any_url, max_tries=max_tries, timeout_s=timeout_s,
                     backoff=backoff)


def write_dead_letter(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Append ``records`` to a dead-letter file now (fsync'd)."""
    DeadLetter(path).write(records)
