"""``powerplane report``: a summary of a window of stored telemetry, and PNG plots of it.

``summarize`` reads the embedded store and computes with ``analytics`` (series aligned,
gaps bridged or reported under its gap policy); ``Report.to_json`` is every figure as
data; ``write_plots`` draws site power against the limit, headroom per level and PUE on
one aligned grid (matplotlib, Agg backend).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dashboards import analytics
from models.errors import ConfigError, StoreError
from models.topology import LEVELS
from store.embedded import DB_NAME, EmbeddedStore

_REL = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now_ns: int) -> int:
    """``now``, a relative time (``-15m``, ``-2h``, ``-1d``) or an ISO 8601 time (UTC if no zone) in ns."""
    t = text.strip().lower()
    if t == "now":
        return now_ns
    m = _REL.match(t)
    if m:
        return now_ns - int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1e9)
    try:
        ts = pd.Timestamp(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601, 'now' or -15m / -2h / -1d)") from None
    if ts is pd.NaT:
        raise ValueError(f"not a time: {text!r}")
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.as_unit("ns").value)


def open_store(data_dir: Path) -> EmbeddedStore:
    """The embedded store under ``data_dir``; an error (not a new empty store) if there is none."""
    if not (Path(data_dir) / DB_NAME).is_file():
        raise ConfigError(data_dir, [("", f"no telemetry store here ({DB_NAME} not found); "
                                         "run `powerplane demo --data-dir DIR` first")])
    return EmbeddedStore(Path(data_dir))


ENTITY_TAGS = ("site", "level", "id", "device", "loop")  # a series with any other tag is a sub-point


def totals(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of entity totals only: a series with further tags (phase, side, outlet...) is a sub-point."""
    detail = [c for c in frame.columns if c not in (*ENTITY_TAGS, "value", "quality")]
    if detail and not frame.empty:
        return frame[frame[detail].isna().all(axis=1)]
    return frame


@dataclass
class Report:
    """What ``powerplane report`` prints: every figure of a window, from ``analytics``."""

    site: str
    start_ns: int
    end_ns: int
    gap_factor: float
    facility: analytics.Energy | None = None
    facility_source: str = ""  # "energy register" (the site meter's) or "integrated power"
    it: analytics.Energy | None = None
    pue: analytics.Pue | None = None
    peak_facility_w: float = float("nan")  # the highest reading of the site meter
    demand_interval_s: float = 900.0
    peak_demand_w: float = float("nan")  # the highest average over one demand interval (energy register)
    peak_demand_start_ns: int | None = None
    limit_min_w: float = float("nan")
    min_site_headroom_w: float = float("nan")
    dr: analytics.DrCompliance | None = None
    levels: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def facility_kwh(self) -> float:
        """Facility energy over the time the site meter covers (NaN without it)."""
        return self.facility.kwh if self.facility else float("nan")

    @property
    def it_kwh(self) -> float:
        """IT energy over the time IT power covers (NaN without it)."""
        return self.it.kwh if self.it else float("nan")

    @property
    def pue_value(self) -> float:
        """Facility / IT energy over the time both cover."""
        return self.pue.value if self.pue else float("nan")

    def to_json(self) -> dict[str, Any]:
        """Every figure as plain data (kW, kWh, s; null where unknown): the schema is in the README."""
        dr = self.dr
        return {
            "site": self.site, "start": _iso(self.start_ns), "end": _iso(self.end_ns),
            "window_s": (self.end_ns - self.start_ns) / 1e9, "gap_factor": self.gap_factor,
            "facility_energy_kwh": _num(self.facility_kwh), "facility_energy_source": self.facility_source or None,
            "it_energy_kwh": _num(self.it_kwh),
            "pue": _num(self.pue_value), "pue_basis_s": _num(self.pue.basis_s if self.pue else float("nan")),
            "peak_facility_kw": _num(self.peak_facility_w / 1e3),
            "peak_demand_kw": _num(self.peak_demand_w / 1e3), "demand_interval_s": self.demand_interval_s,
            "peak_demand_start": _iso(self.peak_demand_start_ns) if self.peak_demand_start_ns is not None else None,
            "grid_limit_min_kw": _num(self.limit_min_w / 1e3),
            "min_site_headroom_kw": _num(self.min_site_headroom_w / 1e3),
            "coverage": {"facility": self._coverage(self.facility), "it": self._coverage(self.it)},
            "dr": None if dr is None else {
                "status": dr.status, "events": dr.events, "active_s": dr.active_s, "compliant_s": dr.compliant_s,
                "over_s": dr.over_s, "unknown_s": dr.unknown_s, "signal_missing_s": dr.signal_missing_s,
                "compliance": dr.compliance, "max_excess_kw": dr.max_excess_w / 1e3, "excess_kwh": dr.excess_kwh},
            "levels": [{"level": str(r["level"]), "entities": int(r["entities"]),
                        "peak_kw": _num(float(r["peak_w"]) / 1e3),
                        "min_headroom_kw": _num(float(r["min_headroom_w"]) / 1e3),
                        "tightest": str(r["tightest"]) or None} for r in self.levels.to_dict("records")],
        }

    def _coverage(self, e: analytics.Energy | None) -> dict[str, Any] | None:
        if e is None:
            return None
        c = e.coverage
        gaps = [{"start": _iso(self.start_ns + round(a * 1e9)), "end": _iso(self.start_ns + round(b * 1e9)),
                 "seconds": float(b - a)} for a, b in zip(c.gaps.start[:MAX_GAPS_LISTED].tolist(),
                                                          c.gaps.end[:MAX_GAPS_LISTED].tolist(), strict=True)]
        return {"share": c.share, "covered_s": c.covered_s, "missing_s": c.missing_s,
                "interval_s": _num(c.interval_s), "gap_count": int(c.gaps.start.size), "gaps": gaps}


