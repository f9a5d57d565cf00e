"""Every panel, variable and alert query returns data from a real, twin-seeded InfluxDB 1.x.

Variables and macros are expanded as Grafana's InfluxDB datasource expands them: a
multi-value variable with "All" selected becomes ``(v1|v2|...)`` of regex-escaped values,
``$timeFilter`` a ``time >= ...ms and time <= ...ms`` range, ``$__interval`` a duration.
A query that returns no non-null value fails: an empty panel is a broken panel.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from typing import Any

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


def expand(q: str, values: dict[str, list[str]], seeded: Seeded) -> str:
    """Expand variables and macros the way Grafana does for InfluxQL."""
    q = q.replace("$timeFilter", f"time >= {seeded.start_ns // 1_000_000}ms and time <= "
                                 f"{seeded.end_ns // 1_000_000}ms")
    q = q.replace("$__interval", "10s")
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


def _targets() -> list[tuple[str, str, str]]:
    out = []
    for uid, _ in BOARDS:
        for p in load_committed(ROOT)[uid]["panels"]:
            for t in p.get("targets", []):
                out.append((uid, f"{p['title']} [{t['refId']}]", t["query"]))
    return out


@pytest.mark.parametrize(("uid", "panel", "query"), _targets(), ids=[f"{u}:{p}" for u, p, _ in _targets()])
def test_panel_query_returns_data(seeded_influx: Seed, variable_values: dict[str, list[str]],
                                  uid: str, panel: str, query: str) -> None:
    srv, seeded = seeded_influx
    series = influxql(srv, seeded.database, expand(query, variable_values, seeded))
    assert has_values(series), f"{uid}: panel {panel!r} is empty:\n{query}"


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
    # pump failure 420-570 s: CDU-1 stops answering, the controller reports the loop infeasible
    assert _fires(window(by_uid["powerplane-device-stale"], 430, 500), by_uid["powerplane-device-stale"])
    assert _fires(window(by_uid["powerplane-constraint-infeasible"], 420, 500),
                  by_uid["powerplane-constraint-infeasible"])
    # store outage 300-480 s: the spool grows
    assert _fires(window(by_uid["powerplane-spool-growing"], 300, 470), by_uid["powerplane-spool-growing"])
    for r in (by_uid["powerplane-device-stale"], by_uid["powerplane-spool-growing"],
              by_uid["powerplane-constraint-infeasible"]):
        assert not _fires(window(r, 0, 100), r), r.uid
    # stale telemetry fires on silence: a window after the run has no site reading at all
    stale = by_uid["powerplane-telemetry-stale"]
    assert window(stale, 2000, 2100) == [] and stale.no_data == "Alerting"
