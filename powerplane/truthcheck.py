"""The demo's report checked against the twin: what an operator would read, against the truth.

After a demo run the stored telemetry is summarised exactly as ``powerplane report`` does
(default window: first to last stored reading), and each figure is compared with the
twin's own integrals over **the same time**: facility energy over the seconds the site
meter covers, IT energy over the seconds IT power covers, PUE over the seconds both cover,
the peak demand over the same interval, and the highest reading against the twin's peak
(``models.twin.truth.energy_over`` / ``peak_over``).
Gaps the report marks missing are left out of both sides; nothing is compared over time
the report does not claim to know.

Tolerances (``TOLERANCE``): energies 1 %, PUE 0.01 (absolute), peak demand (the highest
average over one demand interval, from the energy register: a quarter-hour in runs that hold
three, else a minute, ``demand_interval_s``) 1 %. The highest *reading* of a meter polled
every 2 s can miss a sub-second peak between readings; it is checked never to exceed the
twin's true peak by more than 1 % (it must not claim a peak that did not happen), and its
shortfall is shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dashboards import analytics
from dashboards.report import Report, open_store, pick_site, summarize
from models.twin.truth import energy_over, peak_over, read_series

TOLERANCE = {"facility_energy": 0.01, "it_energy": 0.01, "pue": 0.01, "peak_demand": 0.01, "peak_reading": 0.01}
BILLING_INTERVAL_S = 900.0  # a utility's demand interval
SHORT_INTERVAL_S = 60.0  # the default demo is 13 minutes long: a minute's demand instead


def demand_interval_s(window_s: float) -> float:
    """The billing quarter-hour when the run holds three of them, else a minute. Each end of an
    interval sits between two register readings, and a reading stamped a second off moves a
    minute's demand by ~1.7 % (a 10-hour soak's highest minute read +2.5 %), a quarter-hour's by
    0.1 %."""
    return BILLING_INTERVAL_S if window_s >= 3 * BILLING_INTERVAL_S else SHORT_INTERVAL_S


def _spans_ns(report: Report, spans: analytics.Spans) -> list[tuple[int, int]]:
    return [(report.start_ns + round(a * 1e9), report.start_ns + round(b * 1e9))
            for a, b in zip(spans.start.tolist(), spans.end.tolist(), strict=True)]


def _covered(report: Report, e: analytics.Energy) -> analytics.Spans:
    return e.coverage.gaps.complement(0.0, e.coverage.window_s)


def compare(report: Report, series: np.ndarray) -> dict[str, Any]:
    """Each report figure beside the twin's over the same spans, its error and whether it is within tolerance."""
    out: dict[str, Any] = {"window_s": (report.end_ns - report.start_ns) / 1e9, "tolerance": TOLERANCE, "checks": {}}
    checks: dict[str, dict[str, Any]] = out["checks"]

    def rel(name: str, ours: float, truth: float) -> None:
        err = (ours - truth) / truth if truth else float("nan")
        checks[name] = {"report": ours, "twin": truth, "error": err,
                        "ok": bool(np.isfinite(err) and abs(err) <= TOLERANCE[name])}

    if report.facility is not None:
        fac_spans = _spans_ns(report, _covered(report, report.facility))
        rel("facility_energy", report.facility.kwh, energy_over(series, fac_spans, "facility_wh"))
        out["facility_covered_s"] = report.facility.coverage.covered_s
        if report.peak_demand_start_ns is not None:
            a = report.peak_demand_start_ns
            b = a + round(report.demand_interval_s * 1e9)
            rel("peak_demand", report.peak_demand_w, energy_over(series, [(a, b)], "facility_wh") * 3.6e6
                / report.demand_interval_s)
        # The highest reading can miss a peak between two readings, but never claim one the
        # twin did not draw (one-sided; the error is shown).
        true_peak = peak_over(series, fac_spans, "facility_max_w")
        err = (report.peak_facility_w - true_peak) / true_peak if true_peak else float("nan")
        checks["peak_reading"] = {"report": report.peak_facility_w, "twin": true_peak, "error": err,
                                  "ok": bool(report.peak_facility_w <= true_peak * (1 + TOLERANCE["peak_reading"]))}
    if report.it is not None:
        it_spans = _spans_ns(report, _covered(report, report.it))
        rel("it_energy", report.it.kwh, energy_over(series, it_spans, "it_wh"))
        out["it_covered_s"] = report.it.coverage.covered_s
    if report.pue is not None and report.facility is not None and report.it is not None:
        both = _spans_ns(report, _covered(report, report.facility) & _covered(report, report.it))
        fac, it = energy_over(series, both, "facility_wh"), energy_over(series, both, "it_wh")
        truth = fac / it if it else float("nan")
        err = report.pue.value - truth
        checks["pue"] = {"report": report.pue.value, "twin": truth, "error": err,
                         "ok": bool(np.isfinite(err) and abs(err) <= TOLERANCE["pue"])}
    # Peak demand is over whole clock-aligned intervals the register covers; a short run (or
    # one whose register gap splits every interval) has none: said, not failed.
    out["not_checked"] = {}
    if report.facility_source == "energy register" and report.peak_demand_start_ns is None:
        out["not_checked"]["peak_demand"] = (
            f"the register covers no whole {report.demand_interval_s:g} s demand interval of the "
            f"{out['window_s']:.0f} s run")
    missing = [k for k in TOLERANCE if k not in checks and k not in out["not_checked"]]
    out["missing"] = missing
    out["ok"] = not missing and all(c["ok"] for c in checks.values())
    return out


def check_run(data_dir: Path, series_file: Path) -> dict[str, Any]:
    """Summarise the store under ``data_dir`` as ``powerplane report`` would and compare it with the twin."""
    store = open_store(data_dir)
    try:
        span = store.time_range()
        if span is None:
            return {"ok": False, "missing": list(TOLERANCE), "checks": {}, "error": "the store holds no readings"}
        report = summarize(store, pick_site(store, None), span[0], span[1] + 1,
                           demand_interval_s=demand_interval_s((span[1] - span[0]) / 1e9))
    finally:
        store.close()
    return compare(report, read_series(series_file))


def describe(check: dict[str, Any]) -> str:
    """One line for a terminal."""
    parts = []
    for name, c in check.get("checks", {}).items():
        label = name.replace("_", " ")
        if name == "pue":
            parts.append(f"{label} {c['report']:.3f} vs {c['twin']:.3f}")
        else:
            parts.append(f"{label} {100 * c['error']:+.2f}%")
    for name, why in check.get("not_checked", {}).items():
        parts.append(f"{name.replace('_', ' ')} not checked ({why})")
    if check.get("missing"):
        parts.append("not in the store: " + ", ".join(check["missing"]))
    if check.get("error"):
        parts.append(str(check["error"]))
    return ("within tolerance: " if check.get("ok") else "OUT OF TOLERANCE: ") + "; ".join(parts)
