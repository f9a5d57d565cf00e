"""``powerplane demo``: the whole control plane against the digital twin, one process per job.

Processes (all on loopback, sharing one scaled clock):

    broker      mosquitto on a free port (or --mqtt)
    twin        `powerplane twin`: physics + Modbus/SNMP/MQTT device servers; ground truth
    collect     `powerplane collect --publish`: polls the Modbus and SNMP devices, publishes batches
    controller  `powerplane controller --readings`: the control loop; grid/BMS MQTT devices; store; hooks
    agents      `powerplane agent --backend sim --rack ...` x N: caps the twin's GPUs, lease fallback
    this one    live view (from the twin's and the controller's state topics), webhook receiver,
                the outage drill (SIGKILL of the controller), the summary

With ``--controllers 2`` a private etcd holds the controllers' authority and two controllers
run (one commands, one is a warm standby); the drill then kills the one holding authority and
the summary shows the takeover: no agent may fall back.

The summary is built from what each process recorded — the twin's truth (every limit, at
every simulation step), the controller's run(s), the collector's device health, the agents'
mode transitions and the webhook receiver — and, with ``--summary-json``, written as data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bus.mqtt import Inbox, MqttLink
from controllers.actuation.messages import KEY_ENV, SiteKey
from controllers.hooks.receiver import WebhookReceiver
from dashboards.view import LoopRow, PowerRow, ViewState, bar, render, render_line
from models.clock import NS_PER_S, ScaledClock
from models.files import read_json, write_json
from models.histogram import Histogram
from models.site import SiteConfig, load_site
from models.topology import L_NODE, L_RACK, build_topology
from models.twin.truth import series_path
from powerplane import truthcheck
from powerplane.broker import Broker, start_broker
from powerplane.fleet import OutageDrill, Proc, TakeoverDrill
from powerplane.paths import DEMO_SITE
from store.config import StoreConfig
from twin.runner import view_topic

VIEW_PERIOD_WALL_S = 0.25
HA_TTL_S = 1  # the controllers' authority lease (wall s) with --controllers 2: the private etcd allows 1 s
START_TIMEOUT_WALL_S = 90.0
RSS_EVERY_WALL_S = 10.0
MIN_PLAN_SHARE = 0.98  # below this share of periods planned, the controller did not keep up


@dataclass
class DemoOptions:
    """What the operator asked for on the command line."""

    site: Path = DEMO_SITE
    duration_s: float = 780.0
    speed: float = 10.0
    seed: int | None = None
    mqtt_url: str | None = None
    mqtt_password_file: str | None = None
    live: bool | None = None  # None: live view only when stdout is a terminal
    control: bool = True  # False: run the twin uncapped, to see what the controller prevents
    collect_interval_s: float = 2.0  # site seconds between polls of every device
    store: StoreConfig = field(default_factory=StoreConfig)
    agent_procs: int = 2  # agent processes (caps reach the GPUs only through them)
    controllers: int = 1  # 2+: etcd authority, one commands, the others are warm standbys
    outage: tuple[float, float] | None = (730.0, 20.0)  # controller killed at (t, for s), None: no drill
    summary_json: Path | None = None


class Plane:
    """The demo's child processes and where each keeps its records."""

    def __init__(self, opts: DemoOptions, site: SiteConfig, broker: Broker, clock: ScaledClock, run_dir: Path,
                 key: SiteKey, hook_url: str | None, hook_secret_file: Path | None) -> None:
        self.opts, self.site, self.broker, self.clock, self.dir = opts, site, broker, clock, run_dir
        self.env = dict(os.environ, **{KEY_ENV: key.hex()}, PYTHONUNBUFFERED="1")
        if broker.addr.password:
            self.env["POWERPLANE_MQTT_PASSWORD"] = broker.addr.password
        self.url = broker.url
        self.anchor = clock.anchor()
        self.eps = run_dir / "endpoints.json"
        self.truth = run_dir / "truth.json"
        self.spool = run_dir / "slurm-spool"  # the Slurm prolog/epilog spool the controller reads
        self.hook_url, self.hook_secret_file = hook_url, hook_secret_file
        self.controllers: list[Proc] = []
        self.agents: list[Proc] = []
        self.twin: Proc | None = None
        self.collect: Proc | None = None
        self.killed: list[Proc] = []  # by the drill
        self.t_wall0 = time.monotonic()
        self.authority: str | None = None  # etcd://... with several controllers
        self.site_file = opts.site  # what controllers and agents read (with several controllers, a copy)

    def _common(self) -> list[str]:
        return ["--mqtt", self.url, "--clock", self.anchor]

    async def start_twin(self) -> None:
        args = ["twin", "--site", str(self.opts.site), *self._common(), "--endpoints-out", str(self.eps),
                "--truth-out", str(self.truth)]
        if self.opts.seed is not None:
            args += ["--seed", str(self.opts.seed)]
        if self.opts.control:
            args.append("--start-capped")  # the agents start at their safe cap
        self.twin = Proc("twin", args, self.dir / "twin.log", self.env)
        await self.twin.start()

    async def start_collect(self) -> None:
        self.collect = Proc("collect", [
            "collect", "--endpoints", str(self.eps), "--site", str(self.opts.site), "--protocols", "modbus,snmp",
            "--interval", str(self.opts.collect_interval_s), "--publish", self.url, "--src", "collect-0",
            "--clock", self.anchor, "--summary-out", str(self.dir / "collect.json"), "--metrics", "127.0.0.1:0"],
            self.dir / "collect.log",
            self.env)
        await self.collect.start()

    async def start_controller(self, name: str | None = None) -> Proc:
        k = len(self.controllers) + 1
        name = name or f"controller-{k}"
        cfg = self.opts.store
        state = "controller-state" if self.authority is None else f"{name}-state"
        args = ["controller", "--site", str(self.site_file), *self._common(), "--endpoints", str(self.eps),
                "--protocols", "mqtt", "--readings", "--state-dir", str(self.dir / state),
                "--summary-out", str(self.dir / f"controller-{k}.json"), "--data-dir", str(cfg.data_dir),
                "--metrics", "127.0.0.1:0"]
        if self.authority is not None:
            args += ["--authority", self.authority, "--authority-ttl", str(HA_TTL_S), "--controller-id", name]
        if self.opts.control:
            args += ["--jobs-spool", str(self.spool)]
        if cfg.influx_url:
            args += ["--influx-url", cfg.influx_url, "--influx-org", cfg.influx_org, "--influx-bucket",
                     cfg.influx_bucket, "--influx-api", cfg.influx_api]
        if not self.opts.control:
            args.append("--no-control")
        elif self.hook_url and self.hook_secret_file:
            args += ["--webhook", self.hook_url, "--webhook-secret-file", str(self.hook_secret_file)]
        env = dict(self.env)
        if cfg.influx_token:
            env["POWERPLANE_INFLUX_TOKEN"] = cfg.influx_token  # never argv
        p = Proc(name, args, self.dir / f"controller-{k}.log", env)
        await p.start()
        self.controllers.append(p)
        return p

    async def start_agents(self, racks: list[str]) -> None:
        n = max(1, min(self.opts.agent_procs, len(racks)))
        for i in range(n):
            args = ["agent", "--site", str(self.site_file), "--backend", "sim", *self._common(),
                    "--summary-out", str(self.dir / f"agent-{i}.json")]
            for r in racks[i::n]:
                args += ["--rack", r]
            p = Proc(f"agent-{i}", args, self.dir / f"agent-{i}.log", self.env)
            await p.start()
            self.agents.append(p)

    def agents_listening(self) -> bool:
        """Whether every agent has opened its GPUs and subscribed (its banner comes just before)."""
        def banner(a: Proc) -> bool:
            try:
                return "powerplane agent ·" in a.log.read_text(errors="replace")
            except OSError:
                return False
        return all(banner(a) for a in self.agents)

    def sample_rss(self, t_site_s: float) -> None:
        """Every child's resident memory now, appended to ``run/rss.jsonl``."""
        row: dict[str, Any] = {"wall_s": round(time.monotonic() - self.t_wall0, 1), "site_s": round(t_site_s, 1)}
        for p in (self.twin, self.collect, *self.agents, self.controller):
            if p is not None and p.alive and p.pid is not None:
                mb = rss_mb(p.pid)
                if mb is not None:
                    row[p.name.split("-")[0] if p.name.startswith("controller") else p.name] = mb
        with open(self.dir / "rss.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    @property
    def controller(self) -> Proc | None:
        return self.controllers[-1] if self.controllers else None

    def dead(self) -> list[Proc]:
        """Children that ended on their own (the drill's killed controller is not one of them)."""
        procs = [p for p in (self.twin, self.collect, *self.agents, *self.controllers)
                 if p is not None and p not in self.killed]
        return [p for p in procs if p.proc is not None and p.proc.returncode is not None]

    async def stop(self) -> dict[str, int | None]:
        """Collector and agents first (the GPUs keep their caps), then the controllers, and the twin
        last (its truth covers everything)."""
        codes: dict[str, int | None] = {}
        live = [c for c in self.controllers if c not in self.killed]
        for p in [self.collect, *self.agents, *live, self.twin]:
            if p is not None:
                codes[p.name] = await p.stop()
        return codes


class Watcher:
    """The live state of the twin and the controller, from their MQTT state topics."""

    def __init__(self, broker: Broker, site: SiteConfig) -> None:
        self.link = MqttLink(broker.addr, f"powerplane-demo-view-{os.getpid()}", clean_session=True)
        self.twin_box = self.link.subscribe(view_topic(site.site.name), qos=0, inbox=Inbox(16, 1 << 20))
        prefix = site.actuation.topic_prefix
        self.ctl_box = self.link.subscribe(f"{prefix}/{site.site.name}/controller/state", qos=0,
                                           inbox=Inbox(16, 4 << 20))
        self.twin: dict[str, Any] | None = None
        self.controller: dict[str, Any] | None = None
        self.controller_wall = 0.0

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self.link.stop()

    def poll(self) -> None:
        for _t, payload in self.twin_box.drain()[-1:]:
            with contextlib.suppress(ValueError):
                self.twin = json.loads(payload)
        for _t, payload in self.ctl_box.drain()[-1:]:
            try:
                self.controller = json.loads(payload)
                self.controller_wall = time.monotonic()
            except ValueError:
                pass


class SchedulerDrill:
    """The scenario's ``[[twin.jobs]]`` as Slurm would run them: at ``start_s`` the prolog's document goes
    into the spool the controller reads (atomically, as ``deploy/slurm/prolog.sh`` writes it), at ``end_s``
    it is removed (the epilog); the twin draws the job's load in between. Records when the controller's
    state first shows the job in a plan, its caps, and that it is gone after its end."""

    def __init__(self, site: SiteConfig, topo: Any, spool: Path | None) -> None:
        import hostlist

        self.site, self.spool = site, spool
        tmpl = site.actuation.hostname_template
        racks = {r: i for i, r in enumerate(topo.ids(L_RACK))}
        self.jobs: list[dict[str, Any]] = []
        for tj in site.twin.jobs:
            names = []
            for spec in tj.placement:
                rack, _, rng = spec.partition(":")
                n = int(topo.rack_nodes[racks[rack]])
                lo, hi = (int(x) for x in rng.split("-")) if rng else (0, n - 1)
                names += [tmpl.format(rack=rack, index=i) for i in range(lo, hi + 1)]
            self.jobs.append({"id": tj.id, "start_s": tj.start_s, "end_s": tj.end_s, "nodes":
                              hostlist.collect_hostlist(names), "spec": tj, "started": False, "ended": False,
                              "in_plan_s": None, "priority": None, "cap_per_gpu_w": None, "cut_w_max": 0.0,
                              "gone_s": None, "during_dr": None})
        self.dr = [(d.id, d.start_s, d.start_s + d.duration_s) for d in site.twin.demand_response]

    def _doc(self, j: dict[str, Any]) -> dict[str, Any]:
        tj = j["spec"]
        doc: dict[str, Any] = {"v": 2, "event": "start", "job": tj.id, "nodes": j["nodes"], "partition": tj.partition,
                               "qos": tj.qos, "account": "", "user": "demo", "ts": int(time.time())}
        if tj.priority is not None:
            doc["priority"] = tj.priority
        if "checkpointable" in tj.model_fields_set:
            doc["checkpointable"] = tj.checkpointable
        return doc

    def advance(self, t_s: float, ctl: dict[str, Any] | None) -> list[str]:
        """Start and end the jobs due at ``t_s``; follow them in the controller's state; lines to print."""
        out: list[str] = []
        if self.spool is None:
            return out
        rows = {r.get("id"): r for r in (ctl or {}).get("jobs", [])}
        for j in self.jobs:
            if not j["started"] and t_s >= j["start_s"]:
                self.spool.mkdir(parents=True, exist_ok=True)
                tmp = self.spool / f".{j['id']}.json.tmp"
                tmp.write_text(json.dumps(self._doc(j)) + "\n")
                os.replace(tmp, self.spool / f"{j['id']}.json")
                j["started"] = True
                dr = next((d for d, a, b in self.dr if a <= t_s < b), None)
                j["during_dr"] = dr
                out.append(f"t={t_s:.0f}s Slurm starts job {j['id']} on {j['nodes']} (prolog spool)"
                           + (f", during demand response {dr}" if dr else ""))
            row = rows.get(j["id"])
            if j["started"] and not j["ended"] and row is not None and row.get("cap_per_gpu_w") is not None:
                if j["in_plan_s"] is None:
                    j["in_plan_s"] = t_s
                    j["priority"] = row.get("priority")
                    out.append(f"t={t_s:.0f}s the controller plans job {j['id']}: priority {row.get('priority')}, "
                               f"cap {row['cap_per_gpu_w']:.0f} W per GPU on {row.get('gpus')} GPUs")
                j["cap_per_gpu_w"] = row["cap_per_gpu_w"]
                j["cut_w_max"] = max(j["cut_w_max"], float(row.get("cut_w") or 0.0))
            if j["started"] and not j["ended"] and j["end_s"] is not None and t_s >= j["end_s"]:
                (self.spool / f"{j['id']}.json").unlink(missing_ok=True)
                j["ended"] = True
                out.append(f"t={t_s:.0f}s Slurm ends job {j['id']} (epilog): its power goes back to the pool")
            if j["ended"] and j["gone_s"] is None and ctl is not None and j["id"] not in rows:
                j["gone_s"] = t_s
        return out

    def result(self) -> list[dict[str, Any]]:
        """What happened to each scenario job (JSON-able)."""
        return [{k: v for k, v in j.items() if k != "spec"} for j in self.jobs]

    def failures(self) -> list[str]:
        """Jobs that started but never reached a plan (the controller should have planned them)."""
        return [f"scheduler job {j['id']} started at t={j['start_s']:.0f} s but never reached a plan"
                for j in self.jobs if j["started"] and j["in_plan_s"] is None and not j["ended"]
                and self.spool is not None]


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (Linux /proc), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError):
        return None
    return None


