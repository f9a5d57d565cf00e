"""Seed an InfluxDB with a twin run of the demo hall, shaped as the real pipeline writes it.

What the code writes, at the cadence the demo writes it:

* the twin's power tree, as the collectors store it: every level's entity total and, beside
  it, the sub-points the device profiles add with the same ``id`` — per phase on the
  meters (``phase``), per output line and the input side on the UPSes (``line``,
  ``side=input``), per phase and outlet on the PDUs; meters every 2 s, SNMP devices every
  10 s, servers every 5 s;
* the CDUs every control period (``loop`` tag) with the facility-water supply beside the CDU
  supply (``side=facility``, 4 °C cooler, as the CDU profile and the BMS feed carry it), and
  the BMS's rack-level series (``level=rack``, no ``loop``);
* the site meter, the derived site totals (``site.it_w``, ``site.pue``, ``grid.dr_*``) every
  period, the grid signals every second;
* ``caps.*`` and the controller's events (``cap_plan``, ``cap_binding``, ``cap_changed``
  with a per-GPU cap, ``headroom_low``, ``dr_start``/``dr_end``, infeasible constraints) from
  the real ``ControlLoop`` and ``Notices`` every period, its caps applied to the twin.

Synthesized, for the edge cases the twin cannot produce yet (the lead's real-pipeline test
covers the rest): collector and store health (a CDU that stops answering during its pump
failure, a store outage that fills the spool and drains it), node non-compliance and lease
fallback events (the same nodes several times, to count nodes and not events), and a move
recommendation. They use the schema and tags the code uses.

``Seeded.truth`` keeps what was written, so that the panels' values can be checked.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from controllers.loop import ControlLoop
from controllers.notices import Notices
from controllers.plan import CapPlan
from models.clock import NS_PER_S
from models.events import EV_INFEASIBLE, EV_LEASE_FALLBACK, EV_MOVE, EV_NON_COMPLIANT, Event
from models.readings import ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_FEED, L_HALL, L_NODE, L_PDU, L_RACK, L_ROW, L_UPS, LEVELS, Topology
from models.twin.devices import inventory
from models.twin.sim import TwinSim
from store.lineproto import encode, encode_events

DURATION_S = 780  # the whole demo scenario
METER_S, SNMP_S, NODE_S, BMS_S, HEALTH_S = 2, 10, 5, 5, 10
DEFAULT_START = datetime(2026, 1, 15, 16, 0, tzinfo=UTC)  # a winter afternoon, before the evening DR
STORE_OUTAGE_S = (300.0, 480.0)  # InfluxDB unreachable: the spool fills, then drains
UPS_EFFICIENCY = 0.96
NON_COMPLIANT = ((200, 3), (230, 3), (260, 3), (200, 5), (215, 40), (245, 40), (300, 41), (330, 3))  # (t_s, node)
# Levels measured by a meter over Modbus (and so every 2 s), the others over SNMP.
METERED = (L_FEED, L_HALL, L_ROW, L_RACK)


@dataclass
class Truth:
    """What the seeding wrote, for the value checks."""

    t_s: dict[str, list[float]] = field(default_factory=dict)  # sample times per name below
    site_w: list[float] = field(default_factory=list)  # facility, at the meter's samples
    site_wh: list[float] = field(default_factory=list)  # the meter's energy register there
    it_w: list[float] = field(default_factory=list)  # IT, at the period's samples
    limit_w: list[float] = field(default_factory=list)
    entity_w: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (level, id): totals written
    loop_supply_c: dict[str, list[float]] = field(default_factory=dict)  # CDU supply, every period
    loop_return_c: dict[str, list[float]] = field(default_factory=dict)
    loop_heat_w: dict[str, list[float]] = field(default_factory=dict)
    facility_energy_wh: float = 0.0  # the twin's own integral over the run
    last_plan: CapPlan | None = None
    job_cap_w: dict[str, float] = field(default_factory=dict)  # last cap_changed per job (W per GPU)
    non_compliant_racks: set[str] = field(default_factory=set)
    non_compliant_events: int = 0  # per-rack events
    non_compliant_peak: int = 0  # most nodes non-compliant at once
    infeasible_s: list[float] = field(default_factory=list)  # when the controller reported one (s into the run)


@dataclass(frozen=True)
class Seeded:
    """What was written: the database, the site and the time range (ns)."""

    database: str
    site: str
    start_ns: int
    end_ns: int
    lines: int
    truth: Truth


class _Synth:
    """Collector and store health, with the outages the twin cannot produce yet."""

    def __init__(self, sim: TwinSim, site_id: str, reg: SeriesRegistry) -> None:
        self.sim = sim
        self.site = site_id
        self.reg = reg
        # (name, protocol, level, index): the twin's Modbus/SNMP devices plus the BMS/grid MQTT feed.
        self.devices = [(d.name, str(d.protocol), d.level, d.index) for d in inventory(sim.site, sim.topo)]
        self.devices.append(("bms-mqtt", "mqtt", "site", 0))
        pumps = sim.site.twin.pump_failures
        self.failing_loop = sim.topo.loop_ids.index(pumps[0].loop) if pumps else -1
        self.rng = np.random.default_rng(11)
        self.readings = {d[0]: 0.0 for d in self.devices}
        self.rejected = {d[0]: 0.0 for d in self.devices}
        self.bad = {d[0]: 0.0 for d in self.devices}
        self.failures = {d[0]: 0.0 for d in self.devices}
        self.last_ok = {d[0]: 0.0 for d in self.devices}
        self.written = 0.0
        self.spooled = 0.0
        self.rejected_points = 0.0

    def add(self, out: list[tuple[int, float]], metric: str, value: float, **tags: str) -> None:
        out.append((self.reg.id(metric, site=self.site, **tags), float(value)))

    def collectors(self, out: list[tuple[int, float]], t_s: float) -> None:
        sim = self.sim
        now_s = sim.now_ns / NS_PER_S
        pump_down = any(p.start_s <= t_s < p.start_s + p.duration_s for p in sim.site.twin.pump_failures)
        for name, protocol, level, index in self.devices:
            # The CDU of the loop that loses a pump stops answering Modbus during the failure.
            down = pump_down and level == "loop" and index == self.failing_loop and protocol == "modbus"
            tags = {"device": name, "protocol": protocol}
            if down:
                self.failures[name] += 1
                latency = 1.0  # the poll timed out
            else:
                self.failures[name] = 0
                self.last_ok[name] = now_s
                latency = float(self.rng.gamma(4.0, 0.008 if protocol == "snmp" else 0.004))
                self.readings[name] += 8 * HEALTH_S
                if self.rng.random() < 0.08:
                    self.rejected[name] += 1  # an out-of-range or stuck value now and then
                if protocol == "mqtt" and self.rng.random() < 0.3:
                    self.bad[name] += 1  # a malformed BMS payload now and then
            self.add(out, "collector.up", 0.0 if down else 1.0, **tags)
            self.add(out, "collector.latency_s", latency, **tags)
            self.add(out, "collector.consecutive_failures", self.failures[name], **tags)
            self.add(out, "collector.last_success_s", self.last_ok[name], **tags)
            self.add(out, "collector.readings", self.readings[name], **tags)
            self.add(out, "collector.rejected", self.rejected[name], **tags)
            self.add(out, "collector.messages_bad", self.bad[name], **tags)

    def store(self, out: list[tuple[int, float]], t_s: float, points: int) -> None:
        if STORE_OUTAGE_S[0] <= t_s < STORE_OUTAGE_S[1]:
            self.spooled += points
        else:
            drained = min(self.spooled, 4.0 * points)
            self.spooled -= drained
            self.written += points + drained
            if self.rng.random() < 0.05:
                self.rejected_points += 1
        tags = {"sink": "influxdb"}
        self.add(out, "store.written_points", self.written, **tags)
        self.add(out, "store.spooled_points", self.spooled, **tags)
        self.add(out, "store.rejected_points", self.rejected_points, **tags)
        self.add(out, "store.dropped_points", 0.0, **tags)


def _power(add: _Synth, out: list[tuple[int, float]], sim: TwinSim, levels: tuple[int, ...], truth: Truth,
           t_s: float) -> None:
    """Entity totals of ``levels`` and the sub-points the collectors store beside them."""
    t = sim.topo
    for lv in levels:
        sl = t.level_slice(lv)
        level = LEVELS[lv]
        for j, ident in enumerate(t.ids(lv)):
            w = float(sim.node_power_w[sl][j])
            add.add(out, "power.power_w", w, level=level, id=ident)
            if lv != L_NODE:
                truth.entity_w.setdefault((level, ident), []).append(w)
                truth.t_s.setdefault(f"{level}/{ident}", []).append(t_s)
            if lv in (L_FEED, L_HALL):  # three-phase meters
                for ph in ("L1", "L2", "L3"):
                    add.add(out, "power.power_w", w / 3, level=level, id=ident, phase=ph)
            elif lv == L_UPS:  # UPS-MIB: output lines, and the input side (total and lines)
                for line in ("1", "2", "3"):
                    add.add(out, "power.power_w", w / 3, level=level, id=ident, line=line)
                    add.add(out, "power.power_w", w / UPS_EFFICIENCY / 3, level=level, id=ident, side="input",
                            line=line)
                add.add(out, "power.power_w", w / UPS_EFFICIENCY, level=level, id=ident, side="input")
            elif lv == L_PDU:  # rPDU2: phases and a few metered outlets
                for ph in ("1", "2", "3"):
                    add.add(out, "power.power_w", w / 3, level=level, id=ident, phase=ph)
                for o in ("1", "2"):
                    add.add(out, "power.power_w", w / 24, level=level, id=ident, outlet=o)


def _cooling(add: _Synth, out: list[tuple[int, float]], sim: TwinSim, truth: Truth) -> None:
    """What the CDUs report over Modbus: loop series, and the facility-water supply beside them."""
    t = sim.topo
    src = {"supply_c": sim.loop_supply_c, "return_c": sim.loop_return_c, "flow_lpm": sim.loop_flow_lpm,
           "dp_kpa": sim.loop_dp_kpa, "heat_w": sim.loop_heat_w, "capacity_w": sim.loop_capacity_w,
           "pumps_running": sim.loop_pumps_running}
    for k, lid in enumerate(t.loop_ids):
        for f, arr in src.items():
            add.add(out, f"cooling.{f}", float(arr[k]), loop=lid)
        add.add(out, "cooling.leak", 0.0, loop=lid)  # the twin has no leak model: the CDUs report "dry"
        add.add(out, "cooling.supply_c", _facility_water_c(sim, k), loop=lid, side="facility")
        truth.loop_supply_c.setdefault(lid, []).append(float(sim.loop_supply_c[k]))
        truth.loop_return_c.setdefault(lid, []).append(float(sim.loop_return_c[k]))
        truth.loop_heat_w.setdefault(lid, []).append(float(sim.loop_heat_w[k]))


def _facility_water_c(sim: TwinSim, k: int) -> float:
    """The facility-water supply temperature the twin's CDUs and BMS serve (models/twin/devices.py)."""
    return float(sim.topo.loop_supply_c[k]) - 4 + float(sim.loop_excursion_c[k])


