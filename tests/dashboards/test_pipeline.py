"""The dashboards on the real pipeline: the default demo (twin, collectors, controller, agents,
the outage drill) writes into InfluxDB 1.x, then every panel and alert query runs over what it
wrote and the values are checked against the twin's own truth series (``truth.series.csv``).

Nothing here is synthesized: what a panel shows went through the Modbus/SNMP/MQTT servers, the
collectors, MQTT, the controller and the InfluxDB sink. Tolerances, each stated where it is
checked, allow for what a meter read every 2 s cannot see (the training jobs swing at 0.5 Hz)
and for sensors' time constants; they are tight enough that the faults the panels once had
(half the power from averaging totals with phases, the facility water mixed into the CDU
supply, a stale IT power) fail them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from controllers.notices import CAP_STEP_W
from dashboards import alerts
from dashboards.build import load_committed
from models.twin.truth import energy_over, read_series
from testbed.realservers import InfluxDB1
from tests.conftest import ROOT
from tests.dashboards.seed import Seeded, Truth
from tests.dashboards.test_queries import _targets, expand, has_values, influxql, query_of

pytestmark = pytest.mark.servers

S = 10**9
MINUTE = "1m"
# A device read on fixed 2 s (or 1 s) slots sees a load that swings at 0.5 Hz at nearly one
# phase for minutes: a minute's mean of its readings was up to 5.2 % off the twin's average in
# seven runs. Per-minute power and heat are checked within this; energy and PUE, which come
# from the meter's register, much tighter.
ALIASING = 0.08


@dataclass(frozen=True)
class Run:
    srv: InfluxDB1
    seeded: Seeded  # the database and the time range, as the seeded tests use them
    values: dict[str, list[str]]  # the dashboard variables, resolved by their own queries
    truth: np.ndarray  # the twin's series
    summary: dict[str, Any]
    final_jobs: list[dict[str, Any]]  # the plan in force at the end (the last controller's summary)

    def q(self, query: str, interval: str = MINUTE) -> list[dict[str, Any]]:
        return influxql(self.srv, self.seeded.database, expand(query, self.values, self.seeded, interval))


@pytest.fixture(scope="module")
def run(influxdb1: InfluxDB1, tmp_path_factory: pytest.TempPathFactory) -> Run:
    d = tmp_path_factory.mktemp("pipeline")
    db = "pipeline"
    req = urllib.request.Request(f"{influxdb1.url}/query", data=urllib.parse.urlencode(
        {"q": f'CREATE DATABASE "{db}"'}).encode(), method="POST")
    urllib.request.urlopen(req, timeout=30).read()
    out = d / "summary.json"
    r = subprocess.run([sys.executable, "-m", "powerplane", "demo", "--no-live", "--data-dir", str(d / "data"),
                        "--influx-url", influxdb1.url, "--influx-api", "v1", "--influx-bucket", db,
                        "--summary-json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    summary = json.loads(out.read_text())
    assert r.returncode == 0, (summary["reasons"], r.stdout[-3000:], r.stderr[-3000:])
    run_dir = d / "data" / "run"
    last = max(run_dir.glob("controller-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    # The run: from the first to the last thing stored (the site meter, or the first events).
    ends = [influxdb1_series(influxdb1, db, f'SELECT {f}("{field}") FROM "{m}"')[0]["values"][0][0]
            for f in ("first", "last") for m, field in (("site", "facility_w"), ("events", "message"))]
    seeded = Seeded(db, "demo-hall", int(min(ends[:2])), int(max(ends[2:])), 0, Truth())
    values: dict[str, list[str]] = {}
    for var in load_committed(ROOT)["powerplane-site-energy"]["templating"]["list"]:
        series = influxql(influxdb1, db, expand(var["query"], values, seeded))
        values[var["name"]] = sorted({row[1] for s in series for row in s["values"]})
    return Run(influxdb1, seeded, values, read_series(run_dir / "truth.series.csv"), summary,
               json.loads(last.read_text())["jobs"])


def influxdb1_series(srv: InfluxDB1, db: str, q: str) -> list[dict[str, Any]]:
    url = f"{srv.url}/query?" + urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"})
    with urllib.request.urlopen(url, timeout=30) as r:
        (result,) = json.loads(r.read())["results"]
    assert "error" not in result, result
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def buckets(run: Run, query: str, width_s: float = 60.0) -> dict[str, list[tuple[int, int, float]]]:
    """Per series (by its tags): ``(start_ns, end_ns, mean)`` of the whole buckets of a
    ``mean(...) GROUP BY time`` panel query that the data covers — at least 90 % of the readings
    its fullest bucket has. The drill's gap (the controller is down 20 s) leaves a minute only
    partly known; comparing its mean with the twin's whole minute would test the gap, not the
    panel."""
    assert "mean(" in query
    means = run.q(query)
    counts = {json.dumps(s.get("tags")): s for s in run.q(query.replace("mean(", "count(", 1))}
    out: dict[str, list[tuple[int, int, float]]] = {}
    for s in means:
        key = json.dumps(s.get("tags"))
        n = {t: c for t, c in counts[key]["values"]}
        full = max(c or 0 for c in n.values())
        rows = out.setdefault(key, [])
        for t_ms, v in s["values"]:
            a = int(t_ms) * 1_000_000
            b = a + int(width_s * S)
            if v is not None and a >= run.seeded.start_ns and b <= run.seeded.end_ns and (n[t_ms] or 0) >= 0.9 * full:
                rows.append((a, b, float(v)))
    return out


def twin_mean(run: Run, column: str, a: int, b: int) -> float:
    """The twin's mean of an instantaneous column over the seconds ending in ``(a, b]``."""
    t = run.truth["t_ns"]
    sel = run.truth[column][(t > a) & (t <= b)]
    return float(np.mean(sel))