MAX_GAPS_LISTED = 100


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _iso(ts_ns: int) -> str:
    return str(pd.Timestamp(int(ts_ns), unit="ns", tz="UTC").isoformat()).replace("+00:00", "Z")


def pick_site(store: EmbeddedStore, site: str | None) -> str:
    """The site to report on: ``site``, or the only one in the store."""
    tags = store.series()
    sites = sorted({str(s) for s in tags["site"].dropna()}) if "site" in tags else []
    if site is not None:
        if site not in sites:
            raise StoreError(f"site {site!r} not in the store (have: {', '.join(sites) or 'none'})")
        return site
    if len(sites) != 1:
        raise StoreError(f"the store holds {len(sites)} sites ({', '.join(sites) or 'none'}): pick one with --site")
    return sites[0]


def site_only(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of series tagged with the site alone (no level, id, device or loop)."""
    for col in ("level", "id", "device", "loop"):
        if col in frame.columns:
            frame = frame[frame[col].isna()]
    return frame


def fetch(store: EmbeddedStore, metric: str, start_ns: int, end_ns: int, *,
          gap_factor: float = analytics.MAX_GAP_FACTOR, site_level: bool = False, **tags: str) -> pd.DataFrame:
    """Entity-total readings of ``metric`` in the window plus the nearest one on either side
    (``site_level``: only the series tagged with the site alone).

    The neighbours (within ``gap_factor`` × the series' interval) let the window's edges be
    interpolated instead of held.
    """
    def q(a: int, b: int) -> pd.DataFrame:
        f = totals(store.query(metric, a, b, **tags))
        return site_only(f) if site_level else f

    frame = q(start_ns, end_ns)
    ns = np.unique(frame.index.asi8)
    if ns.size < 2:
        return frame
    pad = int(gap_factor * float(np.median(np.diff(ns)))) + 1
    before, after = q(start_ns - pad, start_ns), q(end_ns, end_ns + pad)
    return pd.concat([f for f in (before.tail(1), frame, after.head(1)) if not f.empty])


def summarize(store: EmbeddedStore, site: str, start_ns: int, end_ns: int, *,
              gap_factor: float = analytics.MAX_GAP_FACTOR, demand_interval_s: float = 900.0) -> Report:
    """Energy, PUE, peak, headroom per level and DR compliance of ``site`` in ``[start_ns, end_ns)``."""
    def tr(metric: str, hold: bool = False) -> analytics.Trace | None:
        frame = fetch(store, metric, start_ns, end_ns, gap_factor=gap_factor, site=site)
        return None if frame.empty else analytics.trace(frame, start_ns, end_ns, hold=hold, gap_factor=gap_factor)

    r = Report(site, start_ns, end_ns, gap_factor, demand_interval_s=demand_interval_s)
    fac, it, lim = tr("site.facility_w"), tr("site.it_w"), tr("grid.limit_w", hold=True)
    reg = site_register(store, site, start_ns, end_ns, gap_factor)
    if reg is not None:
        r.facility = analytics.Energy(analytics.counter_energy_kwh(reg, reg.known), analytics.coverage(reg))
        r.facility_source = "energy register"
        step = int(demand_interval_s * 1e9)
        kw, at = analytics.peak_demand_kw(reg, demand_interval_s, ((-start_ns) % step) / 1e9 if step else 0.0)
        if math.isfinite(kw):
            r.peak_demand_w, r.peak_demand_start_ns = kw * 1e3, start_ns + round(at * 1e9)
    elif fac is not None:
        r.facility = analytics.Energy(analytics.integral(fac, fac.known) / 3.6e6, analytics.coverage(fac))
        r.facility_source = "integrated power"
    if fac is not None:
        inside = fac.samples_in_window()
        r.peak_facility_w = float(inside.max()) if inside.size else float("nan")
    if it is not None:
        r.it = analytics.Energy(analytics.integral(it, it.known) / 3.6e6, analytics.coverage(it))
    if (fac is not None or reg is not None) and it is not None:
        r.pue = analytics.pue(fac if fac is not None else reg, it, reg)  # type: ignore[arg-type]
    if lim is not None:
        inside = lim.samples_in_window()
        r.limit_min_w = float(inside.min()) if inside.size else float("nan")
        if fac is not None:
            r.min_site_headroom_w = analytics.min_headroom_w(fac, lim)
    active, target = tr("grid.dr_active", hold=True), tr("grid.dr_target_w", hold=True)
    if fac is not None and active is not None and target is not None:
        r.dr = analytics.dr_compliance(fac, active, target)
    rows = []
    for level in LEVELS:
        frame, limits = _entity_power(store, site, level, start_ns, end_ns)
        if frame.empty:
            continue
        rows.append({"level": level, **analytics.level_summary(frame, limits).to_dict()})
    r.levels = pd.DataFrame(rows, columns=["level", "entities", "peak_w", "min_headroom_w", "tightest"])
    return r


def site_register(store: EmbeddedStore, site: str, start_ns: int, end_ns: int,
                  gap_factor: float = analytics.MAX_GAP_FACTOR) -> analytics.Trace | None:
    """The site meter's energy register (``power.energy_wh`` tagged with the site only) as a
    counter trace, or None without two readings of it."""
    frame = fetch(store, "power.energy_wh", start_ns, end_ns, gap_factor=gap_factor, site_level=True, site=site)
    if len(frame) < 2:
        return None
    return analytics.counter_trace(frame, start_ns, end_ns, gap_factor=gap_factor)


def _entity_power(store: EmbeddedStore, site: str, level: str, start_ns: int, end_ns: int
                  ) -> tuple[pd.DataFrame, pd.Series]:
    """Power of the entity totals of ``level`` and each entity's limit (its series' rating)."""
    frame = totals(store.query("power.power_w", start_ns, end_ns, site=site, level=level))
    ser = store.series("power.power_w", site=site, level=level)
    if ser.empty or "id" not in ser.columns:
        return frame, pd.Series(dtype=np.float64)
    detail = [c for c in ser.columns if not c.startswith("_") and c not in ENTITY_TAGS]
    if detail:
        ser = ser[ser[detail].isna().all(axis=1)]
    # One id may be measured by several devices: the tightest rating holds.
    limits = pd.Series(ser["_rating"].to_numpy(np.float64), index=ser["id"].astype(str))
    return frame, limits.groupby(level=0).min()


def _level_headroom(store: EmbeddedStore, report: Report, level: str) -> pd.Series:
    """Least headroom of ``level`` over time, every entity aligned to one grid first."""
    frame, limits = _entity_power(store, report.site, level, report.start_ns, report.end_ns)
    if frame.empty or limits.empty:
        return pd.Series(dtype=np.float64)
    return analytics.least_headroom(frame, limits, report.start_ns, report.end_ns, gap_factor=report.gap_factor)


def write_plots(store: EmbeddedStore, report: Report, out_dir: Path) -> list[Path]:
    """PNGs of site power vs limit, headroom per level and PUE, series aligned first; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a, b, site, k = report.start_ns, report.end_ns, report.site, report.gap_factor
    traces: dict[str, analytics.Trace] = {}
    for key, metric, hold in (("facility", "site.facility_w", False), ("it", "site.it_w", False),
                              ("limit", "grid.limit_w", True), ("active", "grid.dr_active", True),
                              ("target", "grid.dr_target_w", True), ("pue", "site.pue", False)):
        frame = fetch(store, metric, a, b, gap_factor=k, site=site)
        if not frame.empty:
            traces[key] = analytics.trace(frame, a, b, hold=hold, gap_factor=k)
    # One grid for all: gaps show as breaks in the lines, not as straight lines across them.
    grid = analytics.align(traces, a) if traces else pd.DataFrame()
    paths = []

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for key, label in (("facility", "facility"), ("it", "IT")):
        if key in grid:
            ax.plot(grid.index, grid[key] / 1e6, label=label)
    if "limit" in grid:
        ax.plot(grid.index, grid["limit"] / 1e6, color="red", label="grid limit", drawstyle="steps-post")
    if "target" in grid and "active" in grid:
        on = grid["active"] > 0.5
        ax.plot(grid.index, grid["target"].where(on) / 1e6, color="orange", label="DR target",
                drawstyle="steps-post")
    ax.set_ylabel("MW")
    ax.set_title(f"{site}: site power against the limit")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    paths.append(out / "site_power.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for level in LEVELS:
        room = _level_headroom(store, report, level)
        if room.notna().any():
            ax.plot(room.index, room.to_numpy() / 1e3, label=level)
    ax.axhline(0, color="red", lw=1)
    ax.set_ylabel("kW")
    ax.set_title(f"{site}: least headroom per level (limit - power, aligned)")
    ax.legend(loc="upper right", ncol=4)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    paths.append(out / "headroom.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    if "facility" in grid and "it" in grid:
        ax.plot(grid.index, grid["facility"] / grid["it"].where(grid["it"] > 0), label="facility / IT (aligned)")
    if "pue" in traces:
        d = fetch(store, "site.pue", a, b, site=site)
        ax.plot(d.index, d["value"], ".", ms=3, label="site.pue as stored")
    if math.isfinite(report.pue_value):
        ax.axhline(report.pue_value, color="green", ls="--", label=f"window PUE {report.pue_value:.3f}")
    ax.set_title(f"{site}: PUE")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    paths.append(out / "pue.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def now_ns() -> int:
    """Wall-clock now in ns (the one place the report reads the clock)."""
    return time.time_ns()
