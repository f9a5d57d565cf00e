"""Energy, PUE, headroom and demand-response compliance from stored series: pure numpy/pandas.

Functions take values and return values: time-indexed frames as ``EmbeddedStore.query``
returns them (a UTC ``DatetimeIndex`` named ``time``, tag columns, ``value``) or plain
Series, and a window ``[start_ns, end_ns)``.

**Alignment.** Series from different devices do not share timestamps: the site meter is
polled every 2 s, IT power is derived every control period, the grid limit arrives on
MQTT. Nothing here combines two series sample by sample. Each series first becomes a
``Trace``: a function of time over the window plus the spans where it is known. Figures
that combine series are computed on a common time base: exact integrals over the spans
where all of them are known (energy, PUE, DR excess), evaluation at the union of their
sample times (least headroom), or values on one regular grid (``align``, for plots).

**Gap policy.** A series' own interval is the median spacing of its samples in the
window. A stretch without samples no longer than ``gap_factor`` (``MAX_GAP_FACTOR`` = 3)
times that interval is bridged: power linearly between the samples on either side,
states and limits (``hold=True``) by holding the earlier value, and a stretch at the
window's edge by holding the nearest sample. A longer stretch is *missing*: it adds no
energy, and ``Coverage`` reports it (covered and missing seconds, and each gap). Nothing
is dropped silently and nothing is drawn across an outage.

**Energy registers.** Where a meter reports its energy register (the site meter's
``power.energy_wh``), energy is the register's difference, not an integral of sampled
power: a meter polled every 2 s cannot integrate a load that swings at 0.5 Hz, but its
register counts every joule. A register covers its own gaps (``counter_trace``).

**PUE** over a window is facility energy / IT energy, both over the same spans: those
where both are known. **DR compliance** counts time with an event in force
as compliant (facility power known and at or under the target), over, or unknown
(facility power or the target missing); there is no compliance figure without an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models import physics

MAX_GAP_FACTOR = 3.0
_NS_PER_S = 1e9
_WS_PER_KWH = 3.6e6

F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]


def _series(data: pd.Series | pd.DataFrame) -> pd.Series:
    s = data["value"] if isinstance(data, pd.DataFrame) else data
    s = s[~s.index.duplicated(keep="last")].sort_index().astype(np.float64)
    return s[np.isfinite(s.to_numpy())]


def _ns(s: pd.Series) -> NDArray[np.int64]:
    return np.asarray(pd.DatetimeIndex(s.index).as_unit("ns").asi8, np.int64)


# ---- spans ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Spans:
    """Disjoint, sorted, closed time spans ``[start, end]`` in seconds from a window start."""

    start: F64
    end: F64

    @staticmethod
    def empty() -> Spans:
        """No time at all."""
        return Spans(np.empty(0), np.empty(0))

    @staticmethod
    def from_pieces(bounds: F64, inside: Bool) -> Spans:
        """Merge the pieces ``[bounds[i], bounds[i+1]]`` with ``inside[i]`` into maximal spans."""
        if not inside.any():
            return Spans.empty()
        prev = np.concatenate([[False], inside[:-1]])
        nxt = np.concatenate([inside[1:], [False]])
        return Spans(bounds[:-1][inside & ~prev].astype(np.float64), bounds[1:][inside & ~nxt].astype(np.float64))

    @property
    def total_s(self) -> float:
        """Seconds covered."""
        return float((self.end - self.start).sum())

    def contains(self, t: F64) -> Bool:
        """Which of the times ``t`` lie inside a span."""
        i = np.searchsorted(self.start, t, side="right") - 1
        ok = i >= 0
        return ok & (t <= self.end[np.maximum(i, 0)]) if self.start.size else np.zeros(np.shape(t), bool)

    def bounds(self) -> F64:
        """Every span edge."""
        return np.concatenate([self.start, self.end])

    def __and__(self, other: Spans) -> Spans:
        b = np.unique(np.concatenate([self.bounds(), other.bounds()]))
        if b.size < 2:
            return Spans.empty()
        mid = 0.5 * (b[:-1] + b[1:])
        return Spans.from_pieces(b, self.contains(mid) & other.contains(mid))

    def complement(self, lo: float, hi: float) -> Spans:
        """The time in ``[lo, hi]`` outside every span."""
        b = np.unique(np.concatenate([[lo, hi], np.clip(self.bounds(), lo, hi)]))
        if b.size < 2:
            return Spans.empty()
        return Spans.from_pieces(b, ~self.contains(0.5 * (b[:-1] + b[1:])))


# ---- traces --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Trace:
    """One series over a window: its samples, its own interval and the spans where it is known.

    Times are seconds from the window start; samples just outside the window (its
    neighbours) may be included so that the window's edges interpolate correctly.
    """

    t_s: F64
    v: F64
    window_s: float
    interval_s: float  # median spacing of the samples (NaN with fewer than two)
    known: Spans  # within [0, window_s]
    hold: bool  # a state or limit: a value holds until the next sample

    def raw(self, t: F64) -> F64:
        """The value at ``t`` by the trace's rule, whether or not ``t`` is known (NaN without samples)."""
        if not self.t_s.size:
            return np.full(np.shape(t), np.nan)
        if self.hold:
            return self.v[np.clip(np.searchsorted(self.t_s, t, side="right") - 1, 0, None)]
        return np.interp(t, self.t_s, self.v)

    def at(self, t: F64) -> F64:
        """The value at ``t``, NaN where the trace is not known."""
        return np.where(self.known.contains(t), self.raw(t), np.nan)

    def samples_in_window(self) -> F64:
        """Sample values inside ``[0, window_s)``."""
        return self.v[(self.t_s >= 0) & (self.t_s < self.window_s)]


