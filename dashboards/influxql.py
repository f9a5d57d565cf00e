"""InfluxQL queries as grafana-foundation-sdk dataqueries.

The SDK ships no InfluxDB query model, so this module adds one the SDK way: a
``Dataquery`` variant with ``to_json``/``from_json`` and a builder, registered with the
SDK runtime under the plugin id ``influxdb`` so that ``Dashboard.from_json`` reads our
targets back as typed queries (the round trip is how the tests validate the JSON).

Every panel and alert queries one datasource, provisioned under a fixed uid, in raw
InfluxQL: the one language InfluxDB 1.x, 2.x (through DBRP mappings) and 3.x all speak.
"""

from __future__ import annotations

import typing
from typing import Literal

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

PLUGIN_ID = "influxdb"
DATASOURCE_UID = "powerplane-influxdb"
DATASOURCE_NAME = "powerplane InfluxDB"
DATABASE = "powerplane"
DATASOURCE = dashboard.DataSourceRef(type_val=PLUGIN_ID, uid=DATASOURCE_UID)

ResultFormat = Literal["time_series", "table"]


class InfluxQLQuery(cogvariants.Dataquery):
    """One raw InfluxQL target of a panel (the JSON Grafana's InfluxDB plugin stores)."""

    def __init__(self, query: str = "", ref_id: str = "", result_format: ResultFormat = "time_series",
                 alias: str | None = None, datasource: dashboard.DataSourceRef | None = None,
                 hide: bool | None = None) -> None:
        self.query = query
        self.ref_id = ref_id
        self.result_format = result_format
        self.alias = alias
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        """The target as Grafana stores it."""
        out: dict[str, object] = {"refId": self.ref_id, "query": self.query, "rawQuery": True,
                                  "resultFormat": self.result_format}
        if self.alias is not None:
            out["alias"] = self.alias
        if self.datasource is not None:
            out["datasource"] = self.datasource.to_json()
        if self.hide is not None:
            out["hide"] = self.hide
        return out

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> typing.Self:
        """Read a target back; anything but a raw InfluxQL target is refused."""
        if data.get("rawQuery") is not True or not isinstance(data.get("query"), str):
            raise ValueError(f"not a raw InfluxQL target: {sorted(data)}")
        unknown = set(data) - {"refId", "query", "rawQuery", "resultFormat", "alias", "datasource", "hide"}
        if unknown:
            raise ValueError(f"unknown keys in InfluxQL target: {sorted(unknown)}")
        ds = data.get("datasource")
        return cls(query=data["query"], ref_id=data.get("refId", ""),
                   result_format=data.get("resultFormat", "time_series"), alias=data.get("alias"),
                   datasource=dashboard.DataSourceRef.from_json(ds) if isinstance(ds, dict) else None,
                   hide=data.get("hide"))


class Query(cogbuilder.Builder[InfluxQLQuery]):
    """Builder of an ``InfluxQLQuery`` bound to the powerplane datasource."""

    def __init__(self, query: str, *, ref_id: str = "A", alias: str | None = None,
                 result_format: ResultFormat = "time_series") -> None:
        self._internal = InfluxQLQuery(query=query, ref_id=ref_id, result_format=result_format, alias=alias,
                                       datasource=DATASOURCE)

    def build(self) -> InfluxQLQuery:
        """The query."""
        return self._internal


def register() -> None:
    """Teach the SDK runtime to read ``influxdb`` targets as ``InfluxQLQuery``."""
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=PLUGIN_ID, from_json_hook=InfluxQLQuery.from_json))


register()
