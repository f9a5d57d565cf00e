"""Reading batches on the wire: what a collector process publishes and the controller takes in.

A batch travels as one compact JSON message on ``<prefix>/<site>/readings/<source>``::

    {"v": 1, "site": "demo", "src": "collect-0", "seq": 17,
     "series": [["power.power_w", {"site": "demo", "level": "rack", "id": "r01"}, 600000.0], ...],
     "ts_ns": "<b64 int64>", "sid": "<b64 uint32: index into series>", "value": "<b64 float64>",
     "quality": "<b64 uint8>",
     "events": [{"ts_ns", "kind", "severity", "source", "message", "entity", "fields"}, ...]}

Each series is named in full (metric, tags, rating) in every message, so a message can be
read without any state and a receiver interns it in its own registry. Pure functions,
no I/O: this is the edge model both sides share. ``decode`` never raises: a message that
does not fit the model is refused whole (counted by reason); readings that fit the model
but not the schema (an unknown metric, a value outside its range, a timestamp outside the
window around now) are refused one by one, and the good ones kept.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta

from models.events import Event
from models.readings import Quality, ReadingBatch, Reason, SeriesRegistry, check_ranges, metrics, rating_of

VERSION: Literal[1] = 1
MAX_BATCH_BYTES = 4 << 20
MAX_SERIES = 50_000
MAX_READINGS = 500_000
TIMESTAMP_WINDOW_S = 3600.0
_QUALITY_BITS = int(sum(Quality))

Name = Annotated[str, Meta(min_length=1, max_length=128)]
Tags = Annotated[dict[Annotated[str, Meta(min_length=1, max_length=32)], Name], Meta(max_length=12)]
Rating = Annotated[float, Meta(gt=0, le=1e12)]


class EventMsg(msgspec.Struct, forbid_unknown_fields=True):
    """One event as carried in a batch."""

    ts_ns: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    kind: Annotated[str, Meta(pattern=r"^[a-z_]{1,48}$")]
    severity: Literal["info", "warning", "error", "critical"]
    source: Name
    message: Annotated[str, Meta(max_length=2000)]
    entity: Name | None = None
    fields: Annotated[dict[Annotated[str, Meta(max_length=32)], float], Meta(max_length=16)] = {}


class BatchMsg(msgspec.Struct, forbid_unknown_fields=True):
    """A reading batch on the wire (see the module docstring)."""

    v: Literal[1]
    site: Name
    src: Name
    seq: Annotated[int, Meta(ge=0, le=2**53)]
    series: Annotated[list[tuple[Name, Tags, Rating | None]], Meta(max_length=MAX_SERIES)]
    ts_ns: str
    sid: str
    value: str
    quality: str
    events: Annotated[list[EventMsg], Meta(max_length=10_000)] = []


_DEC = msgspec.json.Decoder(BatchMsg)
_ENC = msgspec.json.Encoder()


class Refused(enum.StrEnum):
    """Why a whole message was refused."""

    MALFORMED = "malformed"
    WRONG_SITE = "wrong_site"
    TOO_LARGE = "too_large"
    REGISTRY_FULL = "registry_full"


def encode(batch: ReadingBatch, *, site: str, src: str, seq: int, events: Sequence[Event] = ()) -> bytes:
    """One message for ``batch`` (and ``events``)."""
    reg = batch.registry
    uniq, inv = np.unique(batch.series, return_inverse=True)
    _lo, hi = reg.bounds()
    series = []
    for sid in uniq.tolist():
        key = reg.key(sid)
        series.append((key.metric, dict(key.tags), rating_of(key, float(hi[sid]))))
    evs = [EventMsg(e.ts_ns, e.kind, e.severity, e.source, e.message[:2000], e.entity,
                    {k: float(v) for k, v in list(e.fields.items())[:16] if np.isfinite(v)}) for e in events]
    return _ENC.encode(BatchMsg(VERSION, site, src, seq, series, _b64(batch.ts_ns, "<i8"),
                                _b64(inv.astype(np.uint32), "<u4"), _b64(batch.value, "<f8"),
                                _b64(batch.quality, "u1"), evs))


def _b64(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def _unb64(text: str, dtype: str) -> np.ndarray | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    dt = np.dtype(dtype)
    if len(raw) % dt.itemsize:
        return None
    return np.frombuffer(raw, dt)


@dataclass(frozen=True, slots=True, eq=False)
class Decoded:
    """What one message gave: the good readings, its events, and what was refused by reason."""

    batch: ReadingBatch
    events: list[Event]
    src: str
    seq: int
    refused: Refused | None  # the whole message, or None
    rejected: Counter[str]  # readings refused one by one


class SeriesCache:
    """Interns wire series in a registry, at most ``max_series`` of them (an attacker's unique tags
    must not grow memory without bound)."""

    def __init__(self, registry: SeriesRegistry, max_series: int = 2_000_000) -> None:
        self.registry = registry
        self.max_series = max_series
        self._known = frozenset(metrics())
        self._ids: dict[tuple[str, tuple[tuple[str, str], ...], float | None], int] = {}

    def sid(self, metric_name: str, tags: dict[str, str], rating: float | None) -> int:
        """The registry id, or -1 for an unknown metric, -2 when the cache is full."""
        key = (metric_name, tuple(sorted(tags.items())), rating)
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        if metric_name not in self._known:
            return -1
        if len(self._ids) >= self.max_series:
            return -2
        sid = self.registry.id(metric_name, rating, **tags)
        self._ids[key] = sid
        return sid


def decode(payload: bytes, cache: SeriesCache, *, site: str, now_ns: int,
           window_s: float = TIMESTAMP_WINDOW_S, max_age_s: float | None = None) -> Decoded:
    """Open one message (see the module docstring); never raises. Readings may lie ``window_s`` ahead
    of ``now_ns`` and ``max_age_s`` (default ``window_s``) behind it: a store writer working off a
    backlog accepts older readings than the controller plans on."""
    reg = cache.registry
    empty = ReadingBatch.empty(reg)
    if len(payload) > MAX_BATCH_BYTES:
        return Decoded(empty, [], "", 0, Refused.TOO_LARGE, Counter())
    try:
        m = _DEC.decode(payload)
    except msgspec.MsgspecError:
        return Decoded(empty, [], "", 0, Refused.MALFORMED, Counter())
    if m.site != site:
        return Decoded(empty, [], m.src, m.seq, Refused.WRONG_SITE, Counter())
    ts = _unb64(m.ts_ns, "<i8")
    idx = _unb64(m.sid, "<u4")
    val = _unb64(m.value, "<f8")
    q = _unb64(m.quality, "u1")
    if ts is None or idx is None or val is None or q is None or not (ts.size == idx.size == val.size == q.size) \
            or ts.size > MAX_READINGS or (idx.size and int(idx.max()) >= len(m.series)):
        return Decoded(empty, [], m.src, m.seq, Refused.MALFORMED, Counter())
    sids = np.fromiter((cache.sid(name, tags, rating) for name, tags, rating in m.series), np.int64,
                       len(m.series))
    rejected: Counter[str] = Counter()
    per = sids[idx] if idx.size else np.zeros(0, np.int64)
    ok = per >= 0
    if (~ok).any():
        rejected["unknown_metric"] += int((per == -1).sum())
        rejected["registry_full"] += int((per == -2).sum())
    win = int(window_s * 1e9)
    age = int((window_s if max_age_s is None else max_age_s) * 1e9)
    in_window = (ts >= now_ns - age) & (ts <= now_ns + win)
    rejected[Reason.TIMESTAMP.name.lower()] += int((ok & ~in_window).sum())
    ok &= in_window
    bad_q = (q & ~np.uint8(_QUALITY_BITS)) != 0
    rejected["quality"] += int((ok & bad_q).sum())
    ok &= ~bad_q
    batch = ReadingBatch(ts[ok].astype(np.int64), per[ok].astype(np.int32), val[ok].astype(np.float64),
                         q[ok].astype(np.uint8), reg)
    reasons = check_ranges(batch)
    if reasons.any():
        for r, n in zip(*np.unique(reasons[reasons > 0], return_counts=True), strict=True):
            rejected[Reason(int(r)).name.lower()] += int(n)
        batch = batch.select(reasons == 0)
    events = [Event(e.ts_ns, e.kind, e.severity, e.source, e.message, e.entity,
                    {k: v for k, v in e.fields.items() if np.isfinite(v)})
              for e in m.events if -age <= e.ts_ns - now_ns <= win]
    if len(events) < len(m.events):
        rejected["event_timestamp"] += len(m.events) - len(events)
    return Decoded(batch, events, m.src, m.seq, None, +rejected)