def trace(data: pd.Series | pd.DataFrame, start_ns: int, end_ns: int, *, hold: bool = False,
          gap_factor: float = MAX_GAP_FACTOR) -> Trace:
    """The ``Trace`` of one series in ``[start_ns, end_ns)`` under the gap policy (module docstring).

    ``data`` may hold samples outside the window; they serve only as the edges' neighbours.
    """
    s = _series(data)
    window_s = (end_ns - start_ns) / _NS_PER_S
    t = (_ns(s) - start_ns) / _NS_PER_S
    v = s.to_numpy()
    inside = (t >= 0) & (t < window_s)
    base = t[inside] if inside.sum() >= 2 else t
    interval = float(np.median(np.diff(base))) if base.size >= 2 else float("nan")
    bridge = gap_factor * interval if np.isfinite(interval) else 0.0
    if not t.size or window_s <= 0:
        return Trace(t, v, window_s, interval, Spans.empty(), hold)
    bounds = np.unique(np.concatenate([[0.0, window_s], t[(t > 0) & (t < window_s)]]))
    mid = 0.5 * (bounds[:-1] + bounds[1:])
    i = np.searchsorted(t, mid, side="right") - 1  # sample before each piece
    between = (i >= 0) & (i < t.size - 1)
    dt = np.diff(t)
    known = between & (dt[np.clip(i, 0, max(dt.size - 1, 0))] <= bridge) if dt.size else np.zeros(mid.size, bool)
    known |= (i < 0) & (t[0] <= bridge)  # the window's edge before the first sample
    known |= (i >= t.size - 1) & (window_s - t[-1] <= bridge)  # and after the last
    return Trace(t, v, window_s, interval, Spans.from_pieces(bounds, known), hold)


def _pieces(traces: tuple[Trace, ...], extra: tuple[Spans, ...] = ()) -> F64:
    """Piece bounds on which every trace is linear (or constant) and known or not throughout."""
    w = traces[0].window_s
    parts = [np.array([0.0, w])]
    for tr in traces:
        parts += [tr.t_s, tr.known.bounds()]
    for sp in extra:
        parts.append(sp.bounds())
    b = np.unique(np.concatenate(parts))
    return b[(b >= 0) & (b <= w)]