def memory_growth(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per process: RSS after warm-up (10 minutes of wall time, or a sixth of a shorter run), at the
    end and at most, and the growth from warm-up to the end (a daemon must not grow)."""
    out: dict[str, dict[str, float]] = {}
    if not rows:
        return out
    span = rows[-1]["wall_s"]
    warm = min(600.0, span / 6.0)
    names = sorted({k for r in rows for k in r if k not in ("wall_s", "site_s")})
    for n in names:
        series = [(r["wall_s"], r[n]) for r in rows if n in r]
        if not series:
            continue
        after = [v for t, v in series if t >= warm] or [series[-1][1]]
        start, end = after[0], after[-1]
        out[n] = {"warm_at_s": warm, "warm_mb": start, "end_mb": end, "max_mb": max(v for _, v in series),
                  "growth_pct": round(100.0 * (end - start) / start, 2) if start else 0.0}
    return out


def view_state(doc: dict[str, Any], opts: DemoOptions, notes: list[str]) -> ViewState:
    """The live view of the twin's published state."""
    def rows(key: str) -> list[PowerRow]:
        return [PowerRow(str(i), float(p), float(lim)) for i, p, lim in doc.get(key, [])]

    loops = [LoopRow(str(x[0]), float(x[1]), float(x[2]), float(x[3]), float(x[4]), float(x[5]), float(x[6]),
                     int(x[7]), int(x[8])) for x in doc.get("loops", [])]
    return ViewState(
        site=str(doc["site"]), source="twin (own process)", t_s=float(doc["t_s"]), duration_s=opts.duration_s,
        speed=opts.speed, facility_w=float(doc["facility_w"]), it_w=float(doc["it_w"]), limit_w=float(doc["limit_w"]),
        dr_target_w=doc.get("dr_target_w"), dr_state=doc.get("dr_state"),
        price_per_mwh=float(doc["price_per_mwh"]), currency=str(doc["currency"]),
        carbon_g_per_kwh=float(doc["carbon_g_per_kwh"]), frequency_hz=float(doc["frequency_hz"]),
        energy_mwh=float(doc["energy_mwh"]), halls=rows("halls"), rows=rows("rows"), racks=rows("racks"),
        loops=loops, notes=notes)


def scenario_notes(site: SiteConfig, t_s: float) -> list[str]:
    """Scenario events that have started by ``t_s``, for the events panel."""
    notes = []
    for d in site.twin.demand_response:
        if t_s >= d.start_s - d.notice_s:
            notes.append(f"t={d.start_s - d.notice_s:>5.0f}s  DR {d.id} announced: {d.target_kw:,.0f} kW "
                         f"from t={d.start_s:.0f}s for {d.duration_s:.0f}s")
    for p in site.twin.pump_failures:
        if t_s >= p.start_s:
            notes.append(f"t={p.start_s:>5.0f}s  {p.pumps_failed} pump(s) of {p.loop} failed for {p.duration_s:.0f}s")
    for e in site.twin.supply_excursions:
        if t_s >= e.start_s:
            notes.append(f"t={e.start_s:>5.0f}s  {e.loop} supply +{e.delta_c:.0f} °C for {e.duration_s:.0f}s")
    return notes


def controller_panels(ctl: dict[str, Any] | None) -> list[RenderableType]:
    """Panels from the controller's state: caps and headroom, the loop's health."""
    if not ctl:
        return [Panel(Text("waiting for the controller ..."), title="controller", border_style="yellow")]
    out: list[RenderableType] = []
    plan = ctl.get("plan")
    if plan:
        tab = Table(expand=True, box=None, padding=(0, 1))
        for col in ("rack", "demand", "cap", "limit", "headroom", "load"):
            tab.add_column(col, justify="left" if col in ("rack", "load") else "right")
        for r in plan["racks"]:
            tab.add_row(r["id"], f"{r['demand_w'] / 1e3:,.0f} kW", f"{r['cap_w'] / 1e3:,.0f} kW",
                        f"{r['limit_w'] / 1e3:,.0f} kW", f"{r['headroom_w'] / 1e3:,.0f} kW",
                        bar(r["load_w"], r["limit_w"]))
        for lp in plan["loops"]:
            tab.add_row(f"loop {lp['id']}", "", "", f"{lp['capacity_w'] / 1e3:,.0f} kW",
                        f"{(lp['capacity_w'] - lp['load_w']) / 1e3:,.0f} kW", bar(lp["load_w"], lp["capacity_w"]))
        binding = ", ".join(f"{k} ({n} GPUs)" for k, n in list(plan["binding"].items())[:3]) or "none"
        title = (f"caps · plan {plan['plan_id']} · budget {plan['budget_w'] / 1e6:,.2f} MW ({plan['budget_reason']}) · "
                 f"{plan['gpus_capped']:,} GPUs capped · binding: {binding}")
        out.append(Panel(tab, title=Text(title), border_style="green"))
    st = ctl.get("stage_ms", {})
    act = ctl.get("actuation", {})
    line = (f"periods {ctl['periods']:,} · plans {ctl['plans']:,} · missed {ctl['missed_periods']} · errors "
            f"{ctl['errors']} · late p99 {ctl.get('late_ms') or 0:.0f} ms · stages "
            + " ".join(f"{k} {v:.1f}" for k, v in st.items()) + " ms"
            + (f" · nodes {ctl.get('modes')} · settle p95 {act.get('settle_p95_s', float('nan')):.1f} s"
               if act else ""))
    out.append(Panel(Text(line), title="control loop (own process)", border_style="blue"))
    return out


def merge_controllers(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The controller runs of the demo (before and after the drill) as one record."""
    late = Histogram(1.0, 60_000.0)
    settle = Histogram()
    out: dict[str, Any] = {"runs": len(docs), "periods": 0, "plans": 0, "missed_periods": 0, "control_errors": 0,
                           "plans_with_violations": 0, "violations": [], "infeasible_plans": 0,
                           "periods_at_risk": 0, "worst_solve_ms": 0.0, "last_error": "", "commands": 0,
                           "statuses": 0, "noncompliant_episodes": 0, "lease_fallbacks": 0, "bad_statuses": 0,
                           "written_points": 0, "written_events": 0, "overwritten_points": 0, "dropped_points": 0,
                           "dr_stranded_max_w": 0.0, "compile_s": 0.0, "stage_worst_ms": Counter(),
                           "hooks_dead_lettered": 0, "batches_rejected": Counter(), "readings_rejected": Counter(),
                           "devices": []}
    for d in docs:
        for k in ("periods", "plans", "missed_periods", "control_errors", "plans_with_violations",
                  "infeasible_plans", "periods_at_risk"):
            out[k] += int(d.get(k, 0))
        out["violations"] += d.get("violations", [])
        out["worst_solve_ms"] = max(out["worst_solve_ms"], float(d.get("worst_solve_ms", 0.0)))
        out["compile_s"] = max(out["compile_s"], float(d.get("compile_s", 0.0)))
        out["dr_stranded_max_w"] = max(out["dr_stranded_max_w"], float(d.get("dr_stranded_max_w") or 0.0))
        out["last_error"] = d.get("last_error") or out["last_error"]
        for k, v in d.get("stage_worst_ms", {}).items():
            out["stage_worst_ms"][k] = max(out["stage_worst_ms"][k], float(v))
        out["batches_rejected"].update(d.get("batches_rejected", {}))
        out["readings_rejected"].update(d.get("readings_rejected", {}))
        if d.get("late_ms"):
            late.merge(Histogram.from_json(d["late_ms"]))
        a = d.get("actuation") or {}
        if a.get("settle"):
            settle.merge(Histogram.from_json(a["settle"]))
        for k in ("commands", "statuses", "noncompliant_episodes", "lease_fallbacks", "bad_statuses"):
            out[k] += int(a.get(k, 0))
        s = d.get("store", {})
        for k in ("written_points", "written_events", "overwritten_points", "dropped_points"):
            out[k] += int(s.get(k) or 0)
        for sink in (d.get("hooks") or {}).get("sinks", {}).values():
            out["hooks_dead_lettered"] += int(sink.get("dead_lettered", 0))
        out["devices"] = d.get("devices", out["devices"])
    out["late_p99_ms"] = late.percentile(99)
    out["settle_p50_s"], out["settle_p95_s"], out["settle_max_s"] = (settle.percentile(50), settle.percentile(95),
                                                                    settle.max)
    out["settled"] = settle.n
    return out


def stored_points(cfg: StoreConfig) -> int | None:
    """Readings the embedded store holds (None for a server store)."""
    if cfg.influx_url:
        return None
    import sqlite3

    from store.embedded import DB_NAME

    db = Path(cfg.data_dir) / DB_NAME
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM readings").fetchone()[0])
    finally:
        con.close()


def build_summary(opts: DemoOptions, site: SiteConfig, plane: Plane, drill: OutageDrill | TakeoverDrill | None,
                  receiver: WebhookReceiver | None, codes: dict[str, int | None], started_t_s: float | None
                  ) -> dict[str, Any]:
    """Everything the run showed, as data, and the exit status with its reasons."""
    truth = read_json(plane.truth) or {}
    ctl_docs = [d for d in (read_json(plane.dir / f"controller-{k + 1}.json") for k in range(len(plane.controllers)))
                if d]
    ctl = merge_controllers(ctl_docs)
    collect = read_json(plane.dir / "collect.json") or {"devices": [], "readings": 0}
    agents = [d for d in (read_json(plane.dir / f"agent-{i}.json") for i in range(len(plane.agents))) if d]
    devices = collect["devices"] + ctl["devices"]
    up = [d for d in devices if d.get("up") and d.get("readings", 0) > 0]
    readings = sum(int(d.get("readings", 0)) for d in devices)
    stored = stored_points(opts.store)
    reasons: list[str] = []
    if ctl["plans_with_violations"]:
        reasons.append(f"{ctl['plans_with_violations']} plans granted over a limit")
    if truth.get("limits_exceeded"):
        x = truth["limits_exceeded"][0]
        reasons.append(f"the twin exceeded {len(truth['limits_exceeded'])} limit(s), e.g. {x['limit']} for "
                       f"{x['seconds']:.1f} s")
    if not truth.get("final"):
        reasons.append("the twin's truth is incomplete (the twin did not stop cleanly)")
    if ctl["control_errors"]:
        reasons.append(f"{ctl['control_errors']} control periods failed: {ctl['last_error']}")
    if opts.control:
        share = ctl["plans"] / ctl["periods"] if ctl["periods"] else 0.0
        if share < MIN_PLAN_SHARE:
            slow = max(ctl["stage_worst_ms"].items(), key=lambda kv: kv[1], default=("?", 0.0))
            reasons.append(f"the controller could not keep up: {ctl['plans']} plans in {ctl['periods']} periods "
                           f"({share:.0%}); late p99 {ctl['late_p99_ms']:.0f} ms; slowest stage {slow[0]} "
                           f"({slow[1]:.0f} ms at worst)")
    if len(up) < len(devices):
        down = [d["device"] for d in devices if d not in up]
        reasons.append(f"{len(devices) - len(up)} device(s) gave no data: {', '.join(down[:5])}")
    if drill is not None and drill.result is not None and not drill.result.ok:
        kind = "takeover drill" if isinstance(drill, TakeoverDrill) else "outage drill"
        reasons.append(f"{kind}: " + drill.result.describe())
    for name, code in codes.items():
        if code not in (0, None, -15):
            reasons.append(f"{name} exited with status {code}")
    check = report_check(opts, plane)
    if check is not None and not check["ok"]:
        reasons.append("the report disagrees with the twin: " + truthcheck.describe(check))
    dr = truth.get("dr", {})
    rss_rows = []
    with contextlib.suppress(OSError, ValueError):
        rss_rows = [json.loads(line) for line in (plane.dir / "rss.jsonl").read_text().splitlines() if line]
    return {
        "exit_status": 1 if reasons else 0, "reasons": reasons,
        "duration_s": opts.duration_s, "speed": opts.speed, "control": opts.control,
        "plane_up_at_s": started_t_s,
        "plans": ctl["plans"], "periods": ctl["periods"], "missed_periods": ctl["missed_periods"],
        "late_p99_ms": ctl["late_p99_ms"], "control_errors": ctl["control_errors"],
        "worst_solve_ms": ctl["worst_solve_ms"], "stage_worst_ms": dict(ctl["stage_worst_ms"]),
        "settle_p50_s": ctl["settle_p50_s"], "settle_p95_s": ctl["settle_p95_s"], "settle_max_s": ctl["settle_max_s"],
        "settled": ctl["settled"], "commands": ctl["commands"], "statuses": ctl["statuses"],
        "noncompliant_episodes": ctl["noncompliant_episodes"], "lease_fallbacks": ctl["lease_fallbacks"],
        "drill": drill.result.to_json() if isinstance(drill, OutageDrill) and drill.result is not None else None,
        "controllers": opts.controllers,
        "takeover": (drill.result.to_json() if isinstance(drill, TakeoverDrill) and drill.result is not None
                     else None),
        "limits_exceeded": truth.get("limits_exceeded", []),
        "devices_up": len(up), "devices_total": len(devices),
        "devices_down": [d["device"] for d in devices if d not in up],
        "readings_collected": readings, "readings_rejected": dict(ctl["readings_rejected"]),
        "points_stored": stored if stored is not None else ctl["written_points"],
        "points_claimed": ctl["written_points"], "points_overwritten": ctl["overwritten_points"],
        "events_stored": ctl["written_events"], "dropped": ctl["dropped_points"],
        "facility_energy_kwh": truth.get("facility_energy_kwh"), "it_energy_kwh": truth.get("it_energy_kwh"),
        "pue": truth.get("pue"), "peak_facility_kw": truth.get("peak_facility_kw"),
        "peak_it_kw": truth.get("peak_it_kw"), "max_return_c": truth.get("max_return_c", {}),
        "dr": dr, "plans_with_violations": ctl["plans_with_violations"], "infeasible_plans": ctl["infeasible_plans"],
        "periods_at_risk": ctl["periods_at_risk"], "compile_s": ctl["compile_s"],
        "agents": {"nodes": sum(a.get("nodes", 0) for a in agents), "processes": len(agents),
                   "modes": dict(sum((Counter(a.get("modes", {})) for a in agents), Counter())),
                   "rejected": dict(sum((Counter(a.get("rejected", {})) for a in agents), Counter()))},
        "hooks": hook_summary(receiver, ctl["hooks_dead_lettered"]) if receiver is not None else None,
        "memory": memory_growth(rss_rows),
        "report_check": check,
    }


def report_check(opts: DemoOptions, plane: Plane) -> dict[str, Any] | None:
    """``powerplane report`` on the embedded store, against the twin's truth (``powerplane.truthcheck``);
    None with a server store (the demo does not query it)."""
    series = series_path(plane.truth)
    if opts.store.influx_url or not series.exists():
        return None
    try:
        return truthcheck.check_run(Path(opts.store.data_dir), series)
    except Exception as exc:  # a report that cannot be made is a failed check, with its reason
        return {"ok": False, "checks": {}, "missing": list(truthcheck.TOLERANCE),
                "error": f"{type(exc).__name__}: {exc}"}


def hook_summary(receiver: WebhookReceiver, dead: int) -> dict[str, Any]:
    """What the webhook receiver got and verified."""
    kinds = Counter(str(p.get("kind")) for p in receiver.received)
    moves = sorted({f"{(p.get('detail') or {}).get('action', '?')} {p.get('entity')}" for p in receiver.received
                    if p.get("kind") == "move_recommendation"})
    return {"verified": len(receiver.received), "kinds": dict(kinds), "moves": moves,
            "rejected": sum(receiver.rejected.values()), "dead_lettered": dead}


def summary_table(s: dict[str, Any], site: SiteConfig) -> Table:
    """The end-of-run summary for a terminal."""
    tab = Table(title="powerplane demo summary", show_header=False, expand=False)
    tab.add_column(style="bold")
    tab.add_column()

    def row(k: str, v: str, style: str = "") -> None:
        tab.add_row(k, Text(v, style=style))

    def num(x: Any, fmt: str = ",.1f") -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    row("simulated", f"{s['duration_s']:,.0f} s at x{s['speed']:g}; control plane up at t={num(s['plane_up_at_s'])} s")
    row("energy (twin)", f"facility {num(s['facility_energy_kwh'])} kWh, IT {num(s['it_energy_kwh'])} kWh, "
                         f"PUE {num(s['pue'], '.3f')}")
    if s.get("report_check") is not None:
        row("report vs twin", truthcheck.describe(s["report_check"]), "" if s["report_check"]["ok"] else "bold red")
    row("peak site power", f"{num(s['peak_facility_kw'], ',.0f')} kW (IT {num(s['peak_it_kw'], ',.0f')} kW)")
    for lid, c in s["max_return_c"].items():
        row(f"max return {lid}", f"{c:.1f} °C")
    if not s["limits_exceeded"]:
        row("limits", "no limit exceeded at any twin step from t=0", "green")
    for x in s["limits_exceeded"][:10]:
        row("exceeded", f"{x['limit']}: {x['seconds']:,.1f} s, worst by {x['worst_over_w'] / 1e3:,.1f} kW", "red")
    dr = s["dr"] or {}
    if dr.get("active_s"):
        row("demand response", f"{dr['active_s']:.0f} s active, target {dr['target_kw']:,.0f} kW; over target "
                               f"{dr['over_target_s']:.1f} s; stranded {dr['stranded_mean_kw']:,.0f} kW on average "
                               f"({dr['stranded_mean_share']:.1%} of the target), at most "
                               f"{dr['stranded_max_kw']:,.0f} kW")
    row("collected", f"{s['readings_collected']:,} device readings from {s['devices_up']} of "
                     f"{s['devices_total']} "
                     f"devices with data (Modbus, SNMP, MQTT)"
        + (f"; down: {', '.join(s['devices_down'][:4])}" if s["devices_down"] else ""),
        "" if not s["devices_down"] else "red")
    killed = s.get("drill") is not None or s.get("takeover") is not None
    claim = (f"the controllers recorded {s['points_claimed']:,} written (a killed one's last second is not in "
             "its record)" if killed and s["points_claimed"] != s["points_stored"]
             else f"{s['points_claimed']:,} written")
    row("stored", f"{s['points_stored']:,} points in the store ({claim}, {s['points_overwritten']:,} overwritten), "
                  f"{s['events_stored']:,} events; dropped {s['dropped']:,}")
    if s["control"]:
        share = s["plans"] / s["periods"] if s["periods"] else 0.0
        row("control loop", f"{s['plans']:,} plans in {s['periods']:,} periods ({share:.1%}), {s['missed_periods']} "
                            f"missed, {s['control_errors']} failed; late p99 {num(s['late_p99_ms'], '.0f')} ms; "
                            f"worst solve {s['worst_solve_ms']:.1f} ms; kernels ready in {s['compile_s']:.1f} s")
        ok = s["plans_with_violations"] == 0
        row("cap plans", ("no plan granted over a limit" if ok else f"{s['plans_with_violations']} plans granted over "
                          "a limit") + f"; {s['infeasible_plans']} with an infeasible constraint; "
                          f"{s['periods_at_risk']} periods with a limit at risk from GPUs lagging their caps",
            "green" if ok else "red")
        row("actuation", f"{s['commands']:,} signed rack commands, {s['statuses']:,} rack statuses; settling p50 "
                         f"{num(s['settle_p50_s'])} s, p95 {num(s['settle_p95_s'])} s, max {num(s['settle_max_s'])} s "
                         f"({s['settled']:,} cuts); {s['noncompliant_episodes']} node non-compliance episodes")
        a = s["agents"]
        row("agents", f"{a['nodes']:,} nodes in {a['processes']} processes: "
                      + ", ".join(f"{k} {n:,}" for k, n in sorted(a["modes"].items()))
                      + (f"; rejected {a['rejected']}" if a["rejected"] else ""))
        if s["drill"] is not None:
            d = s["drill"]
            row("outage drill", f"controller killed (SIGKILL) at t={d['at_s']:.0f} s for {d['down_s']:.0f} s: "
                                f"{d['in_time']}/{d['nodes']} nodes fell back within one lease (latest after "
                                f"{num(d['worst_fallback_s'])} s); {d['back']}/{d['nodes']} back under control "
                                f"{num(d['worst_back_s'])} s after the restart", "green" if d["ok"] else "red")
        for j in s.get("scheduler_jobs") or []:
            if not j["started"]:
                continue
            row("scheduler job", f"{j['id']} ({j['nodes']}) started at t={j['start_s']:.0f} s"
                + (f" during {j['during_dr']}" if j["during_dr"] else "")
                + (f"; in the plan at t={j['in_plan_s']:.0f} s, priority {j['priority']}, last cap "
                   f"{num(j['cap_per_gpu_w'], '.0f')} W per GPU, losing up to {j['cut_w_max'] / 1e3:,.1f} kW"
                   if j["in_plan_s"] is not None else "; not in a plan yet")
                + (f"; ended t={j['end_s']:.0f} s" + (f", out of the table at t={j['gone_s']:.0f} s"
                                                     if j["gone_s"] is not None else "") if j["ended"] else ""),
                "green" if j["in_plan_s"] is not None else "yellow")
        if s.get("takeover") is not None:
            d = s["takeover"]
            line = (f"{d['killed']} (the authority, epoch {d['killed_epoch']}) killed (SIGKILL) at "
                    f"t={d['at_s']:.0f} s: {d['successor']} took over as epoch {d['epoch']} "
                    f"{num(d['acquired_after_s'])} s later and "
                    f"planned within {num(d['first_plan_periods'], '.0f')} period(s); {d['fell_back']}/{d['nodes']} "
                    f"nodes fell back; {d['held']} racks held the lower of both epochs' caps while the old lease "
                    f"ran; {d['killed']} " + ("rejoined as a standby" if d["rejoined"] else "did not rejoin")
                    if d["successor"] else f"{d['killed']} killed at t={d['at_s']:.0f} s: no controller took over")
            row("takeover drill", line, "green" if d["ok"] else "red")
        h = s["hooks"]
        if h is not None:
            row("scheduler hooks", f"{h['verified']:,} signed webhooks verified by the receiver ("
                + ", ".join(f"{k} {n}" for k, n in sorted(h["kinds"].items())) + ")"
                + (f"; move recommendations: {', '.join(h['moves'])}" if h["moves"] else "")
                + f"; rejected {h['rejected']}, dead-lettered {h['dead_lettered']}")
    else:
        row("cap plans", "controller off (--no-control): GPUs run uncapped")
    mem = s.get("memory") or {}
    if mem:
        row("memory", ", ".join(f"{n} {m['end_mb']:.0f} MB ({m['growth_pct']:+.1f}% since {m['warm_at_s']:.0f} s)"
                                for n, m in sorted(mem.items())))
    row("exit status", "0" if not s["reasons"] else "1: " + "; ".join(s["reasons"]),
        "green" if not s["reasons"] else "bold red")
    return tab


async def run_demo(opts: DemoOptions, console: Console) -> int:
    """Run the demo; return the process exit status."""
    site = load_site(opts.site)
    topo = build_topology(site)
    start_ns = int(site.twin.start.timestamp() * NS_PER_S) if site.twin.start else None
    broker = await start_broker(opts.mqtt_url, password_file=opts.mqtt_password_file)
    data_dir = Path(opts.store.data_dir)
    run_dir = data_dir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    key = SiteKey.generate()  # per run; the processes get it through their environment
    receiver: WebhookReceiver | None = None
    secret_file: Path | None = None
    if opts.control:
        secret = secrets.token_hex(24)
        secret_file = run_dir / "hook.secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        receiver = WebhookReceiver(secret.encode()).start()
    ha = opts.control and opts.controllers > 1
    drill: OutageDrill | TakeoverDrill | None
    if ha:
        # The standby must take over well inside the agents' lease: no restart to wait for.
        drill = (TakeoverDrill(*opts.outage) if opts.outage and sum(opts.outage) + 10 <= opts.duration_s
                 else None)
    else:
        # The drill needs room after the restart: a lease to fall back, one to come back.
        drill = (OutageDrill(*opts.outage) if opts.outage and opts.control
                 and sum(opts.outage) + 2 * site.actuation.lease_s <= opts.duration_s else None)
    if opts.control:
        # Compile the controller's kernels into numba's cache before the site clock starts: on a
        # fresh clone that takes seconds (tens of them on a busy machine), which at x10 would be
        # minutes of the scenario without control. The controllers then load them from the cache.
        from powerplane.commands.controller import warm_up

        compile_s = warm_up(site, topo)
        if compile_s > 2.0:
            console.print(f"controller kernels compiled in {compile_s:.1f} s (once; cached for the next runs)",
                          highlight=False)
    clock = ScaledClock(opts.speed, start_ns)
    plane = Plane(opts, site, broker, clock, run_dir, key, receiver.url if receiver else None, secret_file)
    scheduler = SchedulerDrill(site, topo, plane.spool if opts.control else None)
    etcd = None
    watcher = Watcher(broker, site)
    live_view = sys.stdout.isatty() if opts.live is None else opts.live
    codes: dict[str, int | None] = {}
    started_t_s: float | None = None
    failure: str | None = None
    try:
        if ha:
            from powerplane.coordinator import start_etcd

            etcd = await start_etcd()
            plane.authority = etcd.url
            plane.site_file = ha_site_file(opts, site, run_dir)
        watcher.start()
        await plane.start_twin()
        if not await _wait(lambda: plane.eps.exists() or not plane.twin or not plane.twin.alive, 30.0) \
                or not plane.eps.exists():
            raise RuntimeError(f"the twin did not start: {plane.twin.tail() if plane.twin else ''}")
        if opts.control:
            # The agents first, as on a real site where they run on every node: at x10 an agent
            # that starts after the controller's first command takes 10+ site seconds to hear
            # it, and every one of its nodes became a non-compliance episode and a 10 s settle.
            await plane.start_agents(topo.ids(L_RACK))
            if not await _wait(plane.agents_listening, START_TIMEOUT_WALL_S, dead=plane.dead):
                raise RuntimeError("the agents did not start: " + "; ".join(a.tail(2) for a in plane.agents))
        # The controllers subscribe before the collector publishes (the first period's state is
        # the sign): no reading is published to nobody.
        for i in range(opts.controllers if ha else 1):
            await plane.start_controller(f"controller-{i + 1}" if ha else None)

        def controller_running() -> bool:
            watcher.poll()
            return watcher.controller is not None

        await _wait(controller_running, START_TIMEOUT_WALL_S, dead=plane.dead)
        await plane.start_collect()
        console.print(f"[bold]powerplane demo[/bold] · site {site.site.name} ({opts.site}) · {topo.n_gpus:,} GPUs "
                      f"in {topo.count(L_RACK)} racks · x{opts.speed:g} · MQTT via {broker.describe()} · "
                      + ("processes: twin, collect, controller" if not ha else
                         f"processes: etcd, twin, collect, {opts.controllers} controllers")
                      + (f", {len(plane.agents)} agents" if opts.control else "")
                      + f" · records in {run_dir}", highlight=False)

        def ready() -> bool:
            c = watcher.controller
            watcher.poll()
            if c is None or not c.get("plans" if opts.control else "periods"):
                return False
            return not opts.control or not c.get("modes", {}).get("unknown")

        if await _wait(ready, START_TIMEOUT_WALL_S, dead=plane.dead):
            started_t_s = (clock.now_ns() - clock.start_ns) / NS_PER_S
            c = watcher.controller or {}
            console.print(f"control plane up at t={started_t_s:.0f} s: {topo.count(L_NODE):,} nodes reporting "
                          f"{c.get('modes')}; lease {site.actuation.lease_s:g} s", highlight=False)
        else:
            dead = plane.dead()
            failure = (f"{dead[0].name} exited: {dead[0].tail()}" if dead else
                       f"the control plane did not come up within {START_TIMEOUT_WALL_S:.0f} s of wall time")
            raise RuntimeError(failure)
        failure = await _run(opts, site, plane, watcher, drill, clock, console, live_view, scheduler)
        if drill is not None and drill.restart_ns >= 0:
            await asyncio.sleep(2 * VIEW_PERIOD_WALL_S)  # the last statuses reach the agents' records
    except RuntimeError as exc:
        failure = str(exc)
    finally:
        codes = await plane.stop()
        watcher.stop()
        if receiver is not None:
            receiver.stop()
        await broker.stop()
        if etcd is not None:
            await etcd.stop()
    if drill is not None and drill.kill_ns >= 0:
        agents = [d for d in (read_json(run_dir / f"agent-{i}.json") for i in range(len(plane.agents))) if d]
        if isinstance(drill, TakeoverDrill):
            docs: dict[str, dict[str, Any]] = {}
            for k in range(len(plane.controllers)):  # in start order: a restarted controller's record wins
                d = read_json(run_dir / f"controller-{k + 1}.json")
                if d and d.get("authority"):
                    docs[str(d["authority"]["holder"])] = d
            drill.evaluate(agents, docs, site.controller.period_s)
        else:
            drill.evaluate(agents, site.actuation.lease_s, opts.speed)
    summary = build_summary(opts, site, plane, drill, receiver, codes, started_t_s)
    summary["scheduler_jobs"] = scheduler.result()
    for why in scheduler.failures():
        summary["reasons"].append(why)
        summary["exit_status"] = 1
    if failure:
        summary["reasons"].insert(0, failure)
        summary["exit_status"] = 1
    console.print(summary_table(summary, site))
    if opts.summary_json is not None:
        write_json(opts.summary_json, summary)
    if not opts.store.influx_url:
        console.print(f"telemetry kept in {opts.store.data_dir}/ — `powerplane report --data-dir "
                      f"{opts.store.data_dir}` summarises it and plots it", highlight=False, markup=False)
    return int(summary["exit_status"])


def ha_site_file(opts: DemoOptions, site: SiteConfig, run_dir: Path) -> Path:
    """The site file with an agents' lease long enough for a takeover at this speed.

    etcd leases are whole seconds of wall time, and the demo runs ``speed`` times faster than the
    wall clock: at x10 the controllers' 1 s authority lease is 10 s of site time, while an agent
    may have only ``lease_s - renew_s`` left of its lease when the authority dies. The lease is
    raised to three takeovers (and renewed six times per lease) so no agent falls back; the
    controllers check the same arithmetic at start."""
    period = site.controller.period_s
    takeover_s = (HA_TTL_S + min(0.25, HA_TTL_S / 8)) * opts.speed + 2 * period
    lease = max(site.actuation.lease_s, math.ceil(3 * takeover_s))
    if lease > 600:
        raise RuntimeError(f"--controllers {opts.controllers} at x{opts.speed:g}: a takeover takes {takeover_s:.0f} s "
                           "of site time, more than an agent's lease can cover (600 s): lower --speed")
    text = opts.site.read_text()
    text = re.sub(r"(?m)^\s*(lease_s|renew_s)\s*=.*$", "", text)
    line = f"lease_s = {lease:g}\nrenew_s = {lease / 6:g}\n"
    text = text.replace("\n[actuation]\n", f"\n[actuation]\n{line}", 1) if "\n[actuation]\n" in text else \
        text + f"\n[actuation]\n{line}"
    out = run_dir / "site-ha.toml"
    out.write_text(text)
    load_site(out)  # still a valid site
    return out


async def _wait(cond: Any, timeout_wall_s: float, dead: Any = None) -> bool:
    end = time.monotonic() + timeout_wall_s
    while time.monotonic() < end:
        if cond():
            return True
        if dead is not None and dead():
            return False
        await asyncio.sleep(0.1)
    return bool(cond())


async def _run(opts: DemoOptions, site: SiteConfig, plane: Plane, watcher: Watcher,
               drill: OutageDrill | TakeoverDrill | None, clock: ScaledClock, console: Console, live_view: bool,
               scheduler: SchedulerDrill) -> str | None:
    """Until the run's duration: the view, the drill, and the processes' health; return a failure."""
    t0 = clock.start_ns
    last_line = -math.inf
    warned = 0.0
    next_rss = 0.0
    live = Live(console=console, refresh_per_second=4, transient=False) if live_view else None
    if live is not None:
        live.start()
    try:
        while True:
            t = (clock.now_ns() - t0) / NS_PER_S
            if t >= opts.duration_s:
                return None
            watcher.poll()
            dead = plane.dead()
            if dead:
                return f"{dead[0].name} exited with status {dead[0].proc.returncode if dead[0].proc else '?'}: " \
                       f"{dead[0].tail(3)}"
            if time.monotonic() >= next_rss:
                next_rss = time.monotonic() + RSS_EVERY_WALL_S
                plane.sample_rss(t)
            note = await _drill(drill, plane, clock, t, t0, watcher)
            if note:
                console.print(note, highlight=False, markup=False)
            for note in scheduler.advance(t, watcher.controller):
                console.print(note, highlight=False, markup=False)
            warned = _behind(watcher, opts, console, warned, drill, site.controller.period_s)
            doc = watcher.twin
            if doc is not None:
                vs = view_state(doc, opts, scenario_notes(site, t))
                if live is not None:
                    live.update(render(replace(vs, extra=controller_panels(watcher.controller))))
                elif t - last_line >= 30.0:
                    line = render_line(vs)
                    c = watcher.controller
                    if c and c.get("plan"):
                        p = c["plan"]
                        line += (f" budget={p['budget_w'] / 1e6:.3f}MW capped={p['gpus_capped']} "
                                 f"plans={c['plans']}/{c['periods']} late_p99={c.get('late_ms') or 0:.0f}ms")
                    console.print(line, highlight=False, markup=False)
                    last_line = t
            await asyncio.sleep(VIEW_PERIOD_WALL_S)
    finally:
        if live is not None:
            live.stop()


def _behind(watcher: Watcher, opts: DemoOptions, console: Console, warned: float,
            drill: OutageDrill | TakeoverDrill | None,
            period_s: float) -> float:
    """Say so at once when the controller falls behind (late periods, missed periods, no state)."""
    c = watcher.controller
    now = time.monotonic()
    if c is None or now - warned < 5.0 or (drill is not None and drill.down):
        return warned
    stale = now - watcher.controller_wall
    periods = max(1, int(c.get("periods", 0)))
    missed = int(c.get("missed_periods", 0))
    late = float(c.get("late_ms") or 0.0)
    period_ms = 1e3 * period_s  # lateness is in site ms, as the period
    if stale > 3.0 or missed / periods > 1 - MIN_PLAN_SHARE or late > period_ms / 2:
        st = c.get("stage_ms", {})
        slow = max(st.items(), key=lambda kv: kv[1], default=("?", 0.0))
        console.print(f"WARNING: the controller is falling behind at x{opts.speed:g}: {missed} of {periods} periods "
                      f"missed, late p99 {late:.0f} ms (a period is {period_ms:.0f} ms of site time), slowest stage "
                      f"{slow[0]} {slow[1]:.0f} ms" + (f"; no state for {stale:.1f} s" if stale > 3.0 else ""),
                      style="bold yellow", highlight=False, markup=False)
        return now
    return warned


async def _drill(drill: OutageDrill | TakeoverDrill | None, plane: Plane, clock: ScaledClock, t: float, t0: int,
                 watcher: Watcher | None = None) -> str:
    """Advance the controller-outage drill; return a line to print when something happened."""
    if drill is None:
        return ""
    if isinstance(drill, TakeoverDrill):
        return await _takeover(drill, plane, clock, t, watcher)
    if drill.kill_ns < 0 and t >= drill.at_s and plane.controller is not None:
        plane.controller.kill()
        plane.killed.append(plane.controller)
        drill.kill_ns = clock.now_ns()
        return f"t={t:.0f}s controller killed (SIGKILL, drill): no plans, no lease renewals for {drill.down_s:.0f} s"
    if drill.down and t >= drill.at_s + drill.down_s:
        await plane.start_controller()
        drill.restart_ns = clock.now_ns()
        return f"t={t:.0f}s controller restarted (drill)"
    return ""


async def _takeover(drill: TakeoverDrill, plane: Plane, clock: ScaledClock, t: float, watcher: Watcher | None) -> str:
    """Kill the controller that holds authority (as its state topic says), restart it later as a standby."""
    if drill.kill_ns < 0 and t >= drill.at_s:
        auth = ((watcher.controller if watcher is not None else None) or {}).get("authority") or {}
        holder = str(auth.get("holder", ""))
        proc = next((c for c in plane.controllers if c.name == holder and c not in plane.killed and c.alive), None)
        if proc is None:
            return ""  # no authority seen yet: try again next time round
        proc.kill()
        plane.killed.append(proc)
        drill.kill_ns = clock.now_ns()
        drill.killed, drill.killed_epoch = holder, int(auth.get("epoch", 0))
        return (f"t={t:.0f}s {holder} (the authority, epoch {drill.killed_epoch}) killed (SIGKILL, drill): the "
                "standby takes over when its lease runs out")
    if drill.kill_ns >= 0 and drill.restart_ns < 0 and t >= drill.at_s + drill.down_s:
        await plane.start_controller(drill.killed)
        drill.restart_ns = clock.now_ns()
        return f"t={t:.0f}s {drill.killed} restarted (drill): it rejoins as a standby"
    return ""
