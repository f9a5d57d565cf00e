"""Collector health: are the devices answering, how fast, what is rejected, is the spool growing."""

from __future__ import annotations

from functools import partial

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.panels import (
    BY_TIME,
    EVERY_HEALTH,
    WHERE_SITE,
    new_dashboard,
    stat_panel,
    steps,
    table_panel,
    ts_panel,
)

UID = "powerplane-collector-health"
_COL = f'FROM "collector" {WHERE_SITE}'
_STORE = f'FROM "store" {WHERE_SITE}'
# Collector and store health are written every 10 s.
_stat = partial(stat_panel, interval=EVERY_HEALTH)
_ts = partial(ts_panel, interval=EVERY_HEALTH)
_table = partial(table_panel, interval=EVERY_HEALTH)


def build() -> Dashboard:
    """The Collector health dashboard."""
    d = new_dashboard(UID, "Collector health", "Device poll success, latency, rejected values and the store's "
                      "durable spool.", ["collectors"])
    d = (d
         .with_panel(_stat("Devices down", 'SELECT count("up") - sum("up") FROM (SELECT last("up") AS "up" '
                                f'{_COL} GROUP BY "device")', "none", span=6,
                                thresholds=steps((None, "green"), (1, "red"))))
         .with_panel(_stat("Poll success", f'SELECT mean("up") {_COL}', "percentunit", span=6,
                                thresholds=steps((None, "red"), (0.95, "orange"), (0.99, "green"))))
         .with_panel(_stat("Spool depth", f'SELECT sum("spooled_points") FROM (SELECT last("spooled_points") '
                                f'AS "spooled_points" {_STORE} GROUP BY "sink")', "short", span=6,
                                thresholds=steps((None, "green"), (1, "orange"), (1e6, "red"))))
         .with_panel(_stat("Points dropped", f'SELECT sum("dropped_points") FROM (SELECT last("dropped_points") '
                                f'AS "dropped_points" {_STORE} GROUP BY "sink")', "short", span=6,
                                thresholds=steps((None, "green"), (1, "red"))))
         .with_row(db.Row("Devices"))
         .with_panel(_ts("Poll success rate by device", [
             (f'SELECT mean("up") {_COL} {BY_TIME}, "device" fill(null)', "$tag_device"),
         ], "percentunit", minimum=0, maximum=1, span=12))
         .with_panel(_ts("Poll latency by device", [
             (f'SELECT mean("latency_s") {_COL} {BY_TIME}, "device" fill(null)', "$tag_device"),
         ], "s", minimum=0, span=12))
         .with_panel(_ts("Rejected values", [
             (f'SELECT non_negative_difference(last("rejected")) {_COL} {BY_TIME}, "device" fill(null)',
              "$tag_device"),
         ], "short", bars=True, span=12, description="Readings rejected (range, stuck, decode...) per interval."))
         .with_panel(_ts("Malformed messages", [
             (f'SELECT non_negative_difference(last("messages_bad")) {_COL} {BY_TIME}, "device" fill(null)',
              "$tag_device"),
         ], "short", bars=True, span=12))
         .with_panel(_table("Devices", 'SELECT last("up") AS "up", last("latency_s") AS "latency_s", '
                                 'last("consecutive_failures") AS "failures", last("readings") AS "readings", '
                                 f'last("rejected") AS "rejected" {_COL} GROUP BY "device", "protocol"', span=24))
         .with_row(db.Row("Store"))
         .with_panel(_ts("Spool depth", [
             (f'SELECT max("spooled_points") {_STORE} {BY_TIME}, "sink" fill(null)', "$tag_sink"),
         ], "short", minimum=0, span=12, description="Points waiting in the durable spool for the server."))
         .with_panel(_ts("Points written, rejected and dropped", [
             (f'SELECT non_negative_difference(last("written_points")) {_STORE} {BY_TIME}, "sink" fill(null)',
              "$tag_sink written"),
             (f'SELECT non_negative_difference(last("rejected_points")) {_STORE} {BY_TIME}, "sink" fill(null)',
              "$tag_sink rejected"),
             (f'SELECT non_negative_difference(last("dropped_points")) {_STORE} {BY_TIME}, "sink" fill(null)',
              "$tag_sink dropped"),
         ], "short", span=12))
         )
    return d.build()
