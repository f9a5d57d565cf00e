"""``powerplane report``: a summary of a window of stored telemetry, and PNG plots of it.

``summarize`` reads the embedded store and computes with ``analytics``; ``write_plots``
draws site power against the limit, headroom per level and PUE (matplotlib, Agg backend).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import ConfigError, StoreError
from models.topology import LEVELS
from powerplane.store import analytics
from powerplane.store.embedded import DB_NAME, EmbeddedStore

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


@dataclass
class Summary:
    """What ``powerplane report`` prints."""

    site: str
    start_ns: int
    end_ns: int
    facility_kwh: float = float("nan")
    it_kwh: float = float("nan")
    pue: float = float("nan")
    peak_facility_w: float = float("nan")
    limit_w: float = float("nan")
    min_site_headroom_w: float = float("nan")
    coverage: float = float("nan")
    levels: pd.DataFrame = field(default_factory=pd.DataFrame)
    dr: analytics.DrCompliance = field(default_factory=lambda: analytics.DrCompliance(0.0, 0.0, 0.0, 0.0))


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


def summarize(store: EmbeddedStore, site: str, start_ns: int, end_ns: int) -> Summary:
    """Energy, PUE, peak, per-level headroom and DR compliance of ``site`` in ``[start_ns, end_ns)``."""
    def q(metric: str, **tags: str) -> pd.DataFrame:
        return store.query(metric, start_ns, end_ns, site=site, **tags)

    fac, it, lim = q("site.facility_w"), q("site.it_w"), q("grid.limit_w")
    s = Summary(site, start_ns, end_ns)
    if not fac.empty:
        e = analytics.energy(fac)
        s.facility_kwh, s.coverage = e.kwh, e.coverage
        s.peak_facility_w = float(fac["value"].max())
    if not it.empty:
        s.it_kwh = analytics.energy_kwh(it)
        s.pue = analytics.pue(fac, it) if not fac.empty else float("nan")
    if not lim.empty and not fac.empty:
        s.limit_w = float(lim["value"].min())
        lim_at = lim["value"].reindex(fac.index, method="ffill")
        s.min_site_headroom_w = float((lim_at - fac["value"]).min())
    rows = []
    for level in LEVELS:
        frame, limits = _entity_power(store, site, level, start_ns, end_ns)
        if frame.empty:
            continue
        rows.append({"level": level, **analytics.level_summary(frame, limits).to_dict()})
    s.levels = pd.DataFrame(rows, columns=["level", "entities", "peak_w", "min_headroom_w", "tightest"])
    active, target = q("grid.dr_active"), q("grid.dr_target_w")
    if not fac.empty and not active.empty and not target.empty:
        s.dr = analytics.dr_compliance(fac, active, target)
    return s


def _entity_power(store: EmbeddedStore, site: str, level: str, start_ns: int, end_ns: int
                  ) -> tuple[pd.DataFrame, pd.Series]:
    """Power of the entity totals of ``level`` and each entity's limit (its series' rating)."""
    frame = store.query("power.power_w", start_ns, end_ns, site=site, level=level)
    # Entity totals only: a series with further tags (phase, outlet...) is a sub-point.
    detail = [c for c in frame.columns if c not in ("site", "level", "id", "device", "value", "quality")]
    if detail and not frame.empty:
        frame = frame[frame[detail].isna().all(axis=1)]
    ser = store.series("power.power_w", site=site, level=level)
    if ser.empty or "id" not in ser.columns:
        return frame, pd.Series(dtype=np.float64)
    ser = ser[ser[[c for c in ser.columns if c in detail]].isna().all(axis=1)] if detail else ser
    # One id may be measured by several devices: the tightest rating holds.
    limits = pd.Series(ser["_rating"].to_numpy(np.float64), index=ser["id"].astype(str))
    return frame, limits.groupby(level=0).min()


def _level_headroom(store: EmbeddedStore, site: str, level: str, start_ns: int, end_ns: int) -> pd.Series:
    frame, limits = _entity_power(store, site, level, start_ns, end_ns)
    if frame.empty:
        return pd.Series(dtype=np.float64)
    wide = frame.reset_index().pivot_table(index="time", columns="id", values="value", aggfunc="last")
    room = limits.reindex(wide.columns).to_numpy() - wide
    return room.min(axis=1)


def write_plots(store: EmbeddedStore, summary: Summary, out_dir: Path) -> list[Path]:
    """PNGs of site power vs limit, headroom per level and PUE; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a, b, site = summary.start_ns, summary.end_ns, summary.site

    def q(metric: str, **tags: str) -> pd.DataFrame:
        return store.query(metric, a, b, site=site, **tags)

    paths = []

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for metric, label in (("site.facility_w", "facility"), ("site.it_w", "IT")):
        d = q(metric)
        if not d.empty:
            ax.plot(d.index, d["value"] / 1e6, label=label)
    lim = q("grid.limit_w")
    if not lim.empty:
        ax.step(lim.index, lim["value"] / 1e6, where="post", color="red", label="grid limit")
    tgt, act = q("grid.dr_target_w"), q("grid.dr_active")
    if not tgt.empty and not act.empty:
        on = act["value"].reindex(tgt.index, method="ffill") > 0.5
        ax.step(tgt.index, np.where(on, tgt["value"] / 1e6, np.nan), where="post", color="orange",
                label="DR target")
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
        room = _level_headroom(store, site, level, a, b)
        if room.notna().any():
            ax.plot(room.index, room.to_numpy() / 1e3, label=level)
    ax.axhline(0, color="red", lw=1)
    ax.set_ylabel("kW")
    ax.set_title(f"{site}: least headroom per level (limit - power)")
    ax.legend(loc="upper right", ncol=4)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    paths.append(out / "headroom.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    p = q("site.pue")
    if not p.empty:
        ax.plot(p.index, p["value"], label="PUE (instantaneous)")
    if np.isfinite(summary.pue):
        ax.axhline(summary.pue, color="green", ls="--", label=f"window PUE {summary.pue:.3f}")
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
