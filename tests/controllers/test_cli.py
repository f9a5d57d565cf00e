"""``powerplane plan`` on the demo site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from powerplane.cli import main
from tests.conftest import DEMO_SITE


def test_plan_prints_budget_binding_and_no_violation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--site", str(DEMO_SITE)]) == 0
    out = capsys.readouterr().out
    assert "interconnect limit" in out and "row row-a1" in out
    assert "no infeasible constraint" in out and "0 violations in this plan" in out


def test_plan_json_during_demand_response(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--site", str(DEMO_SITE), "--at", "150", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["budget_reason"] == "demand response dr-evening-1"
    assert doc["budget_w"] == 3_900_000.0 and doc["binding"] == {"site": 4608}
    assert doc["violations"] == [] and doc["violations_in_run"] == 0
    assert len(doc["racks"]) == 8 and len(doc["loops"]) == 2


def test_plan_on_a_bad_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--site", str(tmp_path / "missing.toml")]) == 2
    assert "file not found" in capsys.readouterr().err
