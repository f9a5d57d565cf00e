"""Every panel, variable and alert query against a real InfluxDB 1.x seeded with a twin run.

Variables and macros are expanded as Grafana's InfluxDB datasource expands them: a
multi-value variable with "All" selected becomes ``(v1|v2|...)`` of regex-escaped values,
``$timeFilter`` a ``time >= ...ms and time <= ...ms`` range, ``$__interval`` the panel's
minimum interval (what a short time range gets) unless a test asks for another.
A query that returns no non-null value fails: an empty panel is a broken panel. Then the
values: what the panels show is checked against what the seeding wrote (``Seeded.truth``),
with the tolerance stated at each check.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import pytest

from dashboards import alerts
from dashboards.boards import BOARDS
from dashboards.build import load_committed
from testbed.realservers import InfluxDB1
from tests.conftest import ROOT
from tests.dashboards.seed import Seeded

pytestmark = pytest.mark.servers

Seed = tuple[InfluxDB1, Seeded]


def influxql(srv: InfluxDB1, db: str, q: str) -> list[dict[str, Any]]:
    """Run one InfluxQL statement; return its series (an error fails the test)."""
    url = f"{srv.url}/query?" + urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.loads(r.read())
    (result,) = body["results"]
    assert "error" not in result, f"{q}\n-> {result['error']}"
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def has_values(series: list[dict[str, Any]]) -> bool:
    """True if any row has a non-null value beyond the time column."""
    return any(v is not None for s in series for row in s["values"] for v in row[1:])


def expand(q: str, values: dict[str, list[str]], seeded: Seeded, interval: str = "10s") -> str:
    """Expand variables and macros the way Grafana does for InfluxQL."""
    q = q.replace("$timeFilter", f"time >= {seeded.start_ns // 1_000_000}ms and time <= "
                                 f"{seeded.end_ns // 1_000_000}ms")
    q = q.replace("$__interval", interval)
    for name in sorted(values, key=len, reverse=True):
        q = q.replace(f"${name}", "(" + "|".join(re.escape(v) for v in values[name]) + ")")
    assert not re.search(r"\$[a-z_]", q.replace("$tag_", "")), f"unexpanded variable in {q}"
    return q


@pytest.fixture(scope="module")
def variable_values(seeded_influx: Seed) -> dict[str, list[str]]:
    """Every variable resolved by its own query, in dashboard order (site first)."""
    srv, seeded = seeded_influx
    d = load_committed(ROOT)["powerplane-site-energy"]
    values: dict[str, list[str]] = {}
    for var in d["templating"]["list"]:
        series = influxql(srv, seeded.database, expand(var["query"], values, seeded))
        values[var["name"]] = sorted({row[1] for s in series for row in s["values"]})
    return values


def test_variables_resolve_to_the_demo_hall(variable_values: dict[str, list[str]]) -> None:
    assert variable_values == {"site": ["demo-hall"], "hall": ["hall-a", "hall-b"],
                               "row": ["row-a1", "row-a2", "row-b1", "row-b2"],
                               "rack": [f"r0{i}" for i in range(1, 9)]}


def _targets() -> list[tuple[str, str, str, str]]:
    """(board uid, "panel [ref]", query, the panel's minimum interval) of every target."""
    out = []
    for uid, _ in BOARDS:
        for p in load_committed(ROOT)[uid]["panels"]:
            for t in p.get("targets", []):
                out.append((uid, f"{p['title']} [{t['refId']}]", t["query"], p["interval"]))
    return out


def query_of(uid: str, panel: str, ref: str = "A", *, stat: bool | None = None) -> str:
    """The query of one target (``stat``: of the panel without / with ``GROUP BY time``, where two share a title)."""
    (q,) = [q for u, p, q, _ in _targets() if u == uid and p == f"{panel} [{ref}]"
            and (stat is None or stat == ("GROUP BY time(" not in q))]
    return q


@pytest.mark.parametrize(("uid", "panel", "query", "interval"), _targets(),
                         ids=[f"{u}:{p}" for u, p, _, _ in _targets()])
def test_panel_query_returns_data(seeded_influx: Seed, variable_values: dict[str, list[str]],
                                  uid: str, panel: str, query: str, interval: str) -> None:
    srv, seeded = seeded_influx
    series = influxql(srv, seeded.database, expand(query, variable_values, seeded, interval))
    assert has_values(series), f"{uid}: panel {panel!r} is empty:\n{query}"
    if "GROUP BY time(" in query and "fill(null)" in query:
        # At the panel's minimum interval (a short time range), buckets are not mostly empty:
        # between a series' first and last value, at most 10 % of its buckets are.
        for s in series:
            vals = [row[1] for row in s["values"]]
            filled = [i for i, v in enumerate(vals) if v is not None]
            inner = vals[filled[0]:filled[-1] + 1] if filled else []
            empty = sum(v is None for v in inner) / max(len(inner), 1)
            assert empty <= 0.10, f"{uid}: {panel} {s.get('tags')}: {empty:.0%} empty buckets at {interval}"


def test_rack_headroom_is_within_the_heatmap_scale(seeded_influx: Seed, variable_values: dict[str, list[str]]) -> None:
    srv, seeded = seeded_influx
    series = influxql(srv, seeded.database, expand(
        "SELECT min(\"headroom_w\"), max(\"headroom_w\") FROM \"caps\" WHERE \"level\" = 'rack' AND $timeFilter",
        variable_values, seeded))
    (row,) = series[0]["values"]
    assert 0 <= row[1] <= row[2] <= 600e3


@pytest.mark.parametrize("rule", alerts.RULES, ids=[r.uid for r in alerts.RULES])
def test_alert_query_returns_data(seeded_influx: Seed, rule: alerts.AlertRule) -> None:
    srv, seeded = seeded_influx
    series = influxql(srv, seeded.database, expand(rule.query, {}, seeded))
    assert has_values(series), f"alert {rule.uid} query returns nothing:\n{rule.query}"


# ---- values -----------------------------------------------------------------------------------
WHOLE_RUN = "1h"  # one bucket holds the whole 780 s run (it starts on the hour)


def by_tag(series: list[dict[str, Any]], tag: str) -> dict[str, float]:
    """The single (or last non-null) value of every series, by one of its tags."""
    out = {}
    for s in series:
        vals = [row[1] for row in s["values"] if row[1] is not None]
        if vals:
            out[s["tags"][tag]] = vals[-1]
    return out


def run_query(seed: Seed, values: dict[str, list[str]], q: str, interval: str = WHOLE_RUN) -> list[dict[str, Any]]:
    srv, seeded = seed
    return influxql(srv, seeded.database, expand(q, values, seeded, interval))


@pytest.mark.parametrize("level", ["feed", "ups", "hall", "row", "rack"])
def test_power_vs_limit_shows_each_entity_total(seeded_influx: Seed, variable_values: dict[str, list[str]],
                                                level: str) -> None:
    # Not the mean of the total with its phases, output lines and input side (half the power).
    truth = seeded_influx[1].truth
    title = {"feed": "Utility feeds", "ups": "UPS", "hall": "Halls", "row": "Rows (busways)", "rack": "Racks"}[level]
    got = by_tag(run_query(seeded_influx, variable_values,
                           query_of("powerplane-power-chain", f"{title}: power vs limit")), "id")
    want = {i: float(np.mean(v)) for (lv, i), v in truth.entity_w.items() if lv == level}
    assert got.keys() == want.keys()
    for i, w in want.items():
        assert got[i] == pytest.approx(w, rel=1e-9), i  # the mean of what was written, exactly
    last = by_tag(run_query(seeded_influx, variable_values, query_of("powerplane-power-chain", f"{title}: load")), "id")
    assert last == pytest.approx({i: v[-1] for (lv, i), v in truth.entity_w.items() if lv == level}, rel=1e-9)


def test_cooling_temperatures_are_the_cdus(seeded_influx: Seed, variable_values: dict[str, list[str]]) -> None:
    truth = seeded_influx[1].truth
    uid = "powerplane-cooling"
    supply = run_query(seeded_influx, variable_values, query_of(uid, "Supply and return temperature", "A"))
    back = run_query(seeded_influx, variable_values, query_of(uid, "Supply and return temperature", "B"))
    dt = run_query(seeded_influx, variable_values, query_of(uid, "Loop ΔT"))
    for series in (supply, back, dt):
        assert sorted(s["tags"]["loop"] for s in series) == sorted(truth.loop_supply_c)  # no unnamed series
    # Means of the CDU series exactly as written (the facility water, 4 °C cooler, is not mixed in).
    assert by_tag(supply, "loop") == pytest.approx({k: np.mean(v) for k, v in truth.loop_supply_c.items()}, abs=1e-9)
    assert by_tag(back, "loop") == pytest.approx({k: np.mean(v) for k, v in truth.loop_return_c.items()}, abs=1e-9)
    assert by_tag(dt, "loop") == pytest.approx(
        {k: np.mean(truth.loop_return_c[k]) - np.mean(truth.loop_supply_c[k]) for k in truth.loop_supply_c}, abs=1e-9)
    heat = by_tag(run_query(seeded_influx, variable_values, query_of(uid, "Loop heat vs capacity", "A")), "loop")
    assert heat == pytest.approx({k: np.mean(v) for k, v in truth.loop_heat_w.items()}, rel=1e-9)
    racks = run_query(seeded_influx, variable_values, query_of(uid, "Rack leak detection"), "5s")
    assert sorted(s["tags"]["id"] for s in racks) == variable_values["rack"]


def test_site_energy_stats(seeded_influx: Seed, variable_values: dict[str, list[str]]) -> None:
    truth = seeded_influx[1].truth
    uid = "powerplane-site-energy"

    def stat(title: str) -> float:
        (s,) = run_query(seeded_influx, variable_values, query_of(uid, title, stat=True), "5s")
        return float(s["values"][-1][1])

    assert stat("Site power") == truth.site_w[-1]
    assert stat("IT power") == truth.it_w[-1]
    assert stat("Grid limit") == truth.limit_w[-1]
    # PUE as the period wrote it: facility / IT at the last period (the meter's value there).
    assert stat("PUE") == pytest.approx(truth.site_w[-1] / truth.it_w[-1], rel=1e-9)
    # Energy: what the meter's register counted between its first and last reading, which is
    # the twin's own integral over that time. (The integral of its 2 s power readings was 4 %
    # low: the training jobs swing at 0.5 Hz and a meter read every 2 s sees each swing at
    # nearly the same phase.)
    assert stat("Energy today") == pytest.approx(truth.site_wh[-1] - truth.site_wh[0], rel=1e-12)
    assert stat("Energy today") == pytest.approx(truth.facility_energy_wh, rel=2e-3)


def test_non_compliant_nodes_counts_nodes_not_events(seeded_influx: Seed,
                                                     variable_values: dict[str, list[str]]) -> None:
    """Per-rack events carry the node count; the stat shows the most nodes non-compliant at once."""
    truth = seeded_influx[1].truth
    assert truth.non_compliant_peak == 2 and truth.non_compliant_events > len(truth.non_compliant_racks)
    (stat_q,) = [q for u, p, q, _ in _targets() if u == "powerplane-capping" and p == "Non-compliant nodes [A]"]
    (s,) = run_query(seeded_influx, variable_values, stat_q, "1m")
    assert s["values"][-1][1] == truth.non_compliant_peak
    (table,) = [q for u, p, q, _ in _targets() if u == "powerplane-capping" and p == "Non-compliance by rack [A]"]
    rows = run_query(seeded_influx, variable_values, table, "1m")
    assert sorted(r["tags"]["entity"] for r in rows) == sorted(truth.non_compliant_racks)
    episodes = {r["tags"]["entity"]: r["values"][0][r["columns"].index("episodes")] for r in rows}
    assert sum(episodes.values()) == truth.non_compliant_events


def test_binding_constraints_are_the_plan_in_force(seeded_influx: Seed,
                                                   variable_values: dict[str, list[str]]) -> None:
    seeded = seeded_influx[1]
    plan = seeded.truth.last_plan
    assert plan is not None
    want = set()
    for c in plan.binding_constraints():
        level, _, ident = plan.constraint_names[c].partition(" ")
        want.add((level, ident or seeded.site))
    rows = run_query(seeded_influx, variable_values, query_of("powerplane-capping", "Binding constraints"), "5s")
    assert {(r["tags"]["level"], r["tags"]["id"]) for r in rows} == want
    # ... and not everything that bound at some time in the run
    ever = run_query(seeded_influx, variable_values, 'SELECT max("binding") FROM "caps" WHERE $timeFilter '
                     'AND "binding" = 1 GROUP BY "level", "id"')
    assert len(ever) > len(want)


def test_caps_by_job_are_the_per_gpu_caps_the_controller_announced(
        seeded_influx: Seed, variable_values: dict[str, list[str]]) -> None:
    truth = seeded_influx[1].truth
    rows = run_query(seeded_influx, variable_values, query_of("powerplane-capping", "Caps by job and priority"), "1m")
    got = {r["tags"]["entity"]: r["values"][0][r["columns"].index("cap_w_per_gpu")] for r in rows}
    assert got == pytest.approx(truth.job_cap_w, rel=1e-12)
    assert all(100 <= w <= 2000 for w in got.values())  # watts per GPU, not per job


def _fires(series: list[dict[str, Any]], rule: alerts.AlertRule) -> bool:
    last = [s["values"][-1][1] for s in series if s["values"][-1][1] is not None]
    return any(v < rule.threshold if rule.op == "lt" else v > rule.threshold for v in last)


def test_alerts_fire_on_the_scenario_and_not_before(seeded_influx: Seed) -> None:
    # Evaluate each rule's A/B/C chain (query, last value per series, threshold) over a window
    # where the scenario makes it true, and over the first minutes of the run, where all is well.
    srv, seeded = seeded_influx
    s0 = seeded.start_ns // 1_000_000

    def window(rule: alerts.AlertRule, a_s: float, b_s: float) -> list[dict[str, Any]]:
        q = rule.query.replace("$timeFilter", f"time >= {s0 + int(a_s * 1e3)}ms and time <= {s0 + int(b_s * 1e3)}ms")
        return influxql(srv, seeded.database, q)

    by_uid = {r.uid: r for r in alerts.RULES}
    # pump failure 420-570 s: CDU-1 stops answering
    assert _fires(window(by_uid["powerplane-device-stale"], 430, 500), by_uid["powerplane-device-stale"])
    # DR (announced at 60 s, lead 10 s, from 120 s): the floors exceed the site's DR budget at first. (The
    # loop infeasibility the pump failure used to cause lasted one period, a marginal event that the
    # scheduler's half rack in r06 — [[twin.jobs]] — no longer produces.)
    assert _fires(window(by_uid["powerplane-constraint-infeasible"], 100, 130),
                  by_uid["powerplane-constraint-infeasible"])
    # store outage 300-480 s: the spool grows
    assert _fires(window(by_uid["powerplane-spool-growing"], 300, 470), by_uid["powerplane-spool-growing"])
    for r in (by_uid["powerplane-device-stale"], by_uid["powerplane-spool-growing"]):
        assert not _fires(window(r, 0, 100), r), r.uid
    # The controller reports infeasible constraints only at some times (start-up, DR, the pump
    # failure); between them the rule is quiet.
    quiet = by_uid["powerplane-constraint-infeasible"]
    assert not any(130 <= t <= 400 for t in seeded.truth.infeasible_s) and seeded.truth.infeasible_s
    assert not _fires(window(quiet, 130, 400), quiet)
    # stale telemetry fires on silence: a window after the run has no site reading at all
    stale = by_uid["powerplane-telemetry-stale"]
    assert window(stale, 2000, 2100) == [] and stale.no_data == "Alerting"
