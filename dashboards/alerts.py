"""Alert rules, as Grafana unified-alerting file provisioning.

Each rule is one InfluxQL query (A) reduced to one number per series (B) and compared
with a threshold (C); Grafana expands ``$timeFilter`` over the rule's relative time range.
The rules are data here so that the tests run every query against a real InfluxDB; ``render()``
writes the YAML that ``deploy/grafana/provisioning/alerting/`` ships.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

from dashboards.influxql import DATASOURCE_UID
from models.events import EV_INFEASIBLE

FOLDER = "powerplane"
GROUP = "powerplane"
INTERVAL = "1m"
HEADROOM_MIN_FRACTION = 0.05  # alert when less than 5 % of a limit is left
LOOP_MAX_FRACTION = 0.9  # alert when a loop carries more than 90 % of what it can remove
STALE_AFTER_S = 120  # no site reading for 2 minutes: telemetry is stale
SPOOL_WINDOW_S = 600  # the spool grew over the last 10 minutes

Op = Literal["gt", "lt"]
NoData = Literal["OK", "NoData", "Alerting"]


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert: ``reducer(query) op threshold`` for ``for_`` over the last ``range_s`` seconds."""

    uid: str
    title: str
    query: str
    reducer: Literal["last", "max", "min", "mean", "count"]
    op: Op
    threshold: float
    range_s: int
    for_: str
    no_data: NoData
    severity: Literal["warning", "critical"]
    summary: str
    description: str


RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "powerplane-headroom-low", "Headroom below 5 % of a limit",
        'SELECT last("headroom_w") / last("limit_w") FROM "caps" WHERE $timeFilter '
        "AND \"level\" =~ /^(site|feed|ups|hall|row|rack|loop)$/ GROUP BY \"site\", \"level\", \"id\"",
        "last", "lt", HEADROOM_MIN_FRACTION, 300, "2m", "OK", "warning",
        "{{ $labels.level }} {{ $labels.id }} at {{ $labels.site }}: headroom below 5 %",
        "The planned load of this constraint is within 5 % of its limit; the controller is capping. "
        "Check the Capping and Power chain dashboards."),
    AlertRule(
        "powerplane-constraint-infeasible", "Constraint infeasible",
        f'SELECT count("message") FROM "events" WHERE $timeFilter AND "kind" = \'{EV_INFEASIBLE}\' '
        'GROUP BY "site", "entity"',
        "last", "gt", 0, 300, "0s", "OK", "critical",
        "{{ $labels.entity }} at {{ $labels.site }}: GPU floors alone exceed the limit",
        "Even at minimum caps the load under this constraint exceeds its limit: move or preempt work "
        "(see the move recommendations on the Capping dashboard)."),
    AlertRule(
        "powerplane-loop-near-capacity", "Cooling loop near capacity",
        'SELECT last("heat_w") / last("capacity_w") FROM "cooling" WHERE $timeFilter GROUP BY "site", "loop"',
        "last", "gt", LOOP_MAX_FRACTION, 300, "1m", "OK", "critical",
        "loop {{ $labels.loop }} at {{ $labels.site }} above 90 % of its capacity",
        "The loop removes more than 90 % of the heat it can remove at its current flow and supply "
        "temperature (pump failure or warm facility water?). Racks on it will be capped."),
    AlertRule(
        "powerplane-telemetry-stale", "Telemetry stale",
        'SELECT count("facility_w") FROM "site" WHERE $timeFilter GROUP BY "site"',
        "last", "lt", 1, STALE_AFTER_S, "0s", "Alerting", "critical",
        "no site power reading for 2 minutes",
        "No site power reading reached the store for 2 minutes: collectors, broker or store are down. "
        "The controller accounts stale telemetry at worst case."),
    AlertRule(
        "powerplane-device-stale", "Device not answering",
        'SELECT last("consecutive_failures") FROM "collector" WHERE $timeFilter GROUP BY "site", "device"',
        "last", "gt", 2, 300, "1m", "OK", "warning",
        "device {{ $labels.device }} at {{ $labels.site }} failed 3 polls in a row",
        "Its readings are stale; see the Collector health dashboard."),
    AlertRule(
        "powerplane-spool-growing", "Store spool growing",
        'SELECT last("spooled_points") - first("spooled_points") FROM "store" WHERE $timeFilter '
        'GROUP BY "site", "sink"',
        "last", "gt", 0, SPOOL_WINDOW_S, "5m", "OK", "warning",
        "spool of {{ $labels.sink }} at {{ $labels.site }} grew over 10 minutes",
        "Points are waiting on disk because the server is unreachable or slow; when the spool bound is "
        "reached points are dropped (counted in store.dropped_points)."),
)


def _rule(r: AlertRule) -> dict[str, Any]:
    return {
        "uid": r.uid,
        "title": r.title,
        "condition": "C",
        "data": [
            {"refId": "A", "relativeTimeRange": {"from": r.range_s, "to": 0}, "datasourceUid": DATASOURCE_UID,
             "model": {"refId": "A", "query": r.query, "rawQuery": True, "resultFormat": "time_series",
                       "intervalMs": 1000, "maxDataPoints": 43200}},
            {"refId": "B", "datasourceUid": "__expr__",
             "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": r.reducer,
                       "settings": {"mode": "dropNN"}}},
            {"refId": "C", "datasourceUid": "__expr__",
             "model": {"refId": "C", "type": "threshold", "expression": "B",
                       "conditions": [{"evaluator": {"type": r.op, "params": [r.threshold]}}]}},
        ],
        "noDataState": r.no_data,
        "execErrState": "Error",
        "for": r.for_,
        "annotations": {"summary": r.summary, "description": r.description},
        "labels": {"severity": r.severity, "team": "facility"},
        "isPaused": False,
    }


def provisioning() -> dict[str, Any]:
    """The alerting provisioning document (apiVersion 1, one rule group)."""
    return {"apiVersion": 1, "groups": [{"orgId": 1, "name": GROUP, "folder": FOLDER, "interval": INTERVAL,
                                         "rules": [_rule(r) for r in RULES]}]}


def render() -> str:
    """The provisioning document as YAML (stable: same rules, same bytes)."""
    head = "# Generated by `powerplane dashboards build` from dashboards/alerts.py: do not edit.\n"
    return head + str(yaml.safe_dump(provisioning(), sort_keys=False, allow_unicode=True, width=100))
