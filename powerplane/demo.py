"""``powerplane demo``: the whole control plane against the digital twin, with no server to install.

It starts an MQTT broker (see ``powerplane.broker``), the twin with its Modbus, SNMP and
MQTT endpoints on loopback, shows a live view and ends with a summary of energy, peaks and
every limit that was exceeded (site, power tree, cooling).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from collectors.base import DeviceConfig
from collectors.config import devices_from_twin
from controllers.actuation.actuator import Actuator
from controllers.actuation.cli import build_hooks
from controllers.actuation.link import MqttAddress
from controllers.actuation.messages import SiteKey
from controllers.hooks.dispatch import HookDispatcher
from controllers.hooks.receiver import WebhookReceiver
from controllers.moves import MoveAdvisor
from models.clock import NS_PER_S, ScaledClock
from models.site import Hooks, SiteConfig, Webhook, load_site
from models.topology import L_HALL, L_NODE, L_RACK, L_ROW, LEVELS, Topology
from models.twin.feed import TwinFeed
from models.twin.runner import Twin
from models.twin.sim import TwinSim
from powerplane.broker import start_broker
from powerplane.fleet import AgentFleet, OutageDrill
from powerplane.runtime import ControlPlane
from powerplane.store.config import StoreConfig, open_sink
from powerplane.view import LoopRow, PowerRow, ViewState, bar, render, render_line

DEFAULT_SITE = Path(__file__).resolve().parent.parent / "deploy" / "sites" / "demo.toml"
VIEW_PERIOD_WALL_S = 0.25


@dataclass
class DemoOptions:
    """What the operator asked for on the command line."""

    site: Path = DEFAULT_SITE
    duration_s: float = 780.0
    speed: float = 10.0
    seed: int | None = None
    mqtt_url: str | None = None
    live: bool | None = None  # None: live view only when stdout is a terminal
    control: bool = True  # False: run the twin uncapped, to see what the controller prevents
    collect_interval_s: float = 2.0  # site seconds between polls of every device
    store: StoreConfig = field(default_factory=StoreConfig)
    agent_procs: int = 2  # node agent processes (caps reach the GPUs only through them)
    outage: tuple[float, float] | None = (730.0, 20.0)  # controller killed at (t, for s), None: no drill


@dataclass
class Exceedance:
    """How long and how far one limit was exceeded."""

    seconds: float = 0.0
    worst_over_w: float = 0.0


@dataclass
class Summary:
    """Totals and limit exceedances observed over the run (sampled every view tick)."""

    samples: int = 0
    t_s: float = 0.0
    peak_facility_w: float = 0.0
    peak_it_w: float = 0.0
    max_return_c: dict[str, float] = field(default_factory=dict)
    over: dict[str, Exceedance] = field(default_factory=dict)
    energy_start_wh: float = 0.0
    energy_end_wh: float = 0.0
    _last_t: float | None = None

    def _over(self, key: str, dt: float, excess_w: float) -> None:
        if excess_w > 0:
            e = self.over.setdefault(key, Exceedance())
            e.seconds += dt
            e.worst_over_w = max(e.worst_over_w, excess_w)

    def observe(self, sim: TwinSim) -> None:
        """Record the twin's state now."""
        t = sim.topo
        dt = 0.0 if self._last_t is None else sim.t_s - self._last_t
        if self._last_t is None:
            self.energy_start_wh = sim.facility_energy_wh
        self._last_t = sim.t_s
        self.t_s = sim.t_s
        self.samples += 1
        self.energy_end_wh = sim.facility_energy_wh
        self.peak_facility_w = max(self.peak_facility_w, sim.facility_w)
        self.peak_it_w = max(self.peak_it_w, sim.it_w)
        self._over("site: facility limit", dt, sim.facility_w - sim.grid().facility_limit_w())
        excess = sim.node_power_w - t.node_limit_w
        for n in np.flatnonzero(excess > 0):
            self._over(f"{LEVELS[int(t.node_level[n])]} {t.node_id(int(n))}", dt, float(excess[n]))
        for k, lid in enumerate(t.loop_ids):
            self._over(f"loop {lid}: heat over capacity", dt,
                       float(sim.loop_heat_w[k] - sim.loop_capacity_w[k]))
            self.max_return_c[lid] = max(self.max_return_c.get(lid, -math.inf), float(sim.loop_return_c[k]))

    def table(self, topo: Topology) -> Table:
        """The end-of-run summary."""
        tab = Table(title="powerplane demo summary", show_header=False, expand=False)
        tab.add_column(style="bold")
        tab.add_column()
        energy_mwh = (self.energy_end_wh - self.energy_start_wh) / 1e6
        tab.add_row("simulated", f"{self.t_s:,.0f} s, {self.samples} samples")
        tab.add_row("energy", f"{energy_mwh:,.3f} MWh at the interconnect")
        tab.add_row("peak site power", f"{self.peak_facility_w / 1e6:,.3f} MW (IT {self.peak_it_w / 1e6:,.3f} MW)")
        for lid, c in self.max_return_c.items():
            k = topo.loop_ids.index(lid)
            tab.add_row(f"max return {lid}", f"{c:.1f} °C (limit {topo.loop_max_return_c[k]:.0f} °C)")
        if not self.over:
            tab.add_row("limits", "[green]no limit exceeded[/green]")
        for key, e in sorted(self.over.items(), key=lambda kv: -kv[1].seconds):
            tab.add_row(f"[red]exceeded[/red] {key}", f"{e.seconds:,.1f} s, worst by {e.worst_over_w / 1e3:,.1f} kW")
        return tab


