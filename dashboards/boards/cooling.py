"""Cooling: every loop's heat against what it can remove now, temperatures, flow, pumps, leaks."""

from __future__ import annotations

from functools import partial

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.panels import (
    BY_TIME,
    CDU_ONLY,
    EVERY_FAST,
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
# The CDUs' own loop series: not the facility-water supply beside them (side=facility, ~4 °C
# cooler) and not the BMS's rack series (no loop tag), which would merge into the loop or add
# an unnamed one.
_CDU = f'FROM "cooling" {WHERE_SITE} AND {CDU_ONLY}'
_RACKS = f'FROM "cooling" {WHERE_SITE} AND "level" = \'rack\' AND "id" =~ /^$rack$/'
# CDUs are polled every control period, the BMS publishes every few seconds.
_bar = partial(bar_panel, interval=EVERY_FAST)
_ts = partial(ts_panel, interval=EVERY_FAST)
_state = partial(state_panel, interval=EVERY_FAST)


def build() -> Dashboard:
    """The Cooling dashboard."""
    d = new_dashboard(UID, "Cooling", "Liquid-cooling loops (CDUs): heat removed against the capacity left "
                      "by flow and supply temperature (Q = m·cp·ΔT), temperatures, flow, pumps and leaks.",
                      ["cooling"])
    d = (d
         .with_panel(_bar("Loop load", f'SELECT last("heat_w") / last("capacity_w") {_CDU} '
                               'GROUP BY "loop"', "$tag_loop", "percentunit", maximum=1.0, span=8,
                               description="Heat removed as a fraction of what the loop can remove now.",
                               thresholds=steps((None, "green"), (0.8, "orange"), (0.95, "red"))))
         .with_panel(_ts("Loop heat vs capacity", [
             (f'SELECT mean("heat_w") {_CDU} {_BY_LOOP}', "$tag_loop heat"),
             (f'SELECT mean("capacity_w") {_CDU} {_BY_LOOP}', "$tag_loop capacity"),
         ], "watt", minimum=0, span=16))
         .with_row(db.Row("Temperatures and flow"))
         .with_panel(_ts("Supply and return temperature", [
             (f'SELECT mean("supply_c") {_CDU} {_BY_LOOP}', "$tag_loop supply"),
             (f'SELECT mean("return_c") {_CDU} {_BY_LOOP}', "$tag_loop return"),
         ], "celsius", span=12))
         .with_panel(_ts("Coolant flow", [
             (f'SELECT mean("flow_lpm") {_CDU} {_BY_LOOP}', "$tag_loop"),
         ], "flowlpm", minimum=0, span=12))
         .with_panel(_ts("Differential pressure", [
             (f'SELECT mean("dp_kpa") {_CDU} {_BY_LOOP}', "$tag_loop"),
         ], "pressurekpa", span=12))
         .with_panel(_ts("Loop ΔT", [
             (f'SELECT mean("return_c") - mean("supply_c") {_CDU} {_BY_LOOP}', "$tag_loop"),
         ], "celsius", span=12))
         .with_row(db.Row("Pumps and leaks"))
         .with_panel(_state("Pumps running", f'SELECT last("pumps_running") {_CDU} '
                                 f"{_BY_LOOP}", "$tag_loop",
                                 value_map({"0": ("none", "red"), "1": ("1 pump", "orange"), "2": ("2 pumps", "green"),
                                            "3": ("3 pumps", "green"), "4": ("4 pumps", "green")})))
         .with_panel(_state("Leak detection", f'SELECT max("leak") {_CDU} {_BY_LOOP}',
                            "$tag_loop", value_map({"0": ("dry", "green"), "1": ("LEAK", "red")}),
                            description="The CDUs' own leak sensors, per loop."))
         .with_panel(_state("Rack leak detection", f'SELECT max("leak") {_RACKS} {BY_TIME}, "id" fill(null)',
                            "$tag_id", value_map({"0": ("dry", "green"), "1": ("LEAK", "red")}),
                            description="The BMS's leak sensors at each rack's manifold."))
         )
    return d.build()
