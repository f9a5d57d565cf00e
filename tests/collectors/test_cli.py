"""``powerplane profiles`` and ``powerplane collect`` end to end (the twin in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from powerplane.cli import main
from testbed.realservers import Mosquitto

# real servers: a hang fails fast, with pytest-timeout's stack dump, instead of after 300 s
pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def test_profiles_list_show_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["profiles", "list", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert {"sunspec-meter-int", "cdu-aalc", "bms-json", "grid-json"} <= names
    assert main(["profiles", "show", "generic-meter-f32", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"point": "power_total_kw", "metric": "power.power_w", "detail": "holding 3060, float32, ABCD, x1000"} \
        in doc["points"]
    assert main(["profiles", "check"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('protocol = "modbus"\nname = "bad"\n[[points]]\nname = "w"\naddress = 1\ntype = "float99"\n')
    assert main(["profiles", "check", str(bad)]) == 2
    out = capsys.readouterr().out
    assert f"{bad}: points[0].type: Input should be" in out
    assert main(["profiles", "show", "nope"]) == 2  # ConfigError rendered by main
    assert "nope: no profile of that name" in capsys.readouterr().err


def test_collect_the_twin_from_its_endpoints_file(tmp_path: Path, mosquitto: Mosquitto,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    eps = tmp_path / "endpoints.json"
    twin = subprocess.Popen([sys.executable, "-m", "powerplane", "twin", "--site", str(ROOT / "deploy/sites/demo.toml"),
                             "--mqtt", mosquitto.url, "--endpoints-out", str(eps), "--duration", "300"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not eps.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert eps.exists(), "the twin did not write its endpoints"
        time.sleep(0.2)
        assert main(["collect", "--endpoints", str(eps), "--site", str(ROOT / "deploy/sites/demo.toml"),
                     "--duration", "6", "--json"]) == 0
        out = capsys.readouterr().out
        doc = json.loads(out[out.index("{"):])
    finally:
        twin.terminate()
        twin.wait(10)
    health = {h["device"]: h for h in doc["health"]}
    for name, h in health.items():
        if h["protocol"] in ("modbus", "mqtt"):
            assert h["up"] and h["consecutive_failures"] == 0, (name, h)
    metrics = {r["metric"] for r in doc["readings"]}
    assert {"site.facility_w", "power.power_w", "cooling.supply_c", "cooling.flow_lpm", "cooling.pumps_running",
            "grid.limit_w", "grid.frequency_hz", "cooling.inlet_c"} <= metrics
    racks = {r["tags"]["id"] for r in doc["readings"] if r["metric"] == "power.power_w"
             and r["tags"].get("level") == "rack" and "phase" not in r["tags"]}
    assert len(racks) == 8  # every rack's tap-off