def view_state(twin: Twin, opts: DemoOptions, notes: list[str]) -> ViewState:
    """Build the view from the twin's state."""
    sim, t = twin.sim, twin.topo
    g = sim.grid()
    active = [e for e in g.events if e.state(g.ts_ns) in ("announced", "active")]

    def rows(level: int) -> list[PowerRow]:
        sl = t.level_slice(level)
        return [PowerRow(i, float(p), float(lim)) for i, p, lim in
                zip(t.ids(level), sim.node_power_w[sl], t.node_limit_w[sl], strict=True)]

    loops = [LoopRow(lid, float(sim.loop_supply_c[k]), float(sim.loop_return_c[k]),
                     float(t.loop_max_return_c[k]), float(sim.loop_flow_lpm[k]), float(sim.loop_heat_w[k]),
                     float(sim.loop_capacity_w[k]), int(sim.loop_pumps_running[k]), int(t.loop_pumps[k]))
             for k, lid in enumerate(t.loop_ids)]
    return ViewState(
        site=twin.site.site.name, source="twin state (in process)", t_s=sim.t_s,
        duration_s=opts.duration_s, speed=opts.speed, facility_w=sim.facility_w, it_w=sim.it_w,
        limit_w=g.limit_w, dr_target_w=active[0].target_w if active else None,
        dr_state=active[0].state(g.ts_ns) if active else None, price_per_mwh=g.price_per_mwh,
        currency=g.currency, carbon_g_per_kwh=g.carbon_g_per_kwh, frequency_hz=g.frequency_hz,
        energy_mwh=sim.facility_energy_wh / 1e6, halls=rows(L_HALL), rows=rows(L_ROW), racks=rows(L_RACK),
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


def plane_panels(plane: ControlPlane) -> list[RenderableType]:
    """Panels for the control plane: caps and headroom, collectors, store."""
    out: list[RenderableType] = []
    plan = plane.last_plan
    if plan is not None:
        s = plan.summary()
        tab = Table(expand=True, box=None, padding=(0, 1))
        for col in ("rack", "demand", "cap", "limit", "headroom", "load"):
            tab.add_column(col, justify="left" if col in ("rack", "load") else "right")
        for r in s["racks"]:
            tab.add_row(r["id"], f"{r['demand_w'] / 1e3:,.0f} kW", f"{r['cap_w'] / 1e3:,.0f} kW",
                        f"{r['limit_w'] / 1e3:,.0f} kW", f"{r['headroom_w'] / 1e3:,.0f} kW",
                        bar(r["load_w"], r["limit_w"]))
        for lp in s["loops"]:
            tab.add_row(f"loop {lp['id']}", "", "", f"{lp['capacity_w'] / 1e3:,.0f} kW",
                        f"{(lp['capacity_w'] - lp['load_w']) / 1e3:,.0f} kW", bar(lp["load_w"], lp["capacity_w"]))
        binding = ", ".join(f"{k} ({n} GPUs)" for k, n in list(s["binding"].items())[:3]) or "none"
        title = (f"caps · plan {s['plan_id']} · budget {s['budget_w'] / 1e6:,.2f} MW ({s['budget_reason']}) · "
                 f"{s['gpus_capped']:,} GPUs capped · binding: {binding} · solve {s['solve_ms']:.1f} ms")
        out.append(Panel(tab, title=title, border_style="green"))
    health = plane.collectors.health()
    up = sum(1 for h in health if h.up)
    rejected = sum(sum(h.rejected.values()) for h in health)
    st = plane.sink.stats()
    line = (f"devices up {up}/{len(health)} · readings {plane.stats.readings:,} · rejected {rejected:,} · "
            f"store: written {st.written_points:,}, spooled {st.spooled_points:,}, dropped {st.dropped_points:,} · "
            f"plans {plane.stats.plans:,}, violations {plane.stats.plans_with_violations}")
    down = [h.device for h in health if not h.up and h.polls]
    if down:
        line += f" · [red]down: {', '.join(down[:4])}[/red]"
    out.append(Panel(Text.from_markup(line), title="collectors and store", border_style="blue"))
    return out


def plane_rows(plane: ControlPlane) -> list[tuple[str, str]]:
    """Summary rows about the control plane."""
    st, sink = plane.stats, plane.sink.stats()
    health = plane.collectors.health()
    rejected: Counter[str] = Counter()
    for h in health:
        for reason, n in h.rejected.items():
            rejected[reason.name.lower()] += n
    why = f" ({', '.join(f'{k} {v}' for k, v in rejected.items())})" if rejected else ""
    rows = [
        ("collected", f"{st.readings:,} readings from {sum(1 for h in health if h.polls or h.readings)} of "
                      f"{len(health)} devices (Modbus, SNMP, MQTT); rejected {sum(rejected.values()):,}{why}"),
        ("stored", f"{sink.written_points:,} points, {sink.written_events:,} events; spooled {sink.spooled_points:,}, "
                   f"rejected {sink.rejected_points:,}, dropped {sink.dropped_points:,}"),
    ]
    if plane.loop is not None:
        ok = "[green]no plan granted over a limit[/green]" if not st.plans_with_violations else \
            f"[red]{st.plans_with_violations} plans granted over a limit[/red]: {st.violations[0]}"
        rows.append(("cap plans", f"{st.plans:,} plans, {ok}; worst solve {st.worst_solve_ms:.1f} ms; "
                                  f"{st.infeasible_plans} with an infeasible constraint; "
                                  f"{st.periods_at_risk} periods with a limit at risk from GPUs lagging their caps"))
    else:
        rows.append(("cap plans", "controller off (--no-control): GPUs run uncapped"))
    return rows


async def run_demo(opts: DemoOptions, console: Console) -> int:
    """Run the demo; return the process exit status."""
    site = load_site(opts.site)
    start_ns = int(site.twin.start.timestamp() * NS_PER_S) if site.twin.start else None
    clock = ScaledClock(opts.speed, start_ns)
    store_cfg = replace(opts.store, site=site.site.name)
    broker = await start_broker(opts.mqtt_url)  # a bad --mqtt fails here, before anything is written
    try:
        sink = open_sink(store_cfg)
    except BaseException:
        await broker.stop()
        raise
    twin = Twin(site, clock, mqtt=(broker.host, broker.port), seed=opts.seed)
    key = SiteKey.generate()  # per run; the agents get it through their environment
    fleet: AgentFleet | None = None
    hooks: HookDispatcher | None = None
    receiver: WebhookReceiver | None = None
    # The drill needs room after the restart: a lease to fall back, one to come back.
    drill = (OutageDrill(*opts.outage) if opts.outage and opts.control
             and sum(opts.outage) + 2 * site.actuation.lease_s <= opts.duration_s else None)
    live_view = sys.stdout.isatty() if opts.live is None else opts.live
    summary = Summary()
    plane: ControlPlane | None = None
    try:
        await twin.start()
        twin.run_in_background()
        eps = twin.endpoints()
        devices = devices_from_twin(eps, site.site.name, topo=twin.topo, interval_s=opts.collect_interval_s,
                                    timeout_s=max(0.5, opts.collect_interval_s / 2))
        devices = [paced(d, site.controller.period_s, opts.collect_interval_s) for d in devices]

        actuator: Actuator | None = None
        if opts.control:
            # Scheduler hooks: signed webhooks to a receiver on loopback (as a scheduler's
            # endpoint would verify them), and MQTT event topics.
            secret = secrets.token_hex(24).encode()
            receiver = WebhookReceiver(secret).start()
            site = site.model_copy(update={"hooks": Hooks(
                webhooks=[Webhook(url=receiver.url)], mqtt_events=True,
                dead_letter=str(Path(store_cfg.data_dir) / "hooks-dead-letter.jsonl"))})
            hooks = build_hooks(site, MqttAddress(broker.host, broker.port), twin.topo, secrets=[secret])
            hooks.start()
            # Caps reach the twin's GPUs only through the node agents, over MQTT, signed.
            actuator = Actuator(site, twin.topo, key, MqttAddress(broker.host, broker.port))
            fleet = AgentFleet(opts.site, twin.topo, broker.url, clock.anchor(), key,
                               Path(store_cfg.data_dir) / "agents", procs=opts.agent_procs)
            await fleet.start()
        # Server-level power: on a real site the node agents (NVML) report it every few seconds;
        # here the twin's in-process feed reports it every period as well.
        plane = ControlPlane(site, twin.topo, clock, sink, devices=devices,
                             sources=[TwinFeed.nodes(twin.sim, site.site.name).batch],
                             control=opts.control, actuator=actuator, hooks=hooks,
                             advisors=[MoveAdvisor(twin.topo, site.site.name)] if opts.control else [])
        # No plans until every agent has reported: a node without one is non-compliant.
        plane.paused = actuator is not None
        await plane.start()
        if fleet is not None and actuator is not None:
            ready = await wait_agents(plane, actuator, twin.topo.count(L_NODE), fleet)
            plane.paused = False
            console.print(f"agents: {ready:,}/{twin.topo.count(L_NODE):,} nodes reporting from {fleet.n} "
                          f"`powerplane agent --backend sim` processes; site key {key.kid}; lease "
                          f"{site.actuation.lease_s:g} s", highlight=False)
        counts = {p: sum(1 for e in eps if e.protocol == p) for p in ("modbus", "snmp", "mqtt")}
        console.print(f"[bold]powerplane demo[/bold] · site {site.site.name} ({opts.site}) · "
                      f"{twin.topo.n_gpus:,} GPUs in {twin.topo.count(L_RACK)} racks · x{opts.speed:g}")
        console.print(f"twin: {counts['modbus']} Modbus devices, {counts['snmp']} SNMP devices on udp/"
                      f"{twin.snmp.port if twin.snmp else '-'}, MQTT via {broker.describe()}; collecting every "
                      f"{opts.collect_interval_s:g} s; controller {'on' if opts.control else 'OFF'}; "
                      f"store: {describe_store(store_cfg)}", highlight=False)
        end_t = opts.duration_s
        last_line = -math.inf

        def snapshot() -> ViewState:
            vs = view_state(twin, opts, scenario_notes(site, twin.sim.t_s))
            assert plane is not None
            return replace(vs, extra=plane_panels(plane))

        if live_view:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while twin.sim.t_s < end_t:
                    summary.observe(twin.sim)
                    await run_drill(drill, plane, site, twin, key, broker.host, broker.port)
                    live.update(render(snapshot()))
                    await asyncio.sleep(VIEW_PERIOD_WALL_S)
        else:
            while twin.sim.t_s < end_t:
                summary.observe(twin.sim)
                note = await run_drill(drill, plane, site, twin, key, broker.host, broker.port)
                if note:
                    console.print(note, highlight=False)
                if twin.sim.t_s - last_line >= 30.0:
                    line = render_line(view_state(twin, opts, []))
                    if plane.last_plan is not None:
                        p = plane.last_plan
                        line += f" budget={p.budget_w / 1e6:.3f}MW capped={p.gpus_capped}"
                    console.print(line, highlight=False)
                    last_line = twin.sim.t_s
                await asyncio.sleep(VIEW_PERIOD_WALL_S)
        summary.observe(twin.sim)
        if drill is not None and drill.restart_ns >= 0 and plane.actuator is not None:
            plane.step(clock.now_ns())  # take in the last statuses
            drill.evaluate(plane.actuator, site.actuation.lease_s, opts.speed)
    finally:
        if plane is not None:
            await plane.stop()
        if fleet is not None:
            await fleet.stop()
        if hooks is not None:
            await asyncio.to_thread(hooks.close, 5.0)
        if receiver is not None:
            receiver.stop()
        await twin.stop()
        await broker.stop()
        sink.close()
    tab = summary.table(twin.topo)
    if plane is not None:
        for k, v in plane_rows(plane):
            tab.add_row(k, v)
        for k, v in actuation_rows(plane, fleet, drill):
            tab.add_row(k, v)
        if hooks is not None and receiver is not None:
            tab.add_row("scheduler hooks", hook_summary(hooks, receiver))
    console.print(tab)
    if not store_cfg.influx_url:
        console.print(f"telemetry kept in {store_cfg.data_dir}/ — `powerplane report --data-dir "
                      f"{store_cfg.data_dir}` summarises it and plots it", highlight=False)
    if plane is not None and plane.stats.plans_with_violations:
        return 1
    if drill is not None and drill.result is not None and not drill.result.ok:
        return 1
    return 0


async def wait_agents(plane: ControlPlane, actuator: Actuator, nodes: int, fleet: AgentFleet,
                      timeout_s: float = 60.0) -> int:
    """Wait (wall time) until every node's agent has reported; return how many did."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end and fleet.alive() == fleet.n:
        for ev in actuator.statuses():  # the plane is paused: take the statuses in here
            plane.event(ev)
        seen = int((actuator.verifier.mode != "unknown").sum())
        if seen >= nodes:
            return seen
        await asyncio.sleep(0.1)
    return int((actuator.verifier.mode != "unknown").sum())


async def run_drill(drill: OutageDrill | None, plane: ControlPlane, site: SiteConfig, twin: Twin, key: SiteKey,
                    host: str, port: int) -> str:
    """Advance the controller-outage drill; return a line to print when something happened."""
    if drill is None or (plane.actuator is None and not drill.down):
        return ""
    t = twin.sim.t_s
    now = twin.sim.now_ns
    if drill.kill_ns < 0 and t >= drill.at_s:
        plane.paused = True
        assert plane.actuator is not None
        drill.kill(plane.actuator, now)
        plane.actuator = None
        return f"t={t:.0f}s controller killed (drill): no plans, no lease renewals for {drill.down_s:.0f} s"
    if drill.down and t >= drill.at_s + drill.down_s:
        fresh = Actuator(site, twin.topo, key, MqttAddress(host, port))
        await fresh.start()
        plane.actuator = fresh
        plane.paused = False
        drill.restarted(now)
        return f"t={t:.0f}s controller restarted (drill)"
    return ""


def actuation_rows(plane: ControlPlane, fleet: AgentFleet | None,
                   drill: OutageDrill | None) -> list[tuple[str, str]]:
    """Summary rows about caps reaching the GPUs."""
    a = plane.actuator
    if fleet is None or a is None:
        return []
    p, v = a.publisher.stats, a.verifier.stats
    p50, p95, worst = v.settle_percentiles()
    rows = [("actuation", f"{p.commands:,} signed cap commands since the last controller start ({p.lowered:,} "
                          f"lowering, {p.raised:,} raising, {p.renewed:,} lease renewals); {v.statuses:,} agent "
                          f"statuses; settling p50 {p50:.1f} s, p95 {p95:.1f} s, max {worst:.1f} s; "
                          f"{v.noncompliant_episodes} non-compliance episodes"),
            ("agents", f"{sum(v.modes.values()):,} nodes in {fleet.n} processes: "
                       + ", ".join(f"{k} {n:,}" for k, n in sorted(v.modes.items())))]
    if drill is not None and drill.result is not None:
        r = drill.result
        color = "green" if r.ok else "red"
        rows.append(("outage drill", f"[{color}]{r.describe()}[/{color}]"))
    return rows


def hook_summary(hooks: HookDispatcher, receiver: WebhookReceiver) -> str:
    """What the webhook receiver got, verified, and what the dispatcher could not deliver."""
    kinds = Counter(str(p.get("kind")) for p in receiver.received)
    moves = [p for p in receiver.received if p.get("kind") == "move_recommendation"]
    jobs = sorted({f"{(p.get('detail') or {}).get('action', '?')} {p.get('entity')}" for p in moves})
    st = hooks.stats()
    dead = sum(s.dead_lettered for s in st.sinks.values())
    mqtt = st.sinks.get("mqtt")
    line = (f"{len(receiver.received):,} signed webhooks verified by the receiver ("
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")")
    if jobs:
        line += f"; move recommendations: {', '.join(jobs)}"
    line += f"; rejected {sum(receiver.rejected.values())}, dead-lettered {dead}"
    if mqtt is not None:
        line += f"; {mqtt.delivered:,} on MQTT event topics"
    return line


def paced(d: DeviceConfig, period_s: float, interval_s: float) -> DeviceConfig:
    """The demo's polling plan: CDUs every control period (loop capacity moves fastest: a pump
    trips), PDUs and UPSes over SNMP every ``max(10 s, interval)`` (sites poll them every 10-60 s;
    the caps do not depend on them), everything else every ``interval_s``."""
    if dict(d.tags).get("loop"):
        return replace(d, interval_s=min(interval_s, period_s), timeout_s=min(d.timeout_s, period_s))
    if d.protocol == "snmp":
        return replace(d, interval_s=max(10.0, interval_s), timeout_s=max(d.timeout_s, 2.0))
    return d


def describe_store(cfg: StoreConfig) -> str:
    """Where telemetry goes, for one line of output."""
    if cfg.influx_url:
        return f"InfluxDB {cfg.influx_url} bucket {cfg.influx_bucket} (spool {cfg.spool_dir})"
    return f"embedded SQLite in {cfg.data_dir}"
