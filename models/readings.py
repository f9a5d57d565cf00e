"""Reading schema: metrics with units and valid ranges, quality flags, and columnar batches.

A metric is ``measurement.field`` (``power.power_w``), which is exactly where it lands in
InfluxDB. A *series* is a metric plus its tags (``site``, ``level``, ``id``...). Series are
interned once in a ``SeriesRegistry`` when a read plan is built; a ``ReadingBatch`` is then
four numpy columns — ``ts_ns`` (int64), ``series`` (int32), ``value`` (float64),
``quality`` (uint8) — and never one Python object per value.

Valid ranges are absolute (``lo``/``hi``) or relative to the rating of the entity the
series belongs to (``hi_rated``: a rack's power may read up to 1.2 x its rated power).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray


class Quality(enum.IntFlag):
    """Quality of a stored value (bit flags; 0 is good)."""

    GOOD = 0
    UNCERTAIN = 1  # the device flagged the value as uncertain
    STALE = 2  # carried forward from an earlier poll
    ESTIMATED = 4  # computed rather than measured (e.g. sum of children)
    COUNTER_RESET = 8  # first value after a counter reset or wrap
    SIMULATED = 16  # produced by the digital twin's in-process path, not a protocol


class Reason(enum.IntEnum):
    """Why a value was rejected (0 means accepted)."""

    OK = 0
    NOT_FINITE = 1  # NaN or infinity
    BELOW_RANGE = 2
    ABOVE_RANGE = 3
    STUCK = 4  # identical for longer than the metric allows
    COUNTER_DECREASE = 5  # a counter went backwards without a recognised reset
    DEVICE_BAD = 6  # the device itself marked the value bad
    DECODE = 7  # the raw bytes / payload could not be decoded
    NOT_IMPLEMENTED = 8  # the device's "not implemented" sentinel (e.g. SunSpec 0x8000)
    TIMESTAMP = 9  # the reading's own timestamp lies outside the accepted window around now
    ABSENT = 10  # the profile asks for it, the device has no such object (a column it lacks)


Kind = Literal["gauge", "counter", "state"]


class MetricKind(enum.IntEnum):
    """A metric's kind as a small integer, for per-series arrays (``Metric.kind`` names it)."""

    GAUGE = 0
    COUNTER = 1
    STATE = 2

    @classmethod
    def of(cls, kind: Kind) -> MetricKind:
        """The member for a ``Kind`` name."""
        return cls[kind.upper()]


@dataclass(frozen=True, slots=True)
class Metric:
    """One field of one measurement, with its unit and valid range."""

    measurement: str
    field: str
    unit: str
    kind: Kind
    lo: float
    hi: float
    hi_rated: float | None = None  # upper bound as a multiple of the entity's rating
    description: str = ""

    @property
    def name(self) -> str:
        """``measurement.field``."""
        return f"{self.measurement}.{self.field}"

    def bounds(self, rating: float | None) -> tuple[float, float]:
        """Valid ``(lo, hi)`` for an entity with ``rating`` (same unit as the metric)."""
        hi = self.hi
        if self.hi_rated is not None and rating is not None and np.isfinite(rating):
            hi = min(hi, self.hi_rated * rating)
        return self.lo, hi


_INF = float("inf")
_METRICS: dict[str, Metric] = {}


def register_metric(m: Metric) -> Metric:
    """Add a metric to the schema (idempotent for an identical definition)."""
    old = _METRICS.get(m.name)
    if old is not None and old != m:
        raise ValueError(f"metric {m.name} already registered differently")
    _METRICS[m.name] = m
    return m


def metric(name: str) -> Metric:
    """Look up a registered metric by ``measurement.field``."""
    try:
        return _METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}") from None


def metrics() -> Mapping[str, Metric]:
    """All registered metrics."""
    return dict(_METRICS)


