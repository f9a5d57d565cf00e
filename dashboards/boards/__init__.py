"""The powerplane dashboards, energy first: each module builds one with ``build()``."""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.boards import capping, collector_health, cooling, power_chain, site_energy

# Order is the order of the dashboard list: what an operator sees first comes first.
BOARDS: tuple[tuple[str, Callable[[], Dashboard]], ...] = (
    (site_energy.UID, site_energy.build),
    (power_chain.UID, power_chain.build),
    (cooling.UID, cooling.build),
    (capping.UID, capping.build),
    (collector_health.UID, collector_health.build),
)
