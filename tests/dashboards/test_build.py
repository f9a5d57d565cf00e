"""The dashboards as built by the code: committed, fresh, valid against the SDK's models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import alerts
from dashboards.boards import BOARDS
from dashboards.build import ALERTS_FILE, artifacts, load_committed, stale, write
from dashboards.influxql import DATASOURCE_UID, InfluxQLQuery
from powerplane.cli import main
from tests.conftest import ROOT

TITLES = {"Site energy", "Power chain", "Cooling", "Capping", "Collector health"}


def test_committed_files_are_fresh() -> None:
    # Edit a dashboard in Python, forget `powerplane dashboards build`: this fails.
    assert stale(ROOT) == [], "run: powerplane dashboards build"


def test_build_is_byte_identical_and_check_detects_edits(tmp_path: Path) -> None:
    assert len(write(tmp_path)) == len(artifacts())
    first = {p: (tmp_path / p).read_bytes() for p in artifacts()}
    assert write(tmp_path) == []  # second build changes nothing
    assert {p: (tmp_path / p).read_bytes() for p in artifacts()} == first
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 0
    victim = tmp_path / "dashboards/json/powerplane-cooling.json"
    victim.write_text(victim.read_text().replace("Cooling", "Colling", 1))
    assert stale(tmp_path) == [Path("dashboards/json/powerplane-cooling.json")]
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 1
    assert main(["dashboards", "build", "--root", str(tmp_path)]) == 0
    assert stale(tmp_path) == []


@pytest.mark.parametrize("uid", [u for u, _ in BOARDS])
def test_json_validates_against_sdk_models(uid: str) -> None:
    register_default_plugins()
    data = load_committed(ROOT)[uid]
    model = dm.Dashboard.from_json(data)
    # from_json fills defaults and drops nothing it knows: a lossless round trip means every
    # key is one the Grafana 11.6 models define (and our targets are raw InfluxQL).
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == data
    for panel in model.panels or []:
        if isinstance(panel, dm.RowPanel):
            continue
        assert panel.targets, panel.title
        for t in panel.targets:
            assert isinstance(t, InfluxQLQuery), panel.title
            assert t.datasource is not None and t.datasource.uid == DATASOURCE_UID


def test_dashboards_list_and_variables() -> None:
    boards = load_committed(ROOT)
    assert {d["title"] for d in boards.values()} == TITLES
    for d in boards.values():
        names = [v["name"] for v in d["templating"]["list"]]
        assert names == ["site", "hall", "row", "rack"], d["title"]
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), d["title"]
        # panels never overlap on the 24-column grid
        cells: set[tuple[int, int]] = set()
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{d['title']}: {p['title']} overlaps"
            cells |= mine


def test_site_energy_puts_stats_on_top() -> None:
    d = load_committed(ROOT)["powerplane-site-energy"]
    first_row = min(p["gridPos"]["y"] for p in d["panels"] if p["type"] == "row")
    top = [p for p in d["panels"] if p["gridPos"]["y"] < first_row]
    assert top and all(p["type"] == "stat" for p in top)
    assert {"Site power", "Grid limit", "Headroom", "PUE", "Energy today", "Price", "Carbon",
            "Caps in force"} <= {p["title"] for p in top}


def test_rack_headroom_heatmap_scale_is_600_kw() -> None:
    d = load_committed(ROOT)["powerplane-power-chain"]
    (hm,) = [p for p in d["panels"] if p["type"] == "heatmap"]
    assert hm["options"]["color"]["min"] == 0 and hm["options"]["color"]["max"] == 600e3


def test_alert_rules_file_parses_and_is_complete() -> None:
    doc = yaml.safe_load((ROOT / ALERTS_FILE).read_text())
    assert doc["apiVersion"] == 1
    (group,) = doc["groups"]
    rules = group["rules"]
    assert [r["uid"] for r in rules] == [r.uid for r in alerts.RULES]
    for r in rules:
        refs = [q["refId"] for q in r["data"]]
        assert refs == ["A", "B", "C"] and r["condition"] == "C"
        assert r["data"][0]["datasourceUid"] == DATASOURCE_UID
        assert "$timeFilter" in r["data"][0]["model"]["query"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["for"]
    titles = " ".join(r["title"].lower() for r in rules)
    for topic in ("headroom", "infeasible", "loop", "stale", "spool"):
        assert topic in titles


def test_every_panel_sets_a_minimum_interval() -> None:
    for d in load_committed(ROOT).values():
        for p in d["panels"]:
            if p["type"] != "row":
                assert re.fullmatch(r"\d+[smh]", p.get("interval") or ""), f"{d['title']}: {p['title']}"


def _profile_tag_keys() -> set[str]:
    """Every tag key a shipped device profile can put on a series beside the device's own tags."""
    import tomllib

    keys: set[str] = set()

    def walk(node: object, parent: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "tags" and isinstance(v, dict):
                    keys.update(v)
                elif k == "index" and isinstance(v, list):
                    keys.update(n for n in v if not n.startswith("_"))
                elif k == "groups" and isinstance(v, list):
                    # a group without entity_level is a sub-point tagged with the group's name
                    keys.update(g["name"] for g in v if isinstance(g, dict) and not g.get("entity_level"))
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, parent)

    for path in sorted((ROOT / "collectors" / "profiles").glob("*/*.toml")):
        walk(tomllib.loads(path.read_text()))
    return keys


def test_totals_only_covers_every_subpoint_tag_of_the_profiles() -> None:
    from dashboards.panels import SUBPOINT_TAGS, TOTALS_ONLY

    entity = {"site", "level", "id", "loop", "device", "protocol"}
    found = _profile_tag_keys()
    # where-filtered index positions (Raritan's sensor type) never become tags: harmless extras
    assert {"phase", "side", "line", "outlet"} <= found
    assert found - entity - {"sensor"} <= set(SUBPOINT_TAGS), found - entity - set(SUBPOINT_TAGS)
    chain = load_committed(ROOT)["powerplane-power-chain"]
    power = [t["query"] for p in chain["panels"] for t in p.get("targets", []) if 'FROM "power"' in t["query"]]
    assert power and all(TOTALS_ONLY in q for q in power)
