"""Power chain: feed → UPS → hall → row → rack, each against its limit, and rack headroom."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.influxql import DATASOURCE, Query
from dashboards.panels import BY_TIME, RACK_MAX_W, WHERE_SITE, bar_panel, new_dashboard, ts_panel

UID = "powerplane-power-chain"

# (level, row title, variable that narrows it or None)
_LEVELS = (("feed", "Utility feeds", None), ("ups", "UPS", None), ("hall", "Halls", "hall"),
           ("row", "Rows (busways)", "row"), ("rack", "Racks", "rack"))


def _where(level: str, var: str | None) -> str:
    ids = f' AND "id" =~ /^${var}$/' if var else ""
    return f"{WHERE_SITE} AND \"level\" = '{level}'{ids}"


def build() -> Dashboard:
    """The Power chain dashboard."""
    d = new_dashboard(UID, "Power chain", "Measured power at every level of the power tree against the limit "
                      "the controller holds it to, and the headroom of every rack.", ["power"])
    for level, title, var in _LEVELS:
        w = _where(level, var)
        d = d.with_row(db.Row(title)).with_panel(ts_panel(f"{title}: power vs limit", [
            (f'SELECT mean("power_w") FROM "power" {w} {BY_TIME}, "id" fill(null)', "$tag_id"),
            (f'SELECT mean("limit_w") FROM "caps" {w} {BY_TIME}, "id" fill(previous)', "$tag_id limit"),
        ], "watt", minimum=0, span=16))
        d = d.with_panel(bar_panel(f"{title}: load", f'SELECT last("power_w") FROM "power" {w} GROUP BY "id"',
                                   "$tag_id", "watt", maximum=RACK_MAX_W if level == "rack" else None,
                                   span=8))
    w = _where("rack", "rack")
    d = d.with_panel(
        heatmap.Panel().title("Rack headroom").datasource(DATASOURCE).span(24).height(10)
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
    ], "watt", span=24))
    return d.build()

