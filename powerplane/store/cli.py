"""``powerplane report``: summary table and PNG plots of the embedded store."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from models.errors import ConfigError
from powerplane.store.config import DEFAULT_DATA_DIR
from powerplane.store.report import now_ns, open_store, parse_time, pick_site, summarize, write_plots


def _fmt(v: float, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    return "—" if not math.isfinite(v) else f"{v / scale:,.{digits}f}{unit}"


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """Summarise a window of stored telemetry and write PNG plots."""
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
        s = summarize(store, site, start, end)
        t0, t1 = pd.Timestamp(start, unit="ns", tz="UTC"), pd.Timestamp(end, unit="ns", tz="UTC")
        table = Table(title=Text(f"{site}: {t0:%Y-%m-%d %H:%M:%S} – {t1:%Y-%m-%d %H:%M:%S} UTC"), show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        rows: list[tuple[str, str]] = [
            ("facility energy", _fmt(s.facility_kwh, 1, 2, " kWh")),
            ("IT energy", _fmt(s.it_kwh, 1, 2, " kWh")),
            ("PUE (energy-weighted)", _fmt(s.pue, 1, 3)),
            ("peak facility power", _fmt(s.peak_facility_w, 1e3, 1, " kW")),
            ("grid limit (lowest)", _fmt(s.limit_w, 1e3, 1, " kW")),
            ("min site headroom", _fmt(s.min_site_headroom_w, 1e3, 1, " kW")),
            ("data coverage", _fmt(100 * s.coverage, 1, 1, " %")),
            ("DR time in force", _fmt(s.dr.active_s, 1, 0, " s")),
            ("DR compliance", _fmt(100 * s.dr.compliance, 1, 1, " %")),
            ("DR worst excess", _fmt(s.dr.max_excess_w, 1e3, 1, " kW")),
        ]
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)
        lv = Table(title="peak and least headroom per level")
        for col in ("level", "entities", "peak", "min headroom", "tightest"):
            lv.add_column(col, justify="left" if col in ("level", "tightest") else "right")
        for r in s.levels.to_dict("records"):
            rec: dict[str, Any] = r
            lv.add_row(Text(str(rec["level"])), str(rec["entities"]), _fmt(float(rec["peak_w"]), 1e3, 1, " kW"),
                       _fmt(float(rec["min_headroom_w"]), 1e3, 1, " kW"), Text(str(rec["tightest"])))
        console.print(lv)
        out = Path(args.out) if args.out else Path(args.data_dir) / "report"
        for p in write_plots(store, s, out):
            console.print(f"wrote {p}", highlight=False, markup=False)
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
    p.add_argument("--out", type=Path, help="directory for the PNG plots (default: DATA_DIR/report)")
    p.set_defaults(handler=cmd_report)
