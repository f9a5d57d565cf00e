"""``powerplane demo``: the whole control plane against the digital twin, with no server to install.

It starts an MQTT broker (see ``powerplane.broker``), the twin with its Modbus, SNMP and
MQTT endpoints on loopback, shows a live view and ends with a summary of energy, peaks and
every limit that was exceeded (site, power tree, cooling).
"""

from __future__ import annotations

import asyncio
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from models.clock import NS_PER_S, ScaledClock
from models.site import SiteConfig, load_site
from models.topology import L_HALL, L_RACK, L_ROW, LEVELS, Topology
from models.twin.runner import Twin
from models.twin.sim import TwinSim
from powerplane.broker import start_broker
from powerplane.view import LoopRow, PowerRow, ViewState, render, render_line

DEFAULT_SITE = Path(__file__).resolve().parent.parent / "deploy" / "sites" / "demo.toml"
VIEW_PERIOD_WALL_S = 0.25


@dataclass
class DemoOptions:
    """What the operator asked for on the command line."""

    site: Path = DEFAULT_SITE
    duration_s: float = 780.0
    speed: float = 20.0
    seed: int | None = None
    mqtt_url: str | None = None
    live: bool | None = None  # None: live view only when stdout is a terminal


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


async def run_demo(opts: DemoOptions, console: Console) -> int:
    """Run the demo; return the process exit status."""
    site = load_site(opts.site)
    start_ns = int(site.twin.start.timestamp() * NS_PER_S) if site.twin.start else None
    clock = ScaledClock(opts.speed, start_ns)
    broker = await start_broker(opts.mqtt_url)
    twin = Twin(site, clock, mqtt=(broker.host, broker.port), seed=opts.seed)
    live_view = sys.stdout.isatty() if opts.live is None else opts.live
    summary = Summary()
    try:
        await twin.start()
        twin.run_in_background()
        eps = twin.endpoints()
        counts = {p: sum(1 for e in eps if e.protocol == p) for p in ("modbus", "snmp", "mqtt")}
        console.print(f"[bold]powerplane demo[/bold] · site {site.site.name} ({opts.site}) · "
                      f"{twin.topo.n_gpus:,} GPUs in {twin.topo.count(L_RACK)} racks · x{opts.speed:g}")
        console.print(f"twin: {counts['modbus']} Modbus devices, {counts['snmp']} SNMP devices on udp/"
                      f"{twin.snmp.port if twin.snmp else '-'}, MQTT via {broker.describe()}")
        end_t = opts.duration_s
        last_line = -math.inf
        if live_view:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while twin.sim.t_s < end_t:
                    summary.observe(twin.sim)
                    live.update(render(view_state(twin, opts, scenario_notes(site, twin.sim.t_s))))
                    await asyncio.sleep(VIEW_PERIOD_WALL_S)
        else:
            while twin.sim.t_s < end_t:
                summary.observe(twin.sim)
                if twin.sim.t_s - last_line >= 30.0:
                    console.print(render_line(view_state(twin, opts, [])), highlight=False)
                    last_line = twin.sim.t_s
                await asyncio.sleep(VIEW_PERIOD_WALL_S)
        summary.observe(twin.sim)
    finally:
        await twin.stop()
        await broker.stop()
    console.print(summary.table(twin.topo))
    return 0
