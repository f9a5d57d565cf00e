"""Site energy: what the site draws against what it may draw, and what that costs."""

from __future__ import annotations

from functools import partial

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.panels import (
    BY_TIME,
    EVERY_FAST,
    WHERE_SITE,
    new_dashboard,
    stat_panel,
    steps,
    ts_panel,
    value_map,
)

UID = "powerplane-site-energy"
_CAPS_SITE = f"FROM \"caps\" {WHERE_SITE} AND \"level\" = 'site'"
# Every series here comes every control period, from the site meter (2 s) or the grid feed.
_stat = partial(stat_panel, interval=EVERY_FAST)
_ts = partial(ts_panel, interval=EVERY_FAST)


def build() -> Dashboard:
    """The Site energy dashboard."""
    d = new_dashboard(UID, "Site energy", "Site power against the grid limit and demand-response target, "
                      "headroom, PUE, energy, price, carbon and the caps in force.", ["energy"])
    d = (d
         .with_panel(_stat("Site power", f'SELECT last("facility_w") FROM "site" {WHERE_SITE}', "watt",
                                description="Facility power at the interconnect.", span=4))
         .with_panel(_stat("Grid limit", f'SELECT last("limit_w") FROM "grid" {WHERE_SITE}', "watt",
                                description="Interconnect limit in force.", span=4))
         .with_panel(_stat("Headroom", f'SELECT last("headroom_w") {_CAPS_SITE}', "watt", span=4,
                                description="Site budget (min of grid limit and DR target, less overhead) "
                                            "minus the planned load, from the controller's plan.",
                                thresholds=steps((None, "red"), (250e3, "orange"), (1e6, "green"))))
         .with_panel(_stat("Demand response", f'SELECT last("dr_active") FROM "grid" {WHERE_SITE}', "none",
                                span=4, mappings=value_map({"0": ("none", "green"), "1": ("DR event", "orange")})))
         .with_panel(_stat("PUE", f'SELECT last("pue") FROM "site" {WHERE_SITE}', "none", decimals=3, span=4,
                                thresholds=steps((None, "green"), (1.3, "orange"), (1.5, "red"))))
         .with_panel(_stat("Energy today", f'SELECT spread("energy_wh") FROM "power" {WHERE_SITE} AND "level" = \'\' '
                                f'AND "phase" = \'\'',
                                "watth", time_from="now/d", span=4,
                                description="Facility energy since midnight, from the site meter's energy register "
                                            "(its total, not its phases: what it counted, gaps included; not the "
                                            "integral of power readings, which alias a load that swings near the "
                                            "polling rate)."))
         .with_panel(_stat("Price", f'SELECT last("price_per_mwh") FROM "grid" {WHERE_SITE}', "none",
                                decimals=1, span=4, description="Energy price, currency per MWh."))
         .with_panel(_stat("Carbon", f'SELECT last("carbon_g_per_kwh") FROM "grid" {WHERE_SITE}', "none",
                                decimals=0, span=4, description="Grid carbon intensity, gCO2/kWh."))
         .with_panel(_stat("GPUs capped", f'SELECT last("gpus_capped") {_CAPS_SITE}', "none", span=4,
                                description="GPUs capped below their demand by the plan in force.",
                                thresholds=steps((None, "green"), (1, "orange"))))
         .with_panel(_stat("Power withheld", f'SELECT last("cut_w") {_CAPS_SITE}', "watt", span=4,
                                description="Demand not granted by the caps in force.",
                                thresholds=steps((None, "green"), (1, "orange"))))
         .with_panel(_stat("Caps in force", f'SELECT last("cap_w") {_CAPS_SITE}', "watt", span=4,
                                description="Sum of the GPU caps of the plan in force."))
         .with_panel(_stat("IT power", f'SELECT last("it_w") FROM "site" {WHERE_SITE}', "watt", span=4))
         .with_row(db.Row("Power against the limits"))
         .with_panel(_ts("Site power vs grid limit and DR target", [
             (f'SELECT mean("facility_w") FROM "site" {WHERE_SITE} {BY_TIME} fill(null)', "facility"),
             (f'SELECT mean("it_w") FROM "site" {WHERE_SITE} {BY_TIME} fill(null)', "IT"),
             (f'SELECT mean("limit_w") FROM "grid" {WHERE_SITE} {BY_TIME} fill(previous)', "grid limit"),
             (f'SELECT mean("dr_target_w") FROM "grid" {WHERE_SITE} AND "dr_target_w" > 0 {BY_TIME} fill(null)',
              "DR target"),
         ], "watt", minimum=0, span=16, height=9))
         .with_panel(_ts("Headroom", [
             (f'SELECT mean("headroom_w") {_CAPS_SITE} {BY_TIME} fill(null)', "headroom"),
             (f'SELECT mean("cut_w") {_CAPS_SITE} {BY_TIME} fill(null)', "withheld"),
         ], "watt", span=8, height=9))
         .with_row(db.Row("Efficiency, price and carbon"))
         .with_panel(_ts("PUE", [(f'SELECT mean("pue") FROM "site" {WHERE_SITE} {BY_TIME} fill(null)', "PUE")],
                              "none", span=8, minimum=1))
         .with_panel(_ts("Price", [(f'SELECT mean("price_per_mwh") FROM "grid" {WHERE_SITE} {BY_TIME} '
                                         "fill(null)", "price / MWh")], "none", span=8))
         .with_panel(_ts("Carbon intensity", [(f'SELECT mean("carbon_g_per_kwh") FROM "grid" {WHERE_SITE} '
                                                    f"{BY_TIME} fill(null)", "gCO2/kWh")], "none", span=8))
         .with_panel(_ts("Grid frequency", [(f'SELECT mean("frequency_hz") FROM "grid" {WHERE_SITE} '
                                                  f"{BY_TIME} fill(null)", "frequency")], "hertz", span=24, height=6))
         )
    return d.build()