def _bms(add: _Synth, out: list[tuple[int, float]], sim: TwinSim) -> None:
    """The BMS feed (bms-json profile): rack-level series without a loop, facility water per loop."""
    t = sim.topo
    inlet, outlet = sim.rack_inlet_c(), sim.rack_outlet_c()
    for r, rid in enumerate(t.level_ids[L_RACK]):
        add.add(out, "cooling.inlet_c", float(inlet[r]), level="rack", id=rid)
        add.add(out, "cooling.return_c", float(outlet[r]), level="rack", id=rid, side="rack-outlet")
        add.add(out, "cooling.leak", 0.0, level="rack", id=rid, side="rack")
    for k, lid in enumerate(t.loop_ids):
        add.add(out, "cooling.supply_c", _facility_water_c(sim, k), loop=lid, side="facility")


def _edge_events(sim: TwinSim, site: SiteConfig, topo: Topology, truth: Truth,
                 reg: SeriesRegistry) -> tuple[list[Event], ReadingBatch]:
    """Agent-side events and gauges the twin's run here has no agents for, in the verifier's schema:
    one node_noncompliant / lease_fallback event per rack and period (value = nodes), and the
    ``actuation.noncompliant_nodes`` gauge every period."""
    t0 = sim.start_ns
    nodes = topo.ids(L_NODE)
    ev: list[Event] = []
    bad: dict[int, set[str]] = {}  # second -> nodes non-compliant then (an episode lasts 5 s here)
    by_time: dict[int, list[str]] = {}
    for t_s, k in NON_COMPLIANT:
        by_time.setdefault(t_s, []).append(nodes[k])
        for s_ in range(t_s, t_s + 5):
            bad.setdefault(s_, set()).add(nodes[k])
    for t_s, names in sorted(by_time.items()):
        racks: dict[str, list[str]] = {}
        for n in names:
            racks.setdefault(n.split("/")[0], []).append(n)
        for rack, ns in racks.items():
            ev.append(Event(t0 + t_s * NS_PER_S, EV_NON_COMPLIANT, "error", "controller",
                            f"{rack}: {len(ns)} node(s) did not comply within 10 s (draws over its cap; cap 500 W "
                            f"per GPU); accounted at worst case: {', '.join(ns)}", rack,
                            {"value": float(len(ns)), "over_w": 1400.0 * len(ns)}))
            truth.non_compliant_racks.add(rack)
            truth.non_compliant_events += 1
    truth.non_compliant_peak = max(len(v) for v in bad.values())
    sid = reg.id("actuation.noncompliant_nodes", site=sim.site.site.name)
    secs = sorted(bad)
    gauge = ReadingBatch.of(np.array([t0 + s_ * NS_PER_S for s_ in secs], np.int64), np.full(len(secs), sid, np.int32),
                            np.array([float(len(bad[s_])) for s_ in secs]), 0, reg)
    ev.append(Event(t0 + 450 * NS_PER_S, EV_LEASE_FALLBACK, "warning", "agent",
                    f"{nodes[3].split('/')[0]}: 1 node(s) fell back to their safe cap (400 W per GPU): no plan "
                    f"renewed their lease; {nodes[3]}", nodes[3].split("/")[0], {"value": 1.0, "safe_cap_w": 400.0}))
    for d in sim.dr_events:
        low = max(site.jobs, key=lambda j: j.priority)
        ev.append(Event(d.start_ns + NS_PER_S, EV_MOVE, "warning", "controller",
                        f"move {low.id} (priority {low.priority}, checkpointable) to free power for {d.id}",
                        low.id, {"value": float(topo.gpu_max_w[topo.gpu_job == site.jobs.index(low)].sum())}))
    return ev, gauge


