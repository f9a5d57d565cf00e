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
    """The whole plane as processes (twin, collector, controller, agents) for 150 site seconds:
    what the summary claims is checked against the twin's truth and the store itself."""
    import sqlite3

    t0 = time.monotonic()
    data = tmp_path / "data"
    out_json = tmp_path / "summary.json"
    # 150 simulated s: the demand-response event starts at 120 s.
    r = pp("demo", "--duration", "150", "--speed", "10", "--no-live", "--data-dir", str(data), "--summary-json",
           str(out_json), timeout=300, env={**os.environ, "COLUMNS": "200"})
    s = json.loads(out_json.read_text())
    assert r.returncode == s["exit_status"], (r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, s["reasons"]
    assert "powerplane demo summary" in r.stdout and "Traceback" not in r.stderr
    assert s["limits_exceeded"] == [] and s["plans_with_violations"] == 0 and s["control_errors"] == 0
    assert s["devices_up"] == s["devices_total"] == 30
    assert s["plans"] >= 0.98 * s["periods"] > 0
    assert s["agents"]["nodes"] == 1152 and s["agents"]["processes"] == 2  # caps went through the agents
    assert s["commands"] > 0 and s["statuses"] > 0 and s["settled"] > 0
    assert s["hooks"]["verified"] > 0 and s["hooks"]["kinds"].get("dr_start") == 1
    # truth: the twin's own integrals, and a PUE that is their ratio
    assert s["facility_energy_kwh"] > s["it_energy_kwh"] > 0
    assert abs(s["pue"] - s["facility_energy_kwh"] / s["it_energy_kwh"]) < 1e-9
    # the count the summary claims is what the store holds
    con = sqlite3.connect(data / "telemetry.sqlite")
    held = con.execute("SELECT count(*) FROM readings").fetchone()[0]
    events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    con.close()
    assert s["points_stored"] == held == s["points_claimed"], (held, s["points_claimed"])
    assert s["events_stored"] == events and s["dropped"] == 0
    print(f"demo: 150 simulated s in {time.monotonic() - t0:.1f} s; plans {s['plans']}/{s['periods']}, "
          f"settle p95 {s['settle_p95_s']} s")

    rep = pp("report", "--data-dir", str(data), "--out", str(tmp_path / "plots"))
    assert rep.returncode == 0, rep.stderr
    assert "facility energy" in rep.stdout and "DR compliance" in rep.stdout
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["headroom.png", "pue.png", "site_power.png"]
    _report_matches_the_twin(data, s)


def _iso_ns(text: str) -> int:
    import pandas as pd

    return int(pd.Timestamp(text).value)


def _covered(start: int, end: int, gaps: list[dict[str, str]]) -> list[tuple[int, int]]:
    """``[start, end)`` without the gaps (sorted, disjoint)."""
    out, t = [], start
    for g in sorted(gaps, key=lambda g: g["start"]):
        a, b = _iso_ns(g["start"]), _iso_ns(g["end"])
        if a > t:
            out.append((t, a))
        t = max(t, b)
    if end > t:
        out.append((t, end))
    return out


def _intersect(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(max(a, c), min(b, d)) for a, b in x for c, d in y if max(a, c) < min(b, d)]


def _report_matches_the_twin(data: Path, summary: dict[str, object]) -> None:
    """Ground truth: `powerplane report --json` against the twin's own integrals over exactly the
    time the report covers (its gaps left out of both sides): energies within 1 %, PUE within
    0.01, the peak minute's demand within 1 %. Computed here from the report's JSON and the twin's series file,
    independently of the demo's own check (which must agree)."""
    from models.twin.truth import energy_over, peak_over, read_series

    r = pp("report", "--data-dir", str(data), "--json", "--demand-interval", "60")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    series = read_series(data / "run" / "truth.series.csv")
    start, end = _iso_ns(rep["start"]), _iso_ns(rep["end"])
    cov = {k: rep["coverage"][k] for k in ("facility", "it")}
    assert all(c["gap_count"] == len(c["gaps"]) for c in cov.values())  # every gap listed
    fac_spans = _covered(start, end, cov["facility"]["gaps"])
    it_spans = _covered(start, end, cov["it"]["gaps"])
    twin_fac = energy_over(series, fac_spans, "facility_wh")
    twin_it = energy_over(series, it_spans, "it_wh")
    both = _intersect(fac_spans, it_spans)
    twin_pue = energy_over(series, both, "facility_wh") / energy_over(series, both, "it_wh")
    a = _iso_ns(rep["peak_demand_start"])
    twin_demand_kw = energy_over(series, [(a, a + 60 * 10**9)], "facility_wh") * 60  # kWh in a minute -> kW
    got = (rep["facility_energy_kwh"], rep["it_energy_kwh"], rep["pue"], rep["peak_demand_kw"])
    want = (twin_fac, twin_it, twin_pue, twin_demand_kw)
    assert abs(got[0] / want[0] - 1) <= 0.01, (got, want)
    assert abs(got[1] / want[1] - 1) <= 0.01, (got, want)
    assert abs(got[2] - want[2]) <= 0.01, (got, want)
    assert abs(got[3] / want[3] - 1) <= 0.01, (got, want)
    # the highest reading may miss a sub-second peak between readings, never invent one
    assert rep["peak_facility_kw"] <= 1.01 * peak_over(series, fac_spans, "facility_max_w") / 1e3
    assert rep["facility_energy_source"] == "energy register"
    # Nothing was lost mid-run: the only uncovered time is at the window's edges (the window
    # runs from the first stored reading of any series to the last; the meter starts later and
    # stops earlier than the controller's own inputs).
    for c in cov.values():
        assert all(g["start"] == rep["start"] or g["end"] == rep["end"] for g in c["gaps"]), c["gaps"]
        assert c["covered_s"] >= 0.5 * rep["window_s"]
    check = summary["report_check"]
    assert isinstance(check, dict) and check["ok"], check
    print(f"report vs twin: facility {got[0] / want[0] - 1:+.2%}, IT {got[1] / want[1] - 1:+.2%}, "
          f"PUE {got[2] - want[2]:+.4f}, peak demand {got[3] / want[3] - 1:+.2%}")


def test_demo_with_two_controllers_shows_a_takeover(tmp_path: Path) -> None:
    """--controllers 2: a private etcd, two controllers; the drill kills the one in authority and the
    standby takes over before any agent's lease runs out."""
    from testbed.realservers import require

    require("etcd")  # missing: skipped here, a failure under CI=true
    out_json = tmp_path / "summary.json"
    r = pp("demo", "--controllers", "2", "--duration", "120", "--outage", "70:20", "--no-live", "--data-dir",
           str(tmp_path / "data"), "--summary-json", str(out_json), timeout=400, env={**os.environ, "COLUMNS": "200"})
    s = json.loads(out_json.read_text())
    assert r.returncode == s["exit_status"] == 0, (s["reasons"], r.stdout[-3000:])
    t = s["takeover"]
    assert t["ok"] and t["fell_back"] == 0 and t["epoch"] > t["killed_epoch"] and t["successor"] != t["killed"]
    assert t["rejoined"] and s["controllers"] == 2 and s["drill"] is None
    assert "takeover drill" in r.stdout and "0/1152 nodes fell back" in r.stdout
    assert s["agents"]["modes"] == {"controlled": 1152}


def test_bad_mqtt_url_is_a_clear_error() -> None:
    r = pp("demo", "--duration", "5", "--mqtt", "http://nowhere", "--no-live")
    assert r.returncode == 2
    assert "--mqtt" in r.stderr and "mqtt://host:port" in r.stderr and "Traceback" not in r.stderr


def test_demo_authenticates_to_a_broker_with_a_password_file(tmp_path: Path) -> None:
    """``demo --mqtt mqtt://user@host:port --mqtt-password-file F`` keeps the credentials: every
    process of the plane connects with them to a broker that admits no anonymous client. The
    password never travels on a command line (a URL carrying one is refused); a wrong one is a
    clear error, not a traceback."""
    from testbed.realservers import Mosquitto

    srv = Mosquitto(tmp_path / "mqtt", persistent=False, users={"plane": "s3cret-pw"})
    srv.start()
    try:
        pw = tmp_path / "pw"
        pw.write_text("s3cret-pw\n")
        pw.chmod(0o600)
        url = f"mqtt://plane@127.0.0.1:{srv.port}"
        out = tmp_path / "s.json"
        r = pp("demo", "--mqtt", url, "--mqtt-password-file", str(pw), "--duration", "150", "--speed", "10",
               "--no-live", "--outage", "off", "--data-dir", str(tmp_path / "data"), "--summary-json", str(out),
               timeout=300)
        s = json.loads(out.read_text())
        assert r.returncode == 0, (s["reasons"], r.stderr[-2000:])
        assert s["plans"] > 0 and s["statuses"] > 0 and s["devices_up"] == s["devices_total"]
        assert "s3cret-pw" not in r.stdout + r.stderr
        bad = tmp_path / "bad"
        bad.write_text("wrong\n")
        bad.chmod(0o600)
        r = pp("demo", "--mqtt", url, "--mqtt-password-file", str(bad), "--duration", "10", "--no-live",
               "--data-dir", str(tmp_path / "data2"), timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert "not authori" in (r.stdout + r.stderr).lower() or "refused" in (r.stdout + r.stderr).lower(), \
            r.stderr[-1500:]
    finally:
        srv.stop()
