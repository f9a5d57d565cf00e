"""Power chain: feed → UPS → hall → row → rack, each against its limit, and rack headroom."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.influxql import DATASOURCE, Query
from dashboards.panels import (
    BY_TIME,
    EVERY_FAST,
    EVERY_SNMP,
    RACK_MAX_W,
    TOTALS_ONLY,
    WHERE_SITE,
    bar_panel,
    new_dashboard,
    ts_panel,
)

UID = "powerplane-power-chain"

# (level, row title, variable that narrows it or None, minimum interval: meters over Modbus
# every 2 s, UPSes over SNMP every 10 s)
_LEVELS = (("feed", "Utility feeds", None, EVERY_FAST), ("ups", "UPS", None, EVERY_SNMP),
           ("hall", "Halls", "hall", EVERY_FAST), ("row", "Rows (busways)", "row", EVERY_FAST),
           ("rack", "Racks", "rack", EVERY_FAST))


def _where(level: str, var: str | None) -> str:
    ids = f' AND "id" =~ /^${var}$/' if var else ""
    return f"{WHERE_SITE} AND \"level\" = '{level}'{ids}"


def build() -> Dashboard:
    """The Power chain dashboard."""
    d = new_dashboard(UID, "Power chain", "Measured power at every level of the power tree against the limit "
                      "the controller holds it to, and the headroom of every rack.", ["power"])
    for level, title, var, every in _LEVELS:
        w = _where(level, var)
        total = f"{w} AND {TOTALS_ONLY}"  # the entity's total, not its phases, lines or input side
        d = d.with_row(db.Row(title)).with_panel(ts_panel(f"{title}: power vs limit", [
            (f'SELECT mean("power_w") FROM "power" {total} {BY_TIME}, "id" fill(null)', "$tag_id"),
            (f'SELECT mean("limit_w") FROM "caps" {w} {BY_TIME}, "id" fill(previous)', "$tag_id limit"),
        ], "watt", interval=every, minimum=0, span=16,
            description="Each entity's total power (the series without phase, line or side) against the "
                        "limit the controller holds it to."))
        d = d.with_panel(bar_panel(f"{title}: load", f'SELECT last("power_w") FROM "power" {total} GROUP BY "id"',
                                   "$tag_id", "watt", interval=every,
                                   maximum=RACK_MAX_W if level == "rack" else None, span=8))
    w = _where("rack", "rack")
    d = d.with_panel(
        heatmap.Panel().title("Rack headroom").datasource(DATASOURCE).span(24).height(10).interval(EVERY_FAST)
        .description("Limit minus planned load of every rack (controller plan), 0 to 600 kW: "
                     "dark is a rack at its limit.")
        .with_target(Query(f'SELECT mean("headroom_w") FROM "caps" {w} {BY_TIME}, "id" fill(null)',
                           alias="$tag_id"))
        .calculate(False)
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("RdYlGn")
               .scale(hm.HeatmapColorScale.LINEAR).steps(64).min(0).max(RACK_MAX_W))
        .y_axis(heatmap.YAxisConfig().axis_placement(cm.AxisPlacement.LEFT))
        .cell_values(heatmap.CellValues().unit("watt"))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.AUTO))
        .show_value(cm.VisibilityMode.NEVER).mode(cm.TooltipDisplayMode.SINGLE).show_legend())
    d = d.with_panel(ts_panel("Rack headroom (lowest first)", [
        (f'SELECT mean("headroom_w") FROM "caps" {w} {BY_TIME}, "id" fill(null)', "$tag_id"),
    ], "watt", interval=EVERY_FAST, span=24))
    return d.build()