for _m in (
    # power: every metered point of the power chain (tags: site, level, id[, phase, outlet])
    Metric("power", "power_w", "W", "gauge", 0.0, 5e9, 1.2, "active power"),
    Metric("power", "servers_w", "W", "gauge", 0.0, 5e9, None, "a rack's servers summed, from their agents"),
    Metric("power", "apparent_power_va", "VA", "gauge", 0.0, 6e9, 1.5, "apparent power"),
    Metric("power", "energy_wh", "Wh", "counter", 0.0, 1.8e19, None, "imported active energy"),
    Metric("power", "current_a", "A", "gauge", 0.0, 2e5, None, "RMS current"),
    Metric("power", "voltage_v", "V", "gauge", 0.0, 40e3, None, "RMS voltage"),
    Metric("power", "power_factor", "1", "gauge", -1.0, 1.0, None, "power factor"),
    Metric("power", "frequency_hz", "Hz", "gauge", 40.0, 70.0, None, "AC frequency"),
    Metric("power", "load_pct", "%", "gauge", 0.0, 200.0, None, "load relative to rating"),
    # ups (tags: site, id)
    Metric("ups", "battery_charge_pct", "%", "gauge", 0.0, 100.0, None, "battery charge"),
    Metric("ups", "battery_runtime_s", "s", "gauge", 0.0, 1e6, None, "estimated runtime"),
    Metric("ups", "on_battery", "1", "state", 0.0, 1.0, None, "1 while on battery"),
    # cooling: CDU loops (tags: site, loop[, device])
    Metric("cooling", "supply_c", "degC", "gauge", -10.0, 100.0, None, "supply temperature"),
    Metric("cooling", "return_c", "degC", "gauge", -10.0, 110.0, None, "return temperature"),
    Metric("cooling", "flow_lpm", "L/min", "gauge", 0.0, 1e5, None, "coolant flow"),
    Metric("cooling", "dp_kpa", "kPa", "gauge", -50.0, 2000.0, None, "differential pressure"),
    Metric("cooling", "heat_w", "W", "gauge", 0.0, 5e8, 1.5, "heat removed"),
    Metric("cooling", "capacity_w", "W", "gauge", 0.0, 5e8, 2.0, "heat the loop can remove now"),
    Metric("cooling", "pumps_running", "1", "state", 0.0, 16.0, None, "pumps running"),
    Metric("cooling", "leak", "1", "state", 0.0, 1.0, None, "1 when a leak is detected"),
    Metric("cooling", "inlet_c", "degC", "gauge", -10.0, 100.0, None, "rack coolant inlet temperature"),
    # grid (tags: site)
    Metric("grid", "limit_w", "W", "gauge", 0.0, 5e9, None, "interconnect limit"),
    Metric("grid", "dr_target_w", "W", "gauge", 0.0, 5e9, None, "demand-response target (0 if none)"),
    Metric("grid", "dr_active", "1", "state", 0.0, 1.0, None, "1 while a DR event is in force"),
    Metric("grid", "frequency_hz", "Hz", "gauge", 40.0, 70.0, None, "grid frequency"),
    Metric("grid", "price_per_mwh", "currency/MWh", "gauge", -5e3, 2e4, None, "energy price"),
    Metric("grid", "carbon_g_per_kwh", "gCO2/kWh", "gauge", 0.0, 3000.0, None, "carbon intensity"),
    # site: facility totals (tags: site)
    Metric("site", "facility_w", "W", "gauge", 0.0, 5e9, None, "facility power at the interconnect"),
    Metric("site", "it_w", "W", "gauge", 0.0, 5e9, None, "IT power"),
    Metric("site", "pue", "1", "gauge", 1.0, 5.0, None, "facility / IT energy over the last minute"),
    Metric("site", "it_age_s", "s", "gauge", 0.0, 1e6, None, "age of the oldest reading site.it_w was derived from"),
    # caps: what a cap plan grants, per entity (tags: site, level=<power level|loop|job|site>, id)
    Metric("caps", "cap_w", "W", "gauge", 0.0, 5e9, None, "sum of GPU caps under the entity"),
    Metric("caps", "demand_w", "W", "gauge", 0.0, 5e9, None, "predicted GPU demand under the entity"),
    Metric("caps", "cut_w", "W", "gauge", 0.0, 5e9, None, "demand not granted (demand - cap, >= 0)"),
    Metric("caps", "load_w", "W", "gauge", 0.0, 5e9, None, "planned load at the entity (its own units)"),
    Metric("caps", "limit_w", "W", "gauge", 0.0, 5e9, None, "the entity's limit in force (after margin)"),
    Metric("caps", "headroom_w", "W", "gauge", -5e9, 5e9, None, "limit - planned load"),
    Metric("caps", "binding", "1", "state", 0.0, 1.0, None, "1 if the entity's constraint binds"),
    Metric("caps", "gpus_capped", "1", "gauge", 0.0, 1e8, None, "GPUs capped below their demand"),
    Metric("caps", "solve_ms", "ms", "gauge", 0.0, 1e6, None, "solver time of the plan"),
    Metric("caps", "gpu_cap_w", "W", "gauge", 0.0, 1e5, None, "per-GPU cap sent to a node (stored when it changes)"),
    # collector: per-device health (tags: site, device, protocol)
    Metric("collector", "up", "1", "state", 0.0, 1.0, None, "1 if the last poll succeeded"),
    Metric("collector", "latency_s", "s", "gauge", 0.0, 3600.0, None, "duration of the last poll"),
    Metric("collector", "consecutive_failures", "1", "gauge", 0.0, 1e9, None, "failed polls in a row"),
    Metric("collector", "last_success_s", "s", "gauge", 0.0, 1e11, None, "time of the last success (epoch s)"),
    Metric("collector", "readings", "1", "counter", 0.0, 1e18, None, "readings accepted"),
    Metric("collector", "rejected", "1", "counter", 0.0, 1e18, None, "readings rejected (any reason)"),
    Metric("collector", "messages_bad", "1", "counter", 0.0, 1e18, None, "malformed messages skipped"),
    # store: the writer's own health (tags: site, sink)
    Metric("store", "written_points", "1", "counter", 0.0, 1e18, None, "points acknowledged by the server"),
    Metric("store", "spooled_points", "1", "gauge", 0.0, 1e18, None, "points waiting in the durable spool"),
    Metric("store", "rejected_points", "1", "counter", 0.0, 1e18, None, "points the server refused (4xx)"),
    Metric("store", "dropped_points", "1", "counter", 0.0, 1e18, None, "points dropped at the spool bound"),
    # actuation: cap commands, agent acknowledgements and verification (tags: site)
    Metric("actuation", "commands", "1", "counter", 0.0, 1e18, None, "cap commands sent"),
    Metric("actuation", "lowered", "1", "counter", 0.0, 1e18, None, "commands that lowered a cap"),
    Metric("actuation", "raised", "1", "counter", 0.0, 1e18, None, "commands that raised a cap"),
    Metric("actuation", "renewed", "1", "counter", 0.0, 1e18, None, "commands that only renewed a lease"),
    Metric("actuation", "statuses", "1", "counter", 0.0, 1e18, None, "agent statuses received"),
    Metric("actuation", "bad_statuses", "1", "counter", 0.0, 1e18, None, "agent statuses rejected"),
    Metric("actuation", "settled", "1", "counter", 0.0, 1e18, None, "lowered caps enforced and followed"),
    Metric("actuation", "settle_p50_s", "s", "gauge", 0.0, 3600.0, None, "median settling time"),
    Metric("actuation", "settle_p95_s", "s", "gauge", 0.0, 3600.0, None, "95th percentile settling time"),
    Metric("actuation", "settle_max_s", "s", "gauge", 0.0, 3600.0, None, "longest settling time"),
    Metric("actuation", "noncompliant_nodes", "1", "gauge", 0.0, 1e8, None, "nodes not following their caps"),
    Metric("actuation", "noncompliant_episodes", "1", "counter", 0.0, 1e18, None, "times a node missed its deadline"),
    Metric("actuation", "lease_fallbacks", "1", "counter", 0.0, 1e18, None, "agents that fell back on their lease"),
    Metric("actuation", "nodes_controlled", "1", "gauge", 0.0, 1e8, None, "agents enforcing a current plan"),
    Metric("actuation", "nodes_fallback", "1", "gauge", 0.0, 1e8, None, "agents at their safe cap"),
    Metric("actuation", "nodes_unknown", "1", "gauge", 0.0, 1e8, None, "nodes no agent has reported"),
    Metric("actuation", "command_bytes", "B", "counter", 0.0, 1e18, None, "bytes of cap commands sent"),
    Metric("actuation", "withheld", "1", "counter", 0.0, 1e18, None,
           "commands not sent: authority ended while the period ran"),
    Metric("actuation", "statuses_dropped", "1", "counter", 0.0, 1e18, None,
           "agent statuses dropped unread (oversize or inbox overflow)"),
    # controller: the control loop's own health, every period (tags: site)
    Metric("controller", "late_ms", "ms", "gauge", 0.0, 1e9, None, "how late the period started (site ms)"),
    Metric("controller", "period_ms", "ms", "gauge", 0.0, 1e9, None, "time the whole period took (wall ms)"),
    Metric("controller", "ingest_ms", "ms", "gauge", 0.0, 1e9, None, "stage: readings and statuses in"),
    Metric("controller", "verify_ms", "ms", "gauge", 0.0, 1e9, None, "stage: verification"),
    Metric("controller", "solve_ms", "ms", "gauge", 0.0, 1e9, None, "stage: plan (demand, budget, solve)"),
    Metric("controller", "publish_ms", "ms", "gauge", 0.0, 1e9, None, "stage: cap commands signed and sent"),
    Metric("controller", "store_ms", "ms", "gauge", 0.0, 1e9, None,
           "stage: plan aggregates, events, move advice; hand-off to the store and hooks"),
    Metric("controller", "report_ms", "ms", "gauge", 0.0, 1e9, None,
           "stage: device, store and actuation health, the live state snapshot"),
    Metric("controller", "periods", "1", "counter", 0.0, 1e18, None, "periods since start"),
    Metric("controller", "epoch", "1", "gauge", 0.0, 2.0**22, None, "authority epoch the controller commands under"),
    Metric("controller", "plans", "1", "counter", 0.0, 1e18, None, "plans made"),
    Metric("controller", "missed_periods", "1", "counter", 0.0, 1e18, None, "periods skipped because late"),
    Metric("controller", "errors", "1", "counter", 0.0, 1e18, None, "periods that raised"),
    Metric("controller", "readings_in", "1", "counter", 0.0, 1e18, None, "readings taken in"),
    Metric("controller", "batches_rejected", "1", "counter", 0.0, 1e18, None, "reading batches refused at the edge"),
    Metric("controller", "store_queue", "1", "gauge", 0.0, 1e9, None, "writes waiting for the store thread"),
    Metric("controller", "store_dropped", "1", "counter", 0.0, 1e18, None, "writes dropped at the store queue bound"),
    Metric("controller", "dr_stranded_w", "W", "gauge", 0.0, 5e9, None,
           "DR target minus site power while demand exceeds the target"),
):
    register_metric(_m)


