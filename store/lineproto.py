"""Line protocol from columnar batches, in bulk.

One line per reading::

    <measurement>,<tag>=<v>,... <field>=<float>[,<field>_quality=<float>] <ts_ns>

Every field is always a float (``1.0``, never ``1i``), so a field can never change type
between writes (InfluxDB rejects such a write with a 400 "field type conflict").
Quality rides along as a sibling float field ``<field>_quality`` holding the
``models.readings.Quality`` bit flags, written only when they are not zero: a missing
``_quality`` field means GOOD. It cannot be a shared ``quality`` field, because two
metrics of one measurement with the same tags and timestamp (``power_w`` and
``current_a`` of one PDU) merge into one InfluxDB point and would overwrite each other's.

Escaping follows the line-protocol reference: measurement names escape comma and space;
tag keys, tag values and field keys escape comma, equals sign and space; string field
values escape double quote and backslash. Two things the syntax cannot carry are refused
when a series is first encoded (``LineProtocolError``): a line break in a name, and a name
ending in a backslash (the backslash would escape the delimiter that follows it).

Non-finite values (NaN, ±inf) have no line-protocol form; they are skipped and counted.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.events import Event
from models.readings import ReadingBatch, SeriesKey, SeriesRegistry


class LineProtocolError(ValueError):
    """A name cannot be represented in line protocol."""


_MEAS = str.maketrans({",": "\\,", " ": "\\ "})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
# A line break would end the line even inside quotes for some servers (VictoriaMetrics
# splits on it first), so it is written as the two characters backslash-n.
_STR = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def _check(name: str, what: str) -> None:
    if "\n" in name or "\r" in name:
        raise LineProtocolError(f"{what} {name!r} contains a line break")
    if name.endswith("\\"):
        raise LineProtocolError(f"{what} {name!r} ends with a backslash")
    if not name:
        raise LineProtocolError(f"empty {what}")


def escape_measurement(name: str) -> str:
    """A measurement name escaped for line protocol."""
    _check(name, "measurement")
    return name.translate(_MEAS)


def escape_key(name: str) -> str:
    """A tag key, tag value or field key escaped for line protocol."""
    _check(name, "key or tag value")
    return name.translate(_KEY)


def escape_string(value: str) -> str:
    """A string field value, quoted and escaped."""
    return '"' + value.translate(_STR) + '"'


def series_prefix(key: SeriesKey) -> tuple[str, str]:
    """``("measurement,tags field=", ",field_quality=")`` for one series."""
    measurement, _, field = key.metric.partition(".")
    tags = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in key.tags if v != "")
    f = escape_key(field)
    return f"{escape_measurement(measurement)}{tags} {f}=", f",{f}_quality="


_Arrays = tuple[NDArray[np.object_], NDArray[np.object_], NDArray[np.bool_]]


class _Prefixes:
    """Escaped prefixes of a registry's series, built once per series id.

    ``arrays`` (value prefix, quality prefix, unencodable flag per id) is replaced as one
    tuple, so a reader in another thread never sees arrays of different lengths.
    """

    def __init__(self) -> None:
        self.arrays: _Arrays = (np.empty(0, object), np.empty(0, object), np.empty(0, bool))
        self.errors: dict[int, str] = {}
        self.lock = threading.Lock()

    def extend(self, registry: SeriesRegistry) -> None:
        keys = registry.keys()
        value, quality, bad = self.arrays
        n_old, n = value.shape[0], len(keys)
        if n <= n_old:
            return
        val = np.empty(n - n_old, object)
        qual = np.empty(n - n_old, object)
        flag = np.zeros(n - n_old, bool)
        for i in range(n_old, n):
            try:
                val[i - n_old], qual[i - n_old] = series_prefix(keys[i])
            except LineProtocolError as exc:
                val[i - n_old], qual[i - n_old] = "", ""
                flag[i - n_old] = True
                self.errors[i] = str(exc)
        self.arrays = (np.concatenate([value, val]), np.concatenate([quality, qual]), np.concatenate([bad, flag]))


_CACHE: weakref.WeakKeyDictionary[SeriesRegistry, _Prefixes] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _prefixes(registry: SeriesRegistry) -> _Prefixes:
    with _CACHE_LOCK:
        p = _CACHE.get(registry)
        if p is None:
            p = _CACHE[registry] = _Prefixes()
    if p.arrays[0].shape[0] < len(registry):
        with p.lock:
            p.extend(registry)
    return p


@dataclass(frozen=True, slots=True)
class Encoded:
    """Line protocol of one batch and what could not be encoded."""

    data: bytes
    lines: int
    skipped_non_finite: int
    skipped_bad_name: int
    first_error: str | None = None


def encode_batch(batch: ReadingBatch) -> Encoded:
    """Line protocol for ``batch`` with counts of the readings that were skipped."""
    n = len(batch)
    if n == 0:
        return Encoded(b"", 0, 0, 0)
    p = _prefixes(batch.registry)
    pre_value, pre_quality, unencodable = p.arrays
    sid = batch.series
    if sid.min() < 0 or sid.max() >= pre_value.shape[0]:
        raise ValueError("batch refers to series ids unknown to its registry")
    finite = np.isfinite(batch.value)
    bad = unencodable[sid]
    keep = finite & ~bad
    n_nonfinite = int(n - finite.sum())
    n_bad = int((bad & finite).sum())
    first_error = None
    if n_bad:
        first_error = p.errors[int(sid[bad][0])]
    if not keep.all():
        sid = sid[keep]
        values = batch.value[keep]
        ts = batch.ts_ns[keep]
        q = batch.quality[keep]
    else:
        values, ts, q = batch.value, batch.ts_ns, batch.quality
    m = int(sid.shape[0])
    if m == 0:
        return Encoded(b"", 0, n_nonfinite, n_bad, first_error)
    pre = pre_value[sid].tolist()
    # repr(float) is the shortest string that round-trips exactly, and always has a
    # '.' or an exponent, so every value stays a float field.
    vals = list(map(repr, values.tolist()))
    tss = ts.tolist()
    qmask = q != 0
    if qmask.any():
        mid = np.full(m, "", object)
        qi = np.flatnonzero(qmask)
        mid[qi] = [a + repr(float(b)) for a, b in zip(pre_quality[sid[qi]].tolist(), q[qi].tolist(), strict=True)]
        text = "".join([f"{a}{b}{c} {d}\n" for a, b, c, d in zip(pre, vals, mid.tolist(), tss, strict=True)])
    else:
        text = "".join([f"{a}{b} {d}\n" for a, b, d in zip(pre, vals, tss, strict=True)])
    return Encoded(text.encode(), m, n_nonfinite, n_bad, first_error)


def encode(batch: ReadingBatch) -> bytes:
    """Line protocol for ``batch``: one line per finite reading, ns timestamps."""
    return encode_batch(batch).data


def event_line(ev: Event, site: str, ts_ns: int | None = None) -> str:
    """The ``events`` line of one event (schema in ``models/events.py``), at ``ts_ns`` if given."""
    tags = [("site", site), ("kind", ev.kind), ("severity", ev.severity), ("source", ev.source)]
    if ev.entity:
        tags.append(("entity", ev.entity))
    tag_text = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in tags)
    fields = [f"message={escape_string(ev.message)}"]
    for k, v in sorted(ev.fields.items()):
        fv = float(v)
        if np.isfinite(fv):
            fields.append(f"{escape_key(k)}={fv!r}")
    return f"events{tag_text} {','.join(fields)} {int(ev.ts_ns if ts_ns is None else ts_ns)}"


def encode_events(events: Sequence[Event], site: str) -> bytes:
    """Line protocol of ``events`` in the ``events`` measurement.

    InfluxDB keeps one point per measurement, tag set and timestamp: a second event of the
    same kind and entity at the same nanosecond would silently replace the first. Such
    events are written 1 ns apart (in the order given), so every event stays a point.
    """
    return "".join(event_line(ev, site, ts) + "\n" for ev, ts in zip(events, distinct_times(events), strict=True)
                   ).encode()


def distinct_times(events: Sequence[Event]) -> list[int]:
    """Each event's timestamp, events of the same kind and entity at the same nanosecond 1 ns apart."""
    seen: dict[tuple[str, str, str, str | None, int], int] = {}
    out = []
    for ev in events:
        key = (ev.kind, ev.severity, ev.source, ev.entity, int(ev.ts_ns))
        k = seen.get(key, 0)
        seen[key] = k + 1
        out.append(int(ev.ts_ns) + k)
    return out
