"""Shared pieces of every powerplane dashboard: variables, filters and panel shapes.

Queries are raw InfluxQL over the schema of ``models/readings.py`` (a metric
``measurement.field`` is a field of a measurement; tags ``site``, ``level``, ``id``,
``loop``, ``device``, ``protocol``, ``sink``) and ``models/events.py`` (measurement
``events``, tags ``kind``, ``severity``, ``source``, ``entity``). ``$site``, ``$hall``,
``$row`` and ``$rack`` are multi-value variables, so every filter on them is a regex.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.influxql import DATASOURCE, Query

SITE = '"site" =~ /^$site$/'
# $timeFilter and $__interval are expanded by Grafana (and by the tests, the same way).
WHERE_SITE = f"WHERE {SITE} AND $timeFilter"
BY_TIME = "GROUP BY time($__interval)"

# Variables: what an operator narrows a dashboard to. (name, label, level of the power tree)
ENTITY_VARIABLES = (("hall", "Hall", "hall"), ("row", "Row", "row"), ("rack", "Rack", "rack"))

RACK_MAX_W = 600e3  # Rubin Ultra class racks: the top of every per-rack scale

# Tags the device profiles put on a sub-point of an entity (a phase, a UPS output line or its
# input side, a PDU outlet, bank, unit or cord, a busway tap-off): such a series carries the
# entity's ``id`` too, so "the entity's power" must select the series without any of them,
# or a GROUP BY "id" averages the total with its parts. tests/dashboards/test_build.py
# checks that this covers every tag the shipped profiles can add.
SUBPOINT_TAGS = ("bank", "cord", "line", "load", "outlet", "phase", "side", "tapoff", "unit")
TOTALS_ONLY = " AND ".join(f"\"{t}\" = ''" for t in SUBPOINT_TAGS)
# A CDU's own loop series: they carry ``loop`` and no ``side`` (the facility-water supply is
# side=facility; the BMS's rack series have level=rack and no loop).
CDU_ONLY = "\"loop\" != '' AND \"side\" = ''"

# Minimum interval of every panel ($__interval never goes below it), fitted to the cadence
# of the slowest series the panel reads, so that a bucket holds at least two samples even
# on a short time range instead of being mostly empty.
EVERY_FAST = "5s"  # control period (caps.*, derived site totals, DR state), CDUs and grid signals (1 s), meters (2 s)
EVERY_SNMP = "30s"  # UPSes and PDUs over SNMP (polled every 10 s; sites poll them every 10-60 s)
EVERY_HEALTH = "30s"  # collector and store health (every 10 s)
EVERY_EVENT = "1m"  # event counts


def variables() -> list[cogbuilder.Builder[dm.VariableModel]]:
    """``site`` then ``hall``, ``row``, ``rack``: multi-value, all selected by default."""
    out: list[cogbuilder.Builder[dm.VariableModel]] = [
        _variable("site", "Site", 'SHOW TAG VALUES FROM "site" WITH KEY = "site"'),
    ]
    for name, label, level in ENTITY_VARIABLES:
        out.append(_variable(name, label, f'SHOW TAG VALUES FROM "power" WITH KEY = "id" '
                                          f"WHERE {SITE} AND \"level\" = '{level}'"))
    return out


def _variable(name: str, label: str, query: str) -> db.QueryVariable:
    return (db.QueryVariable(name).label(label).query(query).datasource(DATASOURCE)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True)
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))


def new_dashboard(uid: str, title: str, description: str, tags: Sequence[str] = ()) -> db.Dashboard:
    """A dashboard with the powerplane defaults: last hour, 10 s refresh, site variables."""
    return (db.Dashboard(title).uid(uid).description(description).tags(["powerplane", *tags])
            .editable().tooltip(dm.DashboardCursorSync.CROSSHAIR).time("now-1h", "now").refresh("10s")
            .timezone("browser").variables(variables())
            .link(db.DashboardLink("powerplane").type(dm.DashboardLinkType.DASHBOARDS).tags(["powerplane"])
                  .as_dropdown(True).include_vars(True).keep_time(True)))


def steps(*pairs: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute thresholds from ``(value, color)`` pairs; the first value is ``None``."""
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in pairs]))


