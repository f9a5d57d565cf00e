"""Capping: the caps in force by job and priority, what they withhold, and what went wrong."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.panels import (
    BY_TIME,
    WHERE_SITE,
    new_dashboard,
    stat_panel,
    steps,
    table_panel,
    ts_panel,
)
from models.events import (
    EV_CAP_CHANGED,
    EV_INFEASIBLE,
    EV_LEASE_FALLBACK,
    EV_MOVE,
    EV_NON_COMPLIANT,
)

UID = "powerplane-capping"
_JOBS = f"FROM \"caps\" {WHERE_SITE} AND \"level\" = 'job'"
_SITE = f"FROM \"caps\" {WHERE_SITE} AND \"level\" = 'site'"


def _events(kind: str) -> str:
    return f"FROM \"events\" {WHERE_SITE} AND \"kind\" = '{kind}'"


def build() -> Dashboard:
    """The Capping dashboard."""
    d = new_dashboard(UID, "Capping", "GPU power caps by job and priority, power withheld, binding and "
                      "infeasible constraints, non-compliant nodes, lease fallbacks and move recommendations.",
                      ["caps"])
    warn = steps((None, "green"), (1, "orange"))
    d = (d
         .with_panel(stat_panel("GPUs capped", f'SELECT last("gpus_capped") {_SITE}', "none", span=4,
                                thresholds=warn))
         .with_panel(stat_panel("Power withheld", f'SELECT last("cut_w") {_SITE}', "watt", span=4, thresholds=warn))
         .with_panel(stat_panel("Infeasible constraints", f'SELECT count("message") {_events(EV_INFEASIBLE)}',
                                "none", span=4, thresholds=steps((None, "green"), (1, "red"))))
         .with_panel(stat_panel("Non-compliant nodes", f'SELECT count("message") {_events(EV_NON_COMPLIANT)}',
                                "none", span=4, thresholds=warn))
         .with_panel(stat_panel("Lease fallbacks", f'SELECT count("message") {_events(EV_LEASE_FALLBACK)}',
                                "none", span=4, thresholds=warn))
         .with_panel(stat_panel("Solve time", f'SELECT last("solve_ms") {_SITE}', "ms", span=4,
                                description="Solver time of the plan in force."))
         .with_row(db.Row("Caps by job"))
         .with_panel(ts_panel("Caps by job", [
             (f'SELECT mean("cap_w") {_JOBS} {BY_TIME}, "id" fill(null)', "$tag_id cap"),
             (f'SELECT mean("demand_w") {_JOBS} {BY_TIME}, "id" fill(null)', "$tag_id demand"),
         ], "watt", minimum=0, span=12))
         .with_panel(ts_panel("Power withheld by job", [
             (f'SELECT mean("cut_w") {_JOBS} {BY_TIME}, "id" fill(null)', "$tag_id"),
         ], "watt", minimum=0, span=12, description="Demand not granted (caps.cut_w)."))
         .with_panel(table_panel("Caps by job and priority",
                                 f'SELECT last("value") AS "cap_w", last("priority") AS "priority" '
                                 f'{_events(EV_CAP_CHANGED)} GROUP BY "entity"', unit="watt",
                                 description="Latest cap change of every job with its priority (0 = highest, "
                                             "cut last)."))
         .with_panel(table_panel("Binding constraints",
                                 f'SELECT last("headroom_w") AS "headroom_w", last("limit_w") AS "limit_w" '
                                 f"FROM \"caps\" {WHERE_SITE} AND \"binding\" = 1 GROUP BY \"level\", \"id\"",
                                 span=12, unit="watt", description="Constraints that bound the plan in force."))
         .with_row(db.Row("What needs an operator"))
         .with_panel(table_panel("Infeasible constraints",
                                 f'SELECT "entity", "message", "value" AS "deficit_w" {_events(EV_INFEASIBLE)}',
                                 span=12, description="Floors alone exceed the constraint (deficit in W)."))
         .with_panel(table_panel("Move recommendations",
                                 f'SELECT "entity", "message", "value" AS "freed_w" {_events(EV_MOVE)}', span=12))
         .with_panel(table_panel("Non-compliant nodes",
                                 f'SELECT "entity", "message", "value" AS "over_cap_w" {_events(EV_NON_COMPLIANT)}',
                                 span=12, description="Nodes drawing more than their cap."))
         .with_panel(ts_panel("Lease fallbacks", [
             (f'SELECT count("message") {_events(EV_LEASE_FALLBACK)} {BY_TIME} fill(0)', "fallbacks"),
         ], "none", bars=True, span=12, description="Agents that fell back to their safe cap when the lease ran out."))
         )
    return d.build()
