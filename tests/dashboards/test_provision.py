"""Provisioning through grafana-client, idempotently — against a STAND-IN Grafana API.

The server is ``grafana_standin.GrafanaStandIn`` (stdlib http.server), not Grafana: no
Grafana can be installed here. grafana-client and our provisioning run unmodified over real
HTTP against it.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator

import pytest
import yaml

from dashboards.boards import BOARDS
from dashboards.build import dashboard_json
from dashboards.influxql import DATASOURCE_UID
from dashboards.provision import InfluxSource, connect, provision
from models.errors import ProvisionError
from powerplane.cli import main
from tests.conftest import ROOT
from tests.dashboards.grafana_standin import GrafanaStandIn

PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


@pytest.fixture
def grafana() -> Iterator[GrafanaStandIn]:
    srv = GrafanaStandIn()
    srv.start()
    yield srv
    srv.stop()


def _boards() -> list[dict[str, object]]:
    return [dashboard_json(uid) for uid, _ in BOARDS]


SOURCE = InfluxSource("http://influxdb:8086", token="influx-token")


def test_provision_creates_then_changes_nothing(grafana: GrafanaStandIn) -> None:
    api = connect(grafana.url, grafana.token)
    first = provision(api, SOURCE, _boards())
    assert first.folder == "created" and first.datasource == "created"
    assert set(first.dashboards.values()) == {"created"} and len(first.dashboards) == len(BOARDS)
    assert grafana.writes == {"folder": 1, "datasource": 1, "dashboard": len(BOARDS)}
    ds = grafana.datasources[DATASOURCE_UID]
    assert ds["jsonData"]["dbName"] == "powerplane"
    assert ds["secureJsonData"] == {"httpHeaderValue1": "Token influx-token"}
    assert all(d["folderUid"] == "powerplane" for d in grafana.dashboards.values())

    again = provision(connect(grafana.url, grafana.token), SOURCE, _boards())
    assert not again.changed(), again
    assert grafana.writes == {"folder": 1, "datasource": 1, "dashboard": len(BOARDS)}
    assert {d["dashboard"]["version"] for d in grafana.dashboards.values()} == {1}


def test_provision_updates_only_what_differs(grafana: GrafanaStandIn) -> None:
    api = connect(grafana.url, grafana.token)
    provision(api, SOURCE, _boards())
    boards = _boards()
    edited = copy.deepcopy(boards)
    edited[2]["title"] = "Cooling (edited)"
    r = provision(api, InfluxSource("http://influx.example:8086", token="influx-token"), edited)
    assert r.folder == "unchanged" and r.datasource == "updated"
    assert [v for v in r.dashboards.values()].count("updated") == 1
    assert r.dashboards[str(boards[2]["uid"])] == "updated"
    assert grafana.dashboards[str(boards[2]["uid"])]["dashboard"]["version"] == 2
    # a dashboard moved out of our folder by hand is put back
    grafana.dashboards[str(boards[0]["uid"])]["folderUid"] = "general"
    assert provision(api, SOURCE, edited).dashboards[str(boards[0]["uid"])] == "updated"


def test_bad_token_and_unreachable_grafana_are_clear_errors(grafana: GrafanaStandIn) -> None:
    with pytest.raises(ProvisionError, match="401"):
        provision(connect(grafana.url, "wrong"), SOURCE, _boards())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        with pytest.raises(ProvisionError, match="cannot reach Grafana"):
            provision(connect(dead, "t", timeout_s=2), SOURCE, _boards())
    assert grafana.writes == {}


def test_cli_provision(grafana: GrafanaStandIn, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["dashboards", "provision", "--grafana-url", grafana.url, "--token", grafana.token,
            "--influx-token", "t0k"]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("created") == 2 + len(BOARDS) and out.count("unchanged") == 2 + len(BOARDS)
    assert main([*args[:4], "--token", "wrong"]) == 1
    assert "Grafana refused" in capsys.readouterr().err


def test_file_provisioning_parses_and_agrees_with_the_code() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "powerplane.yaml").read_text())
    (src,) = ds["datasources"]
    assert src["uid"] == DATASOURCE_UID and src["type"] == "influxdb" and src["jsonData"]["version"] == "InfluxQL"
    dash = yaml.safe_load((PROVISIONING / "dashboards" / "powerplane.yaml").read_text())
    (prov,) = dash["providers"]
    assert prov["type"] == "file" and prov["folderUid"] == "powerplane"
    alerting = yaml.safe_load((PROVISIONING / "alerting" / "powerplane.yaml").read_text())
    assert {r["data"][0]["datasourceUid"] for g in alerting["groups"] for r in g["rules"]} == {DATASOURCE_UID}
    assert {g["folder"] for g in alerting["groups"]} == {prov["folder"]}