def twin_power(run: Run, column: str, a: int, b: int) -> float:
    """The twin's average power (W) over ``[a, b)`` from its energy integral."""
    return energy_over(run.truth, [(a, b)], column) * 3.6e6 / ((b - a) / S)


def test_every_panel_and_alert_shows_data_from_the_pipeline(run: Run) -> None:
    assert run.values == {"site": ["demo-hall"], "hall": ["hall-a", "hall-b"],
                          "row": ["row-a1", "row-a2", "row-b1", "row-b2"], "rack": [f"r0{i}" for i in range(1, 9)]}
    # The non-compliance table lists episodes; a run without one has nothing to list.
    # Infeasibility likewise: a run whose every plan was feasible leaves those panels and
    # the alert's query empty (the seeded tests cover them with data).
    quiet = {"Non-compliance by rack [A]"} if run.summary["noncompliant_episodes"] == 0 else set()
    quiet_alerts = set()
    if run.summary["infeasible_plans"] == 0:
        quiet |= {"Infeasible constraints [A]"}
        quiet_alerts.add("powerplane-constraint-infeasible")
    empty = [f"{uid}: {panel}" for uid, panel, query, interval in _targets()
             if panel not in quiet and not has_values(run.q(query, interval))]
    empty += [f"alert {rule.uid}" for rule in alerts.RULES
              if rule.uid not in quiet_alerts and not has_values(run.q(rule.query))]
    assert not empty, "panels with nothing to show on the real pipeline: " + "; ".join(empty)


@pytest.mark.parametrize(("ref", "column", "rel"), [("A", "facility_wh", ALIASING), ("B", "it_wh", 0.03)])
def test_site_and_it_power_per_minute_are_the_twins(run: Run, ref: str, column: str, rel: float) -> None:
    """Each minute's mean power against the twin's average over that minute. Facility power
    within ``ALIASING``: the meter is read every 2 s on fixed slots (jittered by 0.2 s) and the
    training jobs swing at 0.5 Hz (energy comes from the register instead, below). IT power
    within 3 %: it is
    derived every period from the servers the agents measure, from the UPS outputs (polled
    every 10 s) until every server has reported (2.0 % seen in the first minute)."""
    (got,) = buckets(run, query_of("powerplane-site-energy", "Site power vs grid limit and DR target", ref)).values()
    assert len(got) >= 10
    for a, b, v in got:
        want = twin_power(run, column, a, b)
        assert v == pytest.approx(want, rel=rel), (ref, (a - run.seeded.start_ns) / S, v, want)


