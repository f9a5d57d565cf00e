"""Capping: the caps in force by job and priority, what they withhold, and what went wrong."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.panels import (
    BY_TIME,
    EVERY_EVENT,
    EVERY_FAST,
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
_CTL = f"FROM \"controller\" {WHERE_SITE}"


def _events(kind: str) -> str:
    return f"FROM \"events\" {WHERE_SITE} AND \"kind\" = '{kind}'"


def _distinct(kind: str) -> str:
    """How many distinct entities (nodes, constraints) had an event of ``kind``: not how many events."""
    return f'SELECT count("n") FROM (SELECT count("message") AS "n" {_events(kind)} GROUP BY "entity")'


def build() -> Dashboard:
    """The Capping dashboard."""
    d = new_dashboard(UID, "Capping", "GPU power caps by job and priority, power withheld, binding and "
                      "infeasible constraints, non-compliant nodes, lease fallbacks and move recommendations.",
                      ["caps"])
    warn = steps((None, "green"), (1, "orange"))
    d = (d
         .with_panel(stat_panel("GPUs capped", f'SELECT last("gpus_capped") {_SITE}', "none", interval=EVERY_FAST,
                                span=4, thresholds=warn))
         .with_panel(stat_panel("Power withheld", f'SELECT last("cut_w") {_SITE}', "watt", interval=EVERY_FAST, span=4,
                                thresholds=warn))
         .with_panel(stat_panel("Infeasible constraints", _distinct(EV_INFEASIBLE), "none", interval=EVERY_EVENT,
                                span=4, thresholds=steps((None, "green"), (1, "red")),
                                description="Distinct constraints reported infeasible in the time range."))
         .with_panel(stat_panel("Non-compliant nodes",
                                f'SELECT max("noncompliant_nodes") FROM "actuation" {WHERE_SITE}', "none",
                                interval=EVERY_FAST, span=4, thresholds=warn,
                                description="The most nodes accounted at worst case at once in the time range "
                                            "(they did not follow their cap)."))
         .with_panel(stat_panel("Lease fallbacks", f'SELECT sum("value") {_events(EV_LEASE_FALLBACK)}', "none",
                                interval=EVERY_EVENT, span=4, thresholds=warn,
                                description="Nodes that fell back to their safe cap in the time range (one event "
                                            "per rack and period carries the node count)."))
         .with_panel(stat_panel("Solve time", f'SELECT last("solve_ms") {_SITE}', "ms", interval=EVERY_FAST, span=4,
                                description="Solver time of the plan in force."))
         .with_row(db.Row("Caps by job"))
         .with_panel(ts_panel("Caps by job", [
             (f'SELECT mean("cap_w") {_JOBS} {BY_TIME}, "id" fill(null)', "$tag_id cap"),
             (f'SELECT mean("demand_w") {_JOBS} {BY_TIME}, "id" fill(null)', "$tag_id demand"),
         ], "watt", interval=EVERY_FAST, minimum=0, span=12))
         .with_panel(ts_panel("Power withheld by job", [
             (f'SELECT mean("cut_w") {_JOBS} {BY_TIME}, "id" fill(null)', "$tag_id"),
         ], "watt", interval=EVERY_FAST, minimum=0, span=12, description="Demand not granted (caps.cut_w)."))
         .with_panel(table_panel("Caps by job and priority",
                                 f'SELECT last("value") AS "cap_w_per_gpu", last("priority") AS "priority", '
                                 f'last("gpus") AS "gpus" {_events(EV_CAP_CHANGED)} GROUP BY "entity"',
                                 interval=EVERY_EVENT, unit="watt",
                                 description="Latest cap change of every job: its per-GPU cap, priority (0 = "
                                             "highest, cut last) and GPUs."))
         .with_panel(table_panel("Binding constraints",
                                 'SELECT "headroom_w", "limit_w" FROM (SELECT last("binding") AS "binding", '
                                 'last("headroom_w") AS "headroom_w", last("limit_w") AS "limit_w" '
                                 f'FROM "caps" {WHERE_SITE} GROUP BY "level", "id") WHERE "binding" = 1 '
                                 'GROUP BY "level", "id"',
                                 interval=EVERY_FAST, span=12, unit="watt",
                                 description="Constraints that bind the plan in force (the latest plan), with "
                                             "their headroom and limit."))
         .with_row(db.Row("What needs an operator"))
         .with_panel(table_panel("Infeasible constraints",
                                 f'SELECT "entity", "message", "value" AS "deficit_w" {_events(EV_INFEASIBLE)}',
                                 interval=EVERY_EVENT, span=12,
                                 description="Floors alone exceed the constraint (deficit in W)."))
         .with_panel(table_panel("Move recommendations",
                                 f'SELECT "entity", "message", "value" AS "freed_w" {_events(EV_MOVE)}',
                                 interval=EVERY_EVENT, span=12))
         .with_panel(table_panel("Non-compliance by rack",
                                 f'SELECT sum("value") AS "nodes", last("message") AS "last_message", '
                                 f'count("message") AS "episodes" {_events(EV_NON_COMPLIANT)} GROUP BY "entity"',
                                 interval=EVERY_EVENT, span=12,
                                 description="One row per rack with nodes that failed to follow their cap: node "
                                             "episodes, the latest message (naming nodes) and how many periods."))
         .with_panel(ts_panel("Lease fallbacks", [
             (f'SELECT sum("value") {_events(EV_LEASE_FALLBACK)} {BY_TIME} fill(0)', "nodes"),
         ], "none", interval=EVERY_EVENT, bars=True, span=12,
             description="Nodes that fell back to their safe cap when the lease ran out."))
         .with_row(db.Row("Control loop"))
         .with_panel(ts_panel("Period lateness and duration", [
             (f'SELECT max("late_ms") {_CTL} {BY_TIME} fill(null)', "start late"),
             (f'SELECT max("period_ms") {_CTL} {BY_TIME} fill(null)', "period took"),
         ], "ms", interval=EVERY_FAST, minimum=0, span=12,
             description="How late each period started and how long it took (wall ms, worst per bucket). A "
                         "period later than one period is skipped and counted as missed."))
         .with_panel(ts_panel("Stage times", [
             (f'SELECT max("{st}_ms") {_CTL} {BY_TIME} fill(null)', st)
             for st in ("ingest", "verify", "solve", "publish", "store", "report")
         ], "ms", interval=EVERY_FAST, minimum=0, span=12,
             description="Where the period goes: readings and statuses in, verification, the plan, signed "
                         "commands out, the hand-off to the store and hooks, the health readings and the "
                         "live state snapshot (worst per bucket)."))
         .with_panel(ts_panel("Missed periods and errors", [
             (f'SELECT non_negative_difference(last("missed_periods")) {_CTL} {BY_TIME} fill(null)', "missed"),
             (f'SELECT non_negative_difference(last("errors")) {_CTL} {BY_TIME} fill(null)', "failed"),
         ], "none", interval=EVERY_FAST, minimum=0, bars=True, span=12,
             description="Periods skipped because the loop was late, and periods that raised (each one is also a "
                         "control_error event)."))
         )
    return d.build()