def _area(tr: Trace, b: F64) -> F64:
    """Integral of ``tr`` over each piece of ``b`` (value · s)."""
    y = tr.raw(b)
    dt = np.diff(b)
    return y[:-1] * dt if tr.hold else 0.5 * (y[:-1] + y[1:]) * dt


def integral(tr: Trace, over: Spans) -> float:
    """Exact integral of ``tr`` (value · s) over ``over`` ∩ where the trace is known."""
    sp = over & tr.known
    if not sp.start.size:
        return 0.0
    b = _pieces((tr,), (sp,))
    return float(_area(tr, b)[sp.contains(0.5 * (b[:-1] + b[1:]))].sum())


# ---- energy and PUE ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Coverage:
    """Where one series is known in a window, under the gap policy."""

    window_s: float
    covered_s: float
    interval_s: float  # the series' own interval
    gaps: Spans  # missing time, seconds from the window start

    @property
    def missing_s(self) -> float:
        """Window seconds the series does not cover."""
        return self.window_s - self.covered_s

    @property
    def share(self) -> float:
        """Covered share of the window (0 for an empty window)."""
        return self.covered_s / self.window_s if self.window_s > 0 else 0.0


def coverage(tr: Trace) -> Coverage:
    """Covered and missing time of ``tr``."""
    return Coverage(tr.window_s, tr.known.total_s, tr.interval_s, tr.known.complement(0.0, tr.window_s))


@dataclass(frozen=True, slots=True)
class Energy:
    """Energy of one power series over the time it covers, and that coverage."""

    kwh: float
    coverage: Coverage


def _window(s: pd.Series, start_ns: int | None, end_ns: int | None) -> tuple[int, int]:
    ns = _ns(s)
    lo = int(ns[0]) if start_ns is None and ns.size else int(start_ns or 0)
    hi = int(ns[-1]) if end_ns is None and ns.size else int(end_ns or 0)
    return lo, hi


def energy(power_w: pd.Series | pd.DataFrame, start_ns: int | None = None, end_ns: int | None = None, *,
           gap_factor: float = MAX_GAP_FACTOR) -> Energy:
    """kWh of one power series (W) in the window (default: first to last sample), gaps excluded."""
    s = _series(power_w)
    lo, hi = _window(s, start_ns, end_ns)
    tr = trace(s, lo, hi, gap_factor=gap_factor)
    return Energy(integral(tr, tr.known) / _WS_PER_KWH, coverage(tr))


def energy_kwh_by(frame: pd.DataFrame, start_ns: int | None = None, end_ns: int | None = None, by: str = "id", *,
                  gap_factor: float = MAX_GAP_FACTOR) -> pd.Series:
    """kWh per value of tag ``by`` (one series per group), each over the time it covers."""
    out = {str(k): energy(g, start_ns, end_ns, gap_factor=gap_factor).kwh for k, g in frame.groupby(by, sort=True)}
    return pd.Series(out, name="energy_kwh", dtype=np.float64)


def counter_trace(data: pd.Series | pd.DataFrame, start_ns: int, end_ns: int, *,
                  gap_factor: float = MAX_GAP_FACTOR) -> Trace:
    """The ``Trace`` of an energy register (a counter, Wh) in ``[start_ns, end_ns)``.

    A register covers its own gaps exactly — the energy between two readings is their
    difference, however far apart they are — so between its first and last reading it is
    known except where it went down (a reset or a wrap: that stretch is missing), and
    nowhere else.
    """
    tr = trace(data, start_ns, end_ns, gap_factor=gap_factor)
    if tr.t_s.size < 2:
        return tr
    t, v, w = tr.t_s, tr.v, tr.window_s
    bounds = np.unique(np.concatenate([[0.0, w], t[(t > 0) & (t < w)]]))
    mid = 0.5 * (bounds[:-1] + bounds[1:])
    i = np.searchsorted(t, mid, side="right") - 1
    between = (i >= 0) & (i < t.size - 1)
    rising = np.diff(v) >= 0
    # Before its first and after its last reading a register says nothing: holding its value
    # there would count those seconds as covered at zero power. (``fetch`` adds the readings
    # just outside the window, so a window's edges are between two readings when the data is.)
    known = between & rising[np.clip(i, 0, rising.size - 1)]
    return Trace(t, v, w, tr.interval_s, Spans.from_pieces(bounds, known), False)


