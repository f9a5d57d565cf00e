"""The command line: site generation, the twin and the demo, run as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import DEMO_SITE, ROOT


def pp(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "powerplane", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


def test_site_generate_writes_a_gigawatt_site(tmp_path: Path) -> None:
    out = tmp_path / "gw.toml"
    r = pp("site", "generate", "--racks", "1700", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = pp("site", "show", str(out), "--json")
    info = json.loads(r.stdout)
    assert info["gpus"] == 979_200 and info["racks"] == 1700
    print(f"topology arrays for {info['gpus']:,} GPUs built in {info['topology_ms']} ms "
          f"(parse {info['parse_ms']} ms, validate {info['validate_ms']} ms)")


def test_site_generate_reports_unwritable_path(tmp_path: Path) -> None:
    r = pp("site", "generate", "--racks", "2", "--out", str(tmp_path / "no" / "such" / "dir.toml"))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_twin_prints_endpoints(tmp_path: Path) -> None:
    eps = tmp_path / "eps.json"
    r = pp("twin", "--site", str(DEMO_SITE), "--duration", "4", "--speed", "4", "--no-mqtt",
           "--endpoints-out", str(eps))
    assert r.returncode == 0, r.stderr
    assert "modbus://127.0.0.1:" in r.stdout and "snmp://r01-pdu-a@127.0.0.1:" in r.stdout
    doc = json.loads(eps.read_text())
    assert len(doc["endpoints"]) == 28


def test_demo_collects_controls_stores_and_reports(tmp_path: Path) -> None:
    t0 = time.monotonic()
    data = tmp_path / "data"
    # 150 simulated s: the demand-response event starts at 120 s.
    r = pp("demo", "--duration", "150", "--speed", "10", "--no-live", "--data-dir", str(data), timeout=240,
           env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "powerplane demo summary" in out
    assert "energy" in out and "MWh" in out
    assert "no plan granted over a limit" in out
    assert "devices (Modbus, SNMP, MQTT); rejected 0" in out
    assert "dropped 0" in out
    assert "1,152 nodes in 2 processes" in out  # caps went through the agents
    assert "signed webhooks verified by the receiver" in out and "dr_start 1" in out
    assert "Traceback" not in r.stderr
    print(f"demo: 150 simulated s in {time.monotonic() - t0:.1f} s")

    rep = pp("report", "--data-dir", str(data), "--out", str(tmp_path / "plots"))
    assert rep.returncode == 0, rep.stderr
    assert "facility energy" in rep.stdout and "DR compliance" in rep.stdout
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["headroom.png", "pue.png", "site_power.png"]


def test_bad_mqtt_url_is_a_clear_error() -> None:
    r = pp("demo", "--duration", "5", "--mqtt", "http://nowhere", "--no-live")
    assert r.returncode == 2
    assert "--mqtt" in r.stderr and "mqtt://host:port" in r.stderr and "Traceback" not in r.stderr
