"""``powerplane report``: summary table and PNG plots of the embedded store."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from models.errors import ConfigError
from powerplane.argtypes import finite_number
from store.config import DEFAULT_DATA_DIR

if TYPE_CHECKING:
    from dashboards.analytics import Energy
    from dashboards.report import Report

# pandas and the analytics load only when the report runs: every process builds this parser.
GAP_FACTOR = 3.0  # dashboards.analytics.MAX_GAP_FACTOR (a test keeps them equal)


def _fmt(v: float, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    return "—" if not math.isfinite(v) else f"{v / scale:,.{digits}f}{unit}"


def _coverage(e: Energy | None) -> str:
    if e is None:
        return "—"
    c = e.coverage
    return (f"{100 * c.share:.1f} % of {c.window_s:,.0f} s ({c.missing_s:,.1f} s missing in "
            f"{c.gaps.start.size} gap{'s' if c.gaps.start.size != 1 else ''})")


def _dr(r: Report) -> list[tuple[str, str]]:
    d = r.dr
    if d is None:
        return [("demand response", "no DR signal stored")]
    if d.compliance is None:
        return [("demand response", d.status)]
    return [("DR events", f"{d.events}"), ("DR time in force", _fmt(d.active_s, 1, 0, " s")),
            ("DR compliance", f"{100 * d.compliance:.1f} % ({d.status}: over {d.over_s:,.0f} s, "
                              f"unknown {d.unknown_s:,.0f} s)"),
            ("DR worst excess", _fmt(d.max_excess_w, 1e3, 1, " kW"))]


def _print(r: Report, console: Console) -> None:
    import pandas as pd

    t0, t1 = pd.Timestamp(r.start_ns, unit="ns", tz="UTC"), pd.Timestamp(r.end_ns, unit="ns", tz="UTC")
    table = Table(title=f"{r.site}: {t0:%Y-%m-%d %H:%M:%S} – {t1:%Y-%m-%d %H:%M:%S} UTC", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    basis = f" over {r.pue.basis_s:,.0f} s" if r.pue is not None else ""
    rows: list[tuple[str, str]] = [
        ("facility energy", _fmt(r.facility_kwh, 1, 2, " kWh")),
        ("  from", r.facility_source or "—"),
        ("IT energy", _fmt(r.it_kwh, 1, 2, " kWh")),
        ("PUE (facility / IT energy)", _fmt(r.pue_value, 1, 3) + basis),
        ("peak facility power", _fmt(r.peak_facility_w, 1e3, 1, " kW")),
        (f"peak demand ({r.demand_interval_s:g} s)", _fmt(r.peak_demand_w, 1e3, 1, " kW")),
        ("grid limit (lowest)", _fmt(r.limit_min_w, 1e3, 1, " kW")),
        ("min site headroom", _fmt(r.min_site_headroom_w, 1e3, 1, " kW")),
        ("facility energy data" if r.facility_source == "energy register" else "facility power data",
         _coverage(r.facility)),
        ("IT power data", _coverage(r.it)),
        *_dr(r),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    lv = Table(title="peak and least headroom per level")
    for col in ("level", "entities", "peak", "min headroom", "tightest"):
        lv.add_column(col, justify="left" if col in ("level", "tightest") else "right")
    for rec in r.levels.to_dict("records"):
        row: dict[str, Any] = rec
        lv.add_row(str(row["level"]), str(row["entities"]), _fmt(float(row["peak_w"]), 1e3, 1, " kW"),
                   _fmt(float(row["min_headroom_w"]), 1e3, 1, " kW"), str(row["tightest"]))
    console.print(lv)


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """Summarise a window of stored telemetry (a table, or JSON with ``--json``) and write PNG plots."""
    from dashboards.report import now_ns, open_store, parse_time, pick_site, summarize, write_plots

    store = open_store(args.data_dir)
    try:
        now = now_ns()
        span = store.time_range()
        if span is None:
            raise ConfigError(args.data_dir, [("", "the store holds no readings yet")])
        try:
            start = parse_time(args.since, now) if args.since else span[0]
            end = parse_time(args.until, now) if args.until else span[1] + 1
        except ValueError as exc:
            raise ConfigError("command line", [("--since/--until", str(exc))]) from None
        if end <= start:
            raise ConfigError("command line", [("--since/--until", "the window is empty (until <= since)")])
        site = pick_site(store, args.site)
        r = summarize(store, site, start, end, gap_factor=args.gap_factor, demand_interval_s=args.demand_interval)
        if args.json:
            print(json.dumps(r.to_json(), indent=2 if args.pretty else None, allow_nan=False))
        else:
            _print(r, console)
        if args.out or not args.json:
            out = Path(args.out) if args.out else Path(args.data_dir) / "report"
            for p in write_plots(store, r, out):
                (console if not args.json else Console(stderr=True)).print(f"wrote {p}", highlight=False, markup=False)
    finally:
        store.close()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``powerplane report``."""
    p = sub.add_parser("report", help="energy, PUE, peaks, headroom and DR compliance from stored telemetry")
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("POWERPLANE_DATA_DIR", str(DEFAULT_DATA_DIR))),
                   help="embedded store directory (default: %(default)s)")
    p.add_argument("--since", help="start: ISO 8601 (UTC if no zone), 'now' or relative (-15m, -2h, -1d); "
                                   "default: the first stored reading")
    p.add_argument("--until", help="end (exclusive), same forms; default: after the last stored reading")
    p.add_argument("--site", help="site to report on (default: the only site in the store)")
    p.add_argument("--out", type=Path, help="directory for the PNG plots (default: DATA_DIR/report; "
                                            "with --json, plots only when --out is given)")
    p.add_argument("--json", action="store_true", help="print every figure as one JSON document (see README)")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    p.add_argument("--gap-factor", type=finite_number(float, ge=1.0, le=100.0), default=GAP_FACTOR, metavar="K",
                   help="bridge a stretch without samples up to K x the series' own interval; longer "
                        "stretches are missing and reported (default: %(default)s)")
    p.add_argument("--demand-interval", type=finite_number(float, ge=1.0, le=86400.0), default=900.0, metavar="S",
                   help="peak demand is the highest average power over S seconds, intervals aligned to the "
                        "clock, from the site meter's energy register (default: %(default)s, the usual billing "
                        "interval)")
    p.set_defaults(handler=cmd_report)