def counter_energy_kwh(register: Trace, over: Spans) -> float:
    """kWh an energy register (Wh) counted over ``over`` ∩ where it is known (differences of
    the register, linear between its readings)."""
    sp = over & register.known
    if not sp.start.size:
        return 0.0
    return float((register.raw(sp.end) - register.raw(sp.start)).sum()) / 1e3


def peak_demand_kw(register: Trace, interval_s: float, offset_s: float = 0.0) -> tuple[float, float]:
    """The highest average power (kW) over one demand interval, as utilities bill it: intervals
    ``[offset + k*interval, offset + (k+1)*interval)`` (``offset_s`` aligns them to the clock),
    only those the register covers whole; ``(nan, nan)`` without one. Returns ``(kW, start_s)``."""
    w = register.window_s
    if interval_s <= 0 or not register.known.start.size:
        return float("nan"), float("nan")
    k0 = np.ceil((0.0 - offset_s) / interval_s)
    starts = offset_s + interval_s * np.arange(k0, np.floor((w - offset_s) / interval_s))
    best, at = float("nan"), float("nan")
    for a in starts.tolist():
        b = a + interval_s
        i = np.searchsorted(register.known.start, a, side="right") - 1
        if i < 0 or register.known.end[i] < b:
            continue  # not covered whole
        kw = float(register.raw(np.array([b]))[0] - register.raw(np.array([a]))[0]) * 3.6 / interval_s
        if not kw <= best:
            best, at = kw, a
    return best, at


@dataclass(frozen=True, slots=True)
class Pue:
    """PUE over the spans where facility and IT power are both known."""

    value: float  # facility kWh / IT kWh over ``basis_s`` (NaN without IT energy)
    basis_s: float  # seconds both were known
    facility_kwh: float  # over those seconds only
    it_kwh: float


def pue(facility: Trace, it: Trace, facility_register: Trace | None = None) -> Pue:
    """Facility energy / IT energy, both over the spans where both are known; facility energy
    from its energy register where there is one (``facility`` is then not used)."""
    if facility_register is not None:
        both = facility_register.known & it.known
        fac = counter_energy_kwh(facility_register, both)
        itk = integral(it, both) / _WS_PER_KWH
        p = physics.pue(fac, itk)
        return Pue(float("nan") if p is None else p, both.total_s, fac, itk)
    both = facility.known & it.known
    fac = integral(facility, both) / _WS_PER_KWH
    itk = integral(it, both) / _WS_PER_KWH
    p = physics.pue(fac, itk)
    return Pue(float("nan") if p is None else p, both.total_s, fac, itk)


# ---- headroom ------------------------------------------------------------------------------
def min_headroom_w(power: Trace, limit: Trace) -> float:
    """Least ``limit - power`` while both are known (exact: checked at every piece's ends)."""
    b = _pieces((power, limit))
    if b.size < 2:
        return float("nan")
    mid = 0.5 * (b[:-1] + b[1:])
    ok = power.known.contains(mid) & limit.known.contains(mid)
    if not ok.any():
        return float("nan")
    p = power.raw(b)
    peak = np.maximum(p[:-1], p[1:])  # a linear piece peaks at one of its ends
    lim = limit.raw(b[:-1]) if limit.hold else np.minimum(limit.raw(b[:-1]), limit.raw(b[1:]))
    return float((lim - peak)[ok].min())


