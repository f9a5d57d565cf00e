"""The site's own tools, against real processes: Prometheus scrapes ``/metrics`` of the controller, an
agent and a collector (parsed with prometheus_client's own parser), the probes answer, and a job that
the real Slurm prolog registers (a fake ``scontrol`` on PATH) shows in ``powerplane jobs list`` and in the
next plan's caps until the real epilog removes it.

Real mosquitto, the twin in this process (its GPU boards and device servers), ``python -m powerplane``
processes. Waits are generous deadlines for things that must happen, never timing thresholds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controllers.actuation.messages import SiteKey
from models.clock import SystemClock
from models.files import read_json
from models.site import load_site
from testbed.realservers import Mosquitto, free_port
from tests.conftest import DEMO_SITE, ROOT
from tests.controllers.hooks.test_slurm_scripts import fake_scontrol
from twin.runner import Twin

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

KEY = SiteKey(b"integrations-site-key-0123456789")
SLURM = ROOT / "deploy" / "slurm"


class Procs:
    """``python -m powerplane`` children, stopped (SIGTERM) at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[subprocess.Popen[bytes], TextIO, Path]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        fh = log.open("w")
        env = dict(os.environ, POWERPLANE_SITE_KEY=KEY.hex(), PYTHONPATH=str(ROOT))
        p = subprocess.Popen([sys.executable, "-m", "powerplane", *args], stdout=fh, stderr=subprocess.STDOUT,
                             env=env, cwd=self.workdir)
        self.procs.append((p, fh, log))
        return p

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, _, log in self.procs)

    def stop(self) -> list[int]:
        for p, _, _ in self.procs:
            if p.poll() is None:
                p.terminate()
        codes = []
        for p, fh, _ in self.procs:
            try:
                codes.append(p.wait(30))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait(5))
            fh.close()
        return codes


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    yield ps
    ps.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``base/metrics``, parsed by prometheus_client: (name, sorted labels) -> value."""
    status, text = get(f"{base}/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait(pred: Callable[[], Any], timeout_s: float, what: str, diag: Callable[[], str] = str) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout_s:g} s\n{diag()}", pytrace=False)


def run_script(script: str, env: dict[str, str]) -> None:
    r = subprocess.run(["/bin/sh", str(SLURM / script)], env=env, capture_output=True, text=True, timeout=30,
                       check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_a_prolog_job_is_listed_capped_and_freed_by_the_epilog(mosquitto: Mosquitto, procs: Procs,
                                                                 tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    summary = tmp_path / "controller.json"
    procs.start("controller", "controller", "--site", str(DEMO_SITE), "--mqtt", mosquitto.url, "--state-dir",
                str(tmp_path / "state"), "--data-dir", str(tmp_path / "data"), "--summary-out", str(summary),
                "--jobs-spool", str(spool), "--metrics", "127.0.0.1:0")

    def doc() -> dict[str, Any]:
        return read_json(summary) or {}

    wait(lambda: doc().get("plans", 0) > 0 and doc().get("metrics"), 120, "the controller plans", procs.logs)
    base = doc()["metrics"]
    # liveness: the loop runs; readiness: no agent reports, so the GPUs' telemetry is stale
    assert get(f"{base}/healthz")[0] == 200
    status, why = get(f"{base}/readyz")
    assert status == 503 and "without fresh telemetry" in why

    env = {"PATH": f"{fake_scontrol(tmp_path / 'bin')}:{os.environ['PATH']}", "POWERPLANE_SPOOL": str(spool),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "r06-node-[072-143]", "SLURM_JOB_PARTITION": "gpu",
           "SLURM_JOB_USER": "alice"}
    run_script("prolog.sh", env)
    spool.joinpath("junk.json").write_text("{")  # a malformed entry: refused, counted
    before = doc()["plan_id"]

    def listed() -> dict[str, Any] | None:
        d = doc()
        row = next((r for r in d.get("jobs", []) if r["id"] == "4242"), None)
        return row if row is not None and "cap_per_gpu_w" in row and d["plan_id"] > before else None

    row = wait(listed, 60, "job 4242 in the plan", procs.logs)
    # the [scheduler] rule for partition gpu, QOS high (from scontrol): priority 2, weight 2
    assert (row["source"], row["priority"], row["weight"], row["qos"], row["gpus"]) == ("slurm", 2, 2.0, "high", 288)
    assert row["nodes"] == "r06-node-[072-143]" and 300 <= row["cap_per_gpu_w"] <= 880

    r = subprocess.run([sys.executable, "-m", "powerplane", "jobs", "list", "--summary", str(summary)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "4242" in ln)
    assert "slurm" in line and "r06-node-[072-143]" in line and "qos=high" in line
    assert "site" in next(ln for ln in r.stdout.splitlines() if "pretrain-llm" in ln)
    r = subprocess.run([sys.executable, "-m", "powerplane", "jobs", "show", "4242", "--summary", str(summary),
                        "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and json.loads(r.stdout)["partition"] == "gpu"

    m = scrape(base)
    assert value(m, "powerplane_jobs_live", source="slurm") == 1
    assert value(m, "powerplane_job_gpus", job="4242", source="slurm", priority="2") == 288
    assert (value(m, "powerplane_job_cap_watts", job="4242", source="slurm", priority="2") or 0) >= 288 * 300
    assert value(m, "powerplane_jobs_rejected_total", source="slurm", reason="malformed") == 1
    assert (value(m, "powerplane_controller_plans_total") or 0) > 0
    assert value(m, "powerplane_controller_epoch") == 1
    assert (value(m, "powerplane_priority_gpus", priority="2") or 0) >= 288 + 576
    assert value(m, "powerplane_level_limit_watts", level="rack") is not None
    assert value(m, "powerplane_headroom_watts", level="feed", id="utility-1") is not None
    assert value(m, "powerplane_controller_period_lateness_seconds_count") is not None
    assert value(m, "powerplane_store_written_points_total") is not None
    assert value(m, "powerplane_mqtt_connected") == 1

    run_script("epilog.sh", env)
    wait(lambda: all(r["id"] != "4242" for r in doc().get("jobs", [])), 60, "job 4242 gone", procs.logs)
    m = scrape(base)
    assert value(m, "powerplane_jobs_live", source="slurm") == 0
    assert value(m, "powerplane_jobs_ended_total", source="slurm") == 1
    assert value(m, "powerplane_job_gpus", job="4242", source="slurm", priority="2") is None
    codes = procs.stop()
    assert codes == [0], procs.logs()


def test_agent_and_collector_serve_metrics_and_probes(mosquitto: Mosquitto, procs: Procs, tmp_path: Path) -> None:
    site = load_site(DEMO_SITE)
    eps = tmp_path / "endpoints.json"
    agent_base = f"http://127.0.0.1:{free_port()}"
    collect_base = f"http://127.0.0.1:{free_port()}"

    async def go() -> None:
        twin = Twin(site, SystemClock(), mqtt=("127.0.0.1", mosquitto.port))
        await twin.start()
        twin.run_in_background()
        twin.write_endpoints(eps)
        try:
            procs.start("agent", "agent", "--site", str(DEMO_SITE), "--mqtt", mosquitto.url, "--backend", "sim",
                        "--rack", "r01", "--rack", "r02", "--metrics", agent_base.removeprefix("http://"))
            procs.start("collect", "collect", "--endpoints", str(eps), "--site", str(DEMO_SITE), "--protocols",
                        "modbus,snmp", "--interval", "1", "--publish", mosquitto.url, "--src", "collect-0",
                        "--metrics", collect_base.removeprefix("http://"))
            for base in (agent_base, collect_base):
                await asyncio.to_thread(wait, lambda b=base: get(f"{b}/readyz")[0] == 200, 90, f"{base} ready",
                                        procs.logs)
                assert get(f"{base}/healthz")[0] == 200
            a = await asyncio.to_thread(scrape, agent_base)
            assert value(a, "powerplane_agent_nodes", mode="starting") == 288  # no controller: the safe cap
            assert value(a, "powerplane_agent_unit_mode", unit="r01", mode="starting") == 1
            assert value(a, "powerplane_agent_enforced_watts", unit="r01") == 576 * 300.0
            assert (value(a, "powerplane_agent_apply_seconds_count") or 0) >= 2  # each unit's safe cap
            assert value(a, "powerplane_agent_commands_applied_total") == 0
            def published() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                s = scrape(collect_base)
                return s if value(s, "powerplane_collector_published_readings_total") else None

            c = await asyncio.to_thread(wait, published, 60, "readings published", procs.logs)
            ups = [k for k in c if k[0] == "powerplane_collector_device_up"]
            assert ups and sum(c[k] for k in ups) >= 1
            assert any(k[0] == "powerplane_collector_poll_seconds" for k in c)
            assert any(k[0] == "powerplane_collector_polls_total" for k in c)
            assert get(f"{collect_base}/nothing")[0] == 404
        finally:
            await asyncio.to_thread(procs.stop)
            await twin.stop()

    asyncio.run(go())


def test_a_taken_default_port_is_not_fatal_but_an_explicit_one_is(procs: Procs, tmp_path: Path,
                                                                   mosquitto: Mosquitto) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "powerplane", "controller", "--site", str(DEMO_SITE), "--mqtt",
                            mosquitto.url, "--state-dir", str(tmp_path / "s"), "--data-dir", str(tmp_path / "d"),
                            "--metrics", f"127.0.0.1:{port}", "--duration", "1"], capture_output=True, text=True,
                           timeout=120, cwd=ROOT, env=dict(os.environ, POWERPLANE_SITE_KEY=KEY.hex()))
    assert r.returncode == 2 and "--metrics" in r.stderr and "cannot serve" in r.stderr


def test_the_demo_starts_and_ends_its_scenario_jobs_through_the_spool(tmp_path: Path) -> None:
    """[[twin.jobs]]: at start_s the prolog's document is in the spool (the controller's table takes it with
    the rules' priority), at end_s it is gone; the twin draws the job's load only in between."""
    import numpy as np

    from controllers.jobs.feed import JobFeed
    from controllers.jobs.slurm import SpoolReader
    from models.clock import ManualClock
    from models.topology import build_topology
    from models.twin.sim import TwinSim
    from powerplane.demo import SchedulerDrill

    site = load_site(DEMO_SITE)
    topo = build_topology(site)
    first, tj = site.twin.jobs  # 4241 holds the nodes until 4242 arrives during the DR event
    assert first.end_s == tj.start_s
    drill = SchedulerDrill(site, topo, tmp_path / "spool")
    feed = JobFeed(site, topo, ManualClock(), [SpoolReader(tmp_path / "spool").scan])
    assert "Slurm starts job 4241" in drill.advance(0.0, None)[0]
    a = feed.poll()
    assert a is not None and [(j.id, j.terms.priority) for j in a.jobs] == [("4241", 8)]  # no rule: the default
    assert drill.advance(tj.start_s - 1, None) == [] and feed.poll() is None
    notes = drill.advance(tj.start_s, None)
    assert any("during demand response dr-evening-1" in n for n in notes) and any("4241 (epilog)" in n for n in notes)
    a = feed.poll()
    assert a is not None and [(j.id, j.terms.priority, j.servers.size) for j in a.jobs] == [("4242", 2, 72)]
    row = {"id": "4242", "priority": 2, "cap_per_gpu_w": 300.0, "gpus": 288, "cut_w": 1000.0}
    assert "the controller plans job 4242" in drill.advance(tj.start_s + 3, {"jobs": [row]})[0]
    assert tj.end_s is not None
    assert "epilog" in drill.advance(tj.end_s, {"jobs": [row]})[0]
    b = feed.poll()
    assert b is not None and b.jobs == ()
    drill.advance(tj.end_s + 3, {"jobs": []})
    res = drill.result()[1]
    assert res["in_plan_s"] == tj.start_s + 3 and res["gone_s"] == tj.end_s + 3 and drill.failures() == []
    # the twin: the job's GPUs idle before, draw during, idle after
    sim = TwinSim(site, topo, seed=1)
    gpus = np.arange(5 * 576 + 288, 6 * 576)
    sim.advance_to(sim.start_ns + int((tj.start_s - 5) * 1e9))
    before = sim.gpu_demand_w[gpus].mean()  # 4241's load
    sim.advance_to(sim.start_ns + int((tj.start_s + 5) * 1e9))
    during = sim.gpu_demand_w[gpus].mean()
    sim.advance_to(sim.start_ns + int((tj.end_s + 5) * 1e9))
    after = sim.gpu_demand_w[gpus].mean()
    assert before > 200 and during > 200 and after < 200