def run_twin(site: SiteConfig, topo: Topology) -> tuple[str, int, int, list[bytes], Truth]:
    """Run the demo scenario under the real controller; return (site, start ns, end ns, line protocol, truth)."""
    start = site.twin.start or DEFAULT_START
    sim = TwinSim(site, topo, start_ns=int(start.timestamp()) * NS_PER_S)
    site_id = site.site.name
    reg = SeriesRegistry()
    synth = _Synth(sim, site_id, reg)
    state = SiteState(topo, reg)
    for d in sim.dr_events:  # what the grid topic announces
        state.add_dr_event(d)
    loop = ControlLoop(site, topo, state, registry=reg)
    notices = Notices(site, topo)
    truth = Truth()
    period_s = site.controller.period_s
    chunks: list[bytes] = []
    events: list[Event] = []
    e0 = sim.facility_energy_wh
    for k in range(int(DURATION_S / period_s) + 1):
        t_s = k * period_s
        sim.advance_to(sim.start_ns + int(round(t_s * NS_PER_S)))
        now = sim.now_ns
        rows: list[tuple[int, float]] = []
        whole = round(t_s, 6) == round(t_s)
        sec = int(round(t_s))
        if whole and sec % METER_S == 0:
            synth.add(rows, "site.facility_w", sim.facility_w)
            synth.add(rows, "power.energy_wh", sim.facility_energy_wh)  # the meter's register (site tag only)
            for ph in ("L1", "L2", "L3"):  # and its phases', which the panel must leave out
                synth.add(rows, "power.energy_wh", sim.facility_energy_wh / 3, phase=ph)
            truth.site_w.append(sim.facility_w)
            truth.site_wh.append(sim.facility_energy_wh)
            truth.t_s.setdefault("site", []).append(t_s)
            _power(synth, rows, sim, METERED, truth, t_s)
        if whole and sec % SNMP_S == 0:
            _power(synth, rows, sim, (L_UPS, L_PDU), truth, t_s)
        if whole and sec % NODE_S == 0:
            _power(synth, rows, sim, (L_NODE,), truth, t_s)
        if whole and sec % BMS_S == 0:
            _bms(synth, rows, sim)
        g = sim.grid()
        for f, v in (("limit_w", g.limit_w), ("frequency_hz", g.frequency_hz), ("price_per_mwh", g.price_per_mwh),
                     ("carbon_g_per_kwh", g.carbon_g_per_kwh)):
            synth.add(rows, f"grid.{f}", v)
        truth.limit_w.append(g.limit_w)
        _cooling(synth, rows, sim, truth)
        # The derived site totals and DR state, every period (powerplane.runtime's derived()).
        active = [e for e in sim.dr_events if e.state(now) == "active"]
        synth.add(rows, "site.it_w", sim.it_w)
        synth.add(rows, "site.pue", sim.facility_w / sim.it_w)
        synth.add(rows, "grid.dr_active", float(bool(active)))
        synth.add(rows, "grid.dr_target_w", min((e.target_w for e in active), default=0.0))
        truth.it_w.append(sim.it_w)
        truth.t_s.setdefault("period", []).append(t_s)
        if whole and sec % HEALTH_S == 0:
            synth.collectors(rows, t_s)
            synth.store(rows, t_s, len(rows) + 200)
        batch = ReadingBatch.of(now, np.array([r[0] for r in rows], np.int32),
                                np.array([r[1] for r in rows], np.float64), 0, reg)
        t_in = time.perf_counter()
        state.ingest(batch)
        t_solve = time.perf_counter()
        plan = loop.step(now)
        t_out = time.perf_counter()
        sim.set_caps(plan.caps_w)
        truth.last_plan = plan
        chunks.append(encode(batch))
        # The loop's own health, as ControlPlane writes it every period (controller.*).
        stage = {"ingest_ms": (t_solve - t_in) * 1e3, "verify_ms": 0.0, "solve_ms": (t_out - t_solve) * 1e3,
                 "publish_ms": 0.0, "store_ms": 0.0, "report_ms": 0.0}
        health = {**stage, "late_ms": float(k % 7), "period_ms": sum(stage.values()), "periods": float(k + 1),
                  "plans": float(k + 1), "missed_periods": 0.0, "errors": 0.0}
        chunks.append(encode(ReadingBatch.of(now, [reg.id(f"controller.{f}", site=site_id) for f in health],
                                             list(health.values()), 0, reg)))
        chunks.append(encode(plan.to_batch(site_id, reg)))
        events += plan.events(site_id) + notices.events(plan, state, now)
    for ev in events:
        if ev.kind == "cap_changed" and ev.entity:
            truth.job_cap_w[ev.entity] = float(ev.fields["value"])
        elif ev.kind == EV_INFEASIBLE:
            truth.infeasible_s.append((ev.ts_ns - sim.start_ns) / NS_PER_S)
    edge, gauge = _edge_events(sim, site, topo, truth, reg)
    events += edge
    chunks.append(encode(gauge))
    truth.facility_energy_wh = sim.facility_energy_wh - e0
    chunks.append(encode_events(events, site_id))
    return site_id, sim.start_ns, sim.now_ns, chunks, truth


def seed(url: str, database: str, site: SiteConfig, topo: Topology) -> Seeded:
    """Create ``database`` on the InfluxDB 1.x at ``url`` and write the run into it."""
    _post(f"{url}/query", f"q=CREATE DATABASE {database}".encode(), "application/x-www-form-urlencoded")
    site_id, start_ns, end_ns, chunks, truth = run_twin(site, topo)
    lines = 0
    for i in range(0, len(chunks), 40):
        body = b"".join(chunks[i:i + 40])
        lines += body.count(b"\n")
        _post(f"{url}/write?db={database}&precision=ns", body, "text/plain")
    return Seeded(database, site_id, start_ns, end_ns, lines, truth)


def _post(url: str, body: bytes, content_type: str) -> None:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=60) as r:
        if r.status not in (200, 204):
            raise RuntimeError(f"{url}: HTTP {r.status}")