def headroom(frame: pd.DataFrame, limit_w: pd.Series, by: str = "id") -> pd.DataFrame:
    """Per entity: ``peak_w``, ``mean_w``, ``limit_w``, ``min_headroom_w``, ``peak_pct`` of limit.

    ``limit_w`` maps the values of tag ``by`` to each entity's limit (W). Each entity is
    one series against its own constant limit, so its samples need no alignment.
    """
    rows = []
    for key, g in frame.groupby(by, sort=True):
        v = _series(g)
        lim = float(limit_w.get(key, np.nan))
        peak = float(v.max())
        rows.append({by: str(key), "peak_w": peak, "mean_w": float(v.mean()), "limit_w": lim,
                     "min_headroom_w": lim - peak, "peak_pct": 100.0 * peak / lim if lim > 0 else np.nan})
    cols = [by, "peak_w", "mean_w", "limit_w", "min_headroom_w", "peak_pct"]
    return pd.DataFrame(rows, columns=cols).set_index(by)


def level_summary(frame: pd.DataFrame, limit_w: pd.Series, by: str = "id") -> pd.Series:
    """One level's busiest moment: entities, highest peak, and the entity with the least headroom."""
    h = headroom(frame, limit_w, by)
    if h.empty:
        return pd.Series({"entities": 0, "peak_w": np.nan, "min_headroom_w": np.nan, "tightest": ""})
    finite = h[np.isfinite(h["min_headroom_w"])]
    tight = finite["min_headroom_w"].idxmin() if not finite.empty else ""
    return pd.Series({"entities": len(h), "peak_w": float(h["peak_w"].max()),
                      "min_headroom_w": float(finite["min_headroom_w"].min()) if not finite.empty else np.nan,
                      "tightest": str(tight)})


# ---- a common grid -----------------------------------------------------------------------------
def grid_step_s(traces: Mapping[str, Trace], max_points: int = 4000) -> float:
    """A grid step for ``align``: the finest own interval, coarsened to at most ``max_points`` points."""
    w = next(iter(traces.values())).window_s if traces else 0.0
    ivs = [tr.interval_s for tr in traces.values() if np.isfinite(tr.interval_s) and tr.interval_s > 0]
    step = min(ivs) if ivs else w / max_points
    return max(step, w / max_points) if w > 0 else 1.0


def align(traces: Mapping[str, Trace], start_ns: int, step_s: float | None = None) -> pd.DataFrame:
    """Every trace on one regular grid over its window: a column each, NaN where it is not known."""
    if not traces:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="time"))
    step = step_s if step_s is not None else grid_step_s(traces)
    w = next(iter(traces.values())).window_s
    g = np.arange(0.0, w, step) if w > 0 else np.zeros(0)
    idx = pd.DatetimeIndex(pd.to_datetime(start_ns + np.round(g * _NS_PER_S).astype(np.int64), unit="ns", utc=True),
                           name="time")
    return pd.DataFrame({k: tr.at(g) for k, tr in traces.items()}, index=idx)


def least_headroom(frame: pd.DataFrame, limit_w: pd.Series, start_ns: int, end_ns: int, by: str = "id", *,
                   step_s: float | None = None, gap_factor: float = MAX_GAP_FACTOR) -> pd.Series:
    """The least ``limit - power`` across the entities of ``frame`` over time, on one aligned grid."""
    traces = {str(k): trace(g, start_ns, end_ns, gap_factor=gap_factor) for k, g in frame.groupby(by, sort=True)}
    traces = {k: tr for k, tr in traces.items() if np.isfinite(limit_w.get(k, np.nan))}
    if not traces:
        return pd.Series(dtype=np.float64)
    wide = align(traces, start_ns, step_s)
    room = limit_w.reindex(wide.columns).to_numpy(np.float64) - wide
    return room.min(axis=1, skipna=True)