def test_energy_and_pue_are_the_twins(run: Run) -> None:
    """Energy today (the site meter's register: what it counted between its first and last
    reading) within 0.5 % of the twin's energy over the same time (the register is read every
    2 s and stamped mid-exchange); PUE per minute against the twin's energy ratio."""
    (e,) = run.q(query_of("powerplane-site-energy", "Energy today", stat=True), "5s")
    reg = 'FROM "power" WHERE "site" = \'demo-hall\' AND "level" = \'\' AND "phase" = \'\''
    ra = influxdb1_series(run.srv, run.seeded.database, f'SELECT first("energy_wh") {reg}')[0]["values"][0][0]
    rb = influxdb1_series(run.srv, run.seeded.database, f'SELECT last("energy_wh") {reg}')[0]["values"][0][0]
    assert e["values"][-1][1] == pytest.approx(energy_over(run.truth, [(int(ra), int(rb))]) * 1e3, rel=0.005)
    # PUE, per minute: the controller's site.pue is facility energy (the register) over IT
    # energy over the last minute, so a minute's mean is the twin's ratio over about the two
    # minutes before its end; within 0.015 (IT power is within 1 %).
    (pue,) = buckets(run, query_of("powerplane-site-energy", "PUE", stat=False)).values()
    assert len(pue) >= 10
    for a, b, v in pue:
        spans = [(a - 60 * S, b)]
        want = energy_over(run.truth, spans, "facility_wh") / energy_over(run.truth, spans, "it_wh")
        assert v == pytest.approx(want, abs=0.015), ((a - run.seeded.start_ns) / S, v, want)


def test_loop_heat_and_return_temperature_are_the_twins(run: Run) -> None:
    """Per loop and minute: heat within ``ALIASING`` (or 5 kW) — the CDU is read once a period on
    fixed slots and the heat swings with the GPUs at 0.5 Hz (up to 3.9 % seen) — and return
    temperature within 0.3 °C of the twin's."""
    uid = "powerplane-cooling"
    loops = [c.split(" ", 1)[1] for c in run.truth.dtype.names if c.startswith("heat_w ")]
    heat = buckets(run, query_of(uid, "Loop heat vs capacity", "A"))
    back = buckets(run, query_of(uid, "Supply and return temperature", "B"))
    loop_of = {k: json.loads(k)["loop"] for k in heat}
    assert sorted(loop_of.values()) == sorted(json.loads(k)["loop"] for k in back) == sorted(loops)
    for key, rows in heat.items():
        k = loop_of[key]
        for a, b, v in rows:
            want = twin_mean(run, f"heat_w {k}", a, b)
            assert abs(v - want) <= max(ALIASING * want, 5e3), (k, (a - run.seeded.start_ns) / S, v, want)
    for key, rows in back.items():
        k = json.loads(key)["loop"]
        for a, b, v in rows:
            want = twin_mean(run, f"return_c {k}", a, b)
            assert v == pytest.approx(want, abs=0.3), (k, (a - run.seeded.start_ns) / S)


def test_dr_target_and_compliance_are_the_twins(run: Run) -> None:
    """The DR target the board draws is the one the twin enforced, in the minutes it was in
    force; and in those minutes the site power the board shows stays under it (within the 2 %
    the meter allows), as the twin's own power did."""
    uid = "powerplane-site-energy"
    (target,) = run.q(query_of(uid, "Site power vs grid limit and DR target", "D"))
    (site,) = buckets(run, query_of(uid, "Site power vs grid limit and DR target", "A")).values()
    t = run.truth["t_ns"]
    in_force = [(int(t_ms) * 1_000_000, float(v)) for t_ms, v in target["values"] if v is not None]
    assert in_force, "the demo's DR event is not on the board"
    power = {a: v for a, _, v in site}
    whole = 0
    for a, v in in_force:
        b = a + 60 * S
        twin = run.truth["dr_target_w"][(t > a) & (t <= b)]
        twin = twin[np.isfinite(twin)]
        assert twin.size and v == pytest.approx(float(twin.mean()), rel=1e-9), (a - run.seeded.start_ns) / S
        if twin.size == 60 and a in power:  # a whole minute under the target
            whole += 1
            assert twin_power(run, "facility_wh", a, b) <= v * 1.0001
            assert power[a] <= v * (1 + ALIASING)
    assert whole >= 2


def test_caps_by_job_are_the_plan_in_force(run: Run) -> None:
    """The last per-GPU cap each job was told is the final plan's, within the step that makes a
    change worth telling (``CAP_STEP_W``)."""
    rows = run.q(query_of("powerplane-capping", "Caps by job and priority"))
    got = {r["tags"]["entity"]: r["values"][0][r["columns"].index("cap_w_per_gpu")] for r in rows}
    want = {j["id"]: j["cap_per_gpu_w"] for j in run.final_jobs if j["cap_per_gpu_w"] is not None}
    assert set(want) <= set(got)
    for job, w in want.items():
        assert abs(got[job] - w) <= CAP_STEP_W, (job, got[job], w)
