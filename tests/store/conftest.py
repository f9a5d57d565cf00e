"""Helpers for the store tests: reading back what InfluxDB 1.x holds (VictoriaMetrics: ``vm.export``)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from testbed.realservers import InfluxDB1


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