def stat_panel(title: str, query: str, unit: str, *, interval: str, description: str = "", span: int = 3,
               thresholds: db.ThresholdsConfig | None = None, decimals: int | None = None,
               mappings: list[dm.ValueMapping] | None = None, time_from: str | None = None) -> stat.Panel:
    """A big-number panel of the last value of one query."""
    p = (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(span)
         .height(4).interval(interval).with_target(Query(query))
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .graph_mode(cm.BigValueGraphMode.AREA).color_mode(cm.BigValueColorMode.VALUE)
         .thresholds(thresholds or steps((None, "green"))))
    if decimals is not None:
        p = p.decimals(decimals)
    if mappings:
        p = p.mappings(mappings)
    if time_from is not None:
        p = p.time_from(time_from)
    return p


def ts_panel(title: str, queries: Sequence[tuple[str, str]], unit: str, *, interval: str, description: str = "",
             span: int = 12, height: int = 8, minimum: float | None = None, maximum: float | None = None,
             bars: bool = False) -> timeseries.Panel:
    """A time-series panel; ``queries`` are ``(influxql, alias)`` pairs ("" keeps the series name)."""
    p = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
         .span(span).height(height).interval(interval).line_width(1).fill_opacity(10 if not bars else 80)
         .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE).placement(cm.LegendPlacement.BOTTOM)
                 .show_legend(True).calcs(["lastNotNull", "max"]))
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    if bars:
        p = p.draw_style(cm.GraphDrawStyle.BARS)
    for i, (q, alias) in enumerate(queries):
        p = p.with_target(Query(q, ref_id=chr(ord("A") + i), alias=alias or None))
    if minimum is not None:
        p = p.min(minimum)
    if maximum is not None:
        p = p.max(maximum)
    return p


def state_panel(title: str, query: str, alias: str, mappings: list[dm.ValueMapping], *, interval: str,
                description: str = "", span: int = 12, height: int = 6) -> statetimeline.Panel:
    """A state timeline (pumps running, leak, DR active...)."""
    return (statetimeline.Panel().title(title).description(description).datasource(DATASOURCE).span(span)
            .height(height).interval(interval).with_target(Query(query, alias=alias)).mappings(mappings)
            .show_value(cm.VisibilityMode.AUTO).merge_values(True).fill_opacity(70).line_width(0))


def table_panel(title: str, query: str, *, interval: str, description: str = "", span: int = 12, height: int = 8,
                unit: str | None = None) -> table.Panel:
    """A table of a query in table format (one row per point or per group)."""
    p = (table.Panel().title(title).description(description).datasource(DATASOURCE).span(span).height(height)
         .interval(interval).with_target(Query(query, result_format="table")).filterable(True))
    if unit is not None:
        p = p.unit(unit)
    return p


def bar_panel(title: str, query: str, alias: str, unit: str, *, interval: str, maximum: float | None = None,
              description: str = "", span: int = 12, height: int = 8,
              thresholds: db.ThresholdsConfig | None = None) -> bargauge.Panel:
    """A bar gauge of the last value of every series of a query, on a fixed scale."""
    p = (bargauge.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
         .span(span).height(height).interval(interval).min(0).with_target(Query(query, alias=alias))
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .orientation(cm.VizOrientation.HORIZONTAL).display_mode(cm.BarGaugeDisplayMode.GRADIENT)
         .thresholds(thresholds or steps((None, "green"))))
    return p.max(maximum) if maximum is not None else p


def value_map(mapping: dict[str, tuple[str, str]]) -> list[dm.ValueMapping]:
    """Value mappings from ``{"0": ("ok", "green"), ...}``."""
    return [dm.ValueMap(options={k: dm.ValueMappingResult(text=t, color=c, index=i)
                                 for i, (k, (t, c)) in enumerate(mapping.items())})]


# Event kinds the dashboards and alerts read: the contract lives in models.events.