# ---- demand response -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DrCompliance:
    """How the site held demand-response targets over a window."""

    window_s: float
    events: int  # DR events in force at some time in the window
    active_s: float  # time with an event in force (by the DR signal)
    compliant_s: float  # of which facility power was known and at or under the target
    over_s: float  # known and over the target
    unknown_s: float  # in force, but facility power, the target or the DR signal was missing (a gap)
    signal_missing_s: float  # window time without a known DR state, outside events
    max_excess_w: float  # worst excess over the target (0 when never over)
    excess_kwh: float  # energy drawn above the target

    @property
    def compliance(self) -> float | None:
        """Compliant share of DR time (gaps count as not compliant); None without an event."""
        return self.compliant_s / self.active_s if self.active_s > 0 else None

    @property
    def status(self) -> str:
        """``no signal``, ``no event``, ``exceeded``, ``unknown`` (gaps but never over) or ``compliant``."""
        if self.active_s <= 0:
            return "no event" if self.signal_missing_s < self.window_s else "no signal"
        if self.over_s > 0:
            return "exceeded"
        return "unknown" if self.unknown_s > 0 else "compliant"


def dr_compliance(facility: Trace, active: Trace, target: Trace) -> DrCompliance:
    """Facility power against the DR target while ``active`` is 1 (exact on linear pieces)."""
    w = facility.window_s
    b = _pieces((facility, active, target))
    if b.size < 2:
        return DrCompliance(w, 0, 0.0, 0.0, 0.0, 0.0, w, 0.0, 0.0)
    dt = np.diff(b)
    mid = 0.5 * (b[:-1] + b[1:])
    fk, ak, tk = facility.known.contains(mid), active.known.contains(mid), target.known.contains(mid)
    state = active.raw(b[:-1]) > 0.5
    known_state = pd.Series(np.where(ak, state, np.nan))
    # A stretch without the DR signal between two stretches in force is in force: unknown, not absent.
    lost = ~ak & (known_state.ffill().to_numpy() == 1) & (known_state.bfill().to_numpy() == 1)
    on = (ak & state) | lost
    measured = on & ak & fk & tk
    f = facility.raw(b)
    f0, f1 = f[:-1], f[1:]
    tg = target.raw(b[:-1])
    hi, lo = np.maximum(f0, f1), np.minimum(f0, f1)
    with np.errstate(invalid="ignore", divide="ignore"):
        part = np.where(hi > lo, (hi - tg) / (hi - lo), 0.0)
    frac = np.where(lo > tg, 1.0, np.where(hi <= tg, 0.0, part))  # share of the piece over the target
    area = np.where(lo >= tg, 0.5 * (f0 + f1) - tg, 0.5 * (hi - tg) * frac) * dt
    over = measured & (frac > 0)
    states = state[ak]  # the DR state wherever it is known, in order
    events = int(states[0]) + int((states[1:] & ~states[:-1]).sum()) if states.size else 0
    over_s = float((frac * dt)[over].sum())
    return DrCompliance(
        window_s=w, events=events, active_s=float(dt[on].sum()), compliant_s=float(dt[measured].sum()) - over_s,
        over_s=over_s, unknown_s=float(dt[on & ~measured].sum()), signal_missing_s=float(dt[~ak & ~lost].sum()),
        max_excess_w=float(np.max(np.where(over, hi - tg, 0.0), initial=0.0)),
        excess_kwh=float(area[over].sum()) / _WS_PER_KWH)


def downsample(frame: pd.DataFrame, every: str, how: str = "mean", by: tuple[str, ...] = ()) -> pd.DataFrame:
    """``value`` aggregated into ``every`` buckets (pandas offset, e.g. ``"1min"``) per tag group ``by``."""
    if frame.empty:
        return frame[[*by, "value"]].copy()
    if not by:
        return frame[["value"]].resample(every).agg(how).dropna()
    parts = []
    for key, g in frame.groupby(list(by), sort=True):
        r = g[["value"]].resample(every).agg(how).dropna()
        keys = key if isinstance(key, tuple) else (key,)
        for name, val in zip(by, keys, strict=True):
            r[name] = val
        parts.append(r)
    return pd.concat(parts)[[*by, "value"]]
