"""Cooling: every loop's heat against what it can remove now, temperatures, flow, pumps, leaks."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.panels import (
    BY_TIME,
    WHERE_SITE,
    bar_panel,
    new_dashboard,
    state_panel,
    steps,
    ts_panel,
    value_map,
)

UID = "powerplane-cooling"
_BY_LOOP = f'{BY_TIME}, "loop" fill(null)'


def build() -> Dashboard:
    """The Cooling dashboard."""
    d = new_dashboard(UID, "Cooling", "Liquid-cooling loops (CDUs): heat removed against the capacity left "
                      "by flow and supply temperature (Q = m·cp·ΔT), temperatures, flow, pumps and leaks.",
                      ["cooling"])
    d = (d
         .with_panel(bar_panel("Loop load", f'SELECT last("heat_w") / last("capacity_w") FROM "cooling" {WHERE_SITE} '
                               'GROUP BY "loop"', "$tag_loop", "percentunit", maximum=1.0, span=8,
                               description="Heat removed as a fraction of what the loop can remove now.",
                               thresholds=steps((None, "green"), (0.8, "orange"), (0.95, "red"))))
         .with_panel(ts_panel("Loop heat vs capacity", [
             (f'SELECT mean("heat_w") FROM "cooling" {WHERE_SITE} {_BY_LOOP}', "$tag_loop heat"),
             (f'SELECT mean("capacity_w") FROM "cooling" {WHERE_SITE} {_BY_LOOP}', "$tag_loop capacity"),
         ], "watt", minimum=0, span=16))
         .with_row(db.Row("Temperatures and flow"))
         .with_panel(ts_panel("Supply and return temperature", [
             (f'SELECT mean("supply_c") FROM "cooling" {WHERE_SITE} {_BY_LOOP}', "$tag_loop supply"),
             (f'SELECT mean("return_c") FROM "cooling" {WHERE_SITE} {_BY_LOOP}', "$tag_loop return"),
         ], "celsius", span=12))
         .with_panel(ts_panel("Coolant flow", [
             (f'SELECT mean("flow_lpm") FROM "cooling" {WHERE_SITE} {_BY_LOOP}', "$tag_loop"),
         ], "flowlpm", minimum=0, span=12))
         .with_panel(ts_panel("Differential pressure", [
             (f'SELECT mean("dp_kpa") FROM "cooling" {WHERE_SITE} {_BY_LOOP}', "$tag_loop"),
         ], "pressurekpa", span=12))
         .with_panel(ts_panel("Loop ΔT", [
             (f'SELECT mean("return_c") - mean("supply_c") FROM "cooling" {WHERE_SITE} {_BY_LOOP}', "$tag_loop"),
         ], "celsius", span=12))
         .with_row(db.Row("Pumps and leaks"))
         .with_panel(state_panel("Pumps running", f'SELECT last("pumps_running") FROM "cooling" {WHERE_SITE} '
                                 f"{_BY_LOOP}", "$tag_loop",
                                 value_map({"0": ("none", "red"), "1": ("1 pump", "orange"), "2": ("2 pumps", "green"),
                                            "3": ("3 pumps", "green"), "4": ("4 pumps", "green")})))
         .with_panel(state_panel("Leak detection", f'SELECT max("leak") FROM "cooling" {WHERE_SITE} {_BY_LOOP}',
                                 "$tag_loop", value_map({"0": ("dry", "green"), "1": ("LEAK", "red")})))
         )
    return d.build()
