"""Helpers for the store tests: reading back what VictoriaMetrics and InfluxDB 1.x hold."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from tests.realservers import InfluxDB1, VictoriaMetrics


def vm_export(vm: VictoriaMetrics, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
    """Every raw sample VictoriaMetrics holds for ``match`` (after a flush), one dict per series."""
    vm.flush()
    q = urllib.parse.urlencode({"match[]": match, "start": "0"})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{q}", timeout=30) as r:
        return [json.loads(ln) for ln in r.read().decode().splitlines() if ln.strip()]


def influxql(srv: InfluxDB1, q: str, db: str = "") -> list[dict[str, Any]]:
    """Run InfluxQL and return the result's series (raises on an error in the answer)."""
    params = {"q": q, "epoch": "ns"}
    if db:
        params["db"] = db
    req = urllib.request.Request(f"{srv.url}/query", data=urllib.parse.urlencode(params).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    res = body["results"][0]
    if "error" in res:
        raise AssertionError(res["error"])
    return list(res.get("series", []))