Tags = tuple[tuple[str, str], ...]


class SeriesKey(NamedTuple):
    """A metric plus its sorted tags."""

    metric: str
    tags: Tags


class SeriesRegistry:
    """Interns series keys to dense int32 ids and keeps their valid ranges."""

    def __init__(self) -> None:
        self._ids: dict[SeriesKey, int] = {}
        self._keys: list[SeriesKey] = []
        self._lo: list[float] = []
        self._hi: list[float] = []
        self._bounds: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def id(self, metric_name: str, rating: float | None = None, **tags: str) -> int:
        """Id of the series ``metric_name`` + ``tags``; ``rating`` sets its relative range."""
        key = SeriesKey(metric_name, tuple(sorted((k, str(v)) for k, v in tags.items())))
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        m = metric(metric_name)
        lo, hi = m.bounds(rating)
        with self._lock:
            sid = self._ids.get(key)
            if sid is None:
                sid = len(self._keys)
                self._keys.append(key)
                self._lo.append(lo)
                self._hi.append(hi)
                self._ids[key] = sid
        return sid

    def ids(self, metric_name: str, tag: str, values: Sequence[str], ratings: Sequence[float] | None = None,
            **tags: str) -> NDArray[np.int32]:
        """Ids of the series ``metric_name`` + ``tags`` + ``tag=v`` for every ``v`` of ``values`` (with
        ``ratings[k]`` for the k-th): ``id`` for a whole level of entities at once (250k servers)."""
        if tag in tags:
            raise ValueError(f"tag {tag!r} given twice")
        m = metric(metric_name)
        if ratings is not None and len(ratings) != len(values):
            raise ValueError("one rating per value")
        common = sorted((k, str(v)) for k, v in tags.items())
        at = sum(1 for k, _ in common if k < tag)
        head, tail = tuple(common[:at]), tuple(common[at:])
        out = np.empty(len(values), np.int32)
        ids = self._ids
        with self._lock:
            for k, v in enumerate(values):
                key = SeriesKey(metric_name, (*head, (tag, str(v)), *tail))
                sid = ids.get(key)
                if sid is None:
                    lo, hi = m.bounds(None if ratings is None else float(ratings[k]))
                    sid = len(self._keys)
                    self._keys.append(key)
                    self._lo.append(lo)
                    self._hi.append(hi)
                    ids[key] = sid
                out[k] = sid
        return out

    def key(self, sid: int) -> SeriesKey:
        """The key of series ``sid``."""
        return self._keys[sid]

    def keys(self) -> Sequence[SeriesKey]:
        """All keys, indexed by id."""
        return self._keys

    def bounds(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Valid ``(lo, hi)`` of every series, indexed by id (cached until a series is added)."""
        cached = self._bounds
        if cached is not None and cached[0].shape[0] == len(self._lo):
            return cached
        with self._lock:
            b = (np.asarray(self._lo, np.float64), np.asarray(self._hi, np.float64))
        self._bounds = b
        return b


REGISTRY = SeriesRegistry()  # the process-wide default


@dataclass(frozen=True, slots=True, eq=False)
class ReadingBatch:
    """Columnar readings; all four columns have the same length."""

    ts_ns: NDArray[np.int64]
    series: NDArray[np.int32]
    value: NDArray[np.float64]
    quality: NDArray[np.uint8]
    registry: SeriesRegistry = REGISTRY

    def __post_init__(self) -> None:
        n = self.ts_ns.shape[0]
        if not (self.series.shape[0] == self.value.shape[0] == self.quality.shape[0] == n):
            raise ValueError("ReadingBatch columns differ in length")

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def empty(cls, registry: SeriesRegistry = REGISTRY) -> ReadingBatch:
        """A batch with no readings."""
        return cls(np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.float64),
                   np.empty(0, np.uint8), registry)

    @classmethod
    def of(cls, ts_ns: int | NDArray[np.int64], series: Sequence[int] | NDArray[np.int32],
           value: Sequence[float] | NDArray[np.float64], quality: int | NDArray[np.uint8] = 0,
           registry: SeriesRegistry = REGISTRY) -> ReadingBatch:
        """Build a batch, broadcasting a scalar timestamp or quality."""
        s = np.asarray(series, np.int32)
        v = np.asarray(value, np.float64)
        t = np.broadcast_to(np.asarray(ts_ns, np.int64), s.shape).copy()
        q = np.broadcast_to(np.asarray(quality, np.uint8), s.shape).copy()
        return cls(t, s, v, q, registry)

    @staticmethod
    def concat(batches: Iterable[ReadingBatch]) -> ReadingBatch:
        """Concatenate batches that share one registry."""
        bs = [b for b in batches if len(b)]
        if not bs:
            return ReadingBatch.empty()
        reg = bs[0].registry
        if any(b.registry is not reg for b in bs):
            raise ValueError("cannot concatenate batches from different registries")
        return ReadingBatch(np.concatenate([b.ts_ns for b in bs]),
                            np.concatenate([b.series for b in bs]),
                            np.concatenate([b.value for b in bs]),
                            np.concatenate([b.quality for b in bs]), reg)

    def select(self, mask: NDArray[np.bool_]) -> ReadingBatch:
        """The readings where ``mask`` is true."""
        return ReadingBatch(self.ts_ns[mask], self.series[mask], self.value[mask],
                            self.quality[mask], self.registry)

    def to_frame(self) -> object:
        """A pandas DataFrame with one column per tag (pandas imported lazily)."""
        import pandas as pd

        keys = self.registry.keys()
        uniq, inv = np.unique(self.series, return_inverse=True)
        tag_names = sorted({k for sid in uniq for k, _ in keys[int(sid)].tags})
        metric_per = np.array([keys[int(s)].metric for s in uniq], dtype=object)
        cols: dict[str, object] = {
            "time": pd.to_datetime(self.ts_ns, unit="ns", utc=True),
            "metric": pd.Categorical(metric_per[inv]),
        }
        for t in tag_names:
            per = np.array([dict(keys[int(s)].tags).get(t) for s in uniq], dtype=object)
            cols[t] = per[inv]
        cols["value"] = self.value
        cols["quality"] = self.quality
        return pd.DataFrame(cols)


def rating_of(key: SeriesKey, hi: float) -> float | None:
    """The entity rating a series was interned with, recovered from its upper bound."""
    m = metric(key.metric)
    if m.hi_rated is None or not np.isfinite(hi) or hi >= m.hi:
        return None
    return hi / m.hi_rated


def check_ranges(batch: ReadingBatch) -> NDArray[np.uint8]:
    """Per reading: ``Reason.OK`` or why its value is outside its series' valid range."""
    lo, hi = batch.registry.bounds()
    v = batch.value
    reasons = np.zeros(len(batch), np.uint8)
    if not len(batch):
        return reasons
    s_lo, s_hi = lo[batch.series], hi[batch.series]
    reasons[v > s_hi] = Reason.ABOVE_RANGE
    reasons[v < s_lo] = Reason.BELOW_RANGE
    reasons[~np.isfinite(v)] = Reason.NOT_FINITE
    return reasons
