"""Seed an InfluxDB with a twin run of the demo hall, through our own line-protocol encoder.

power.*, cooling.*, site.* and grid.* come from ``TwinFeed`` over a ``TwinSim`` run of the
whole demo scenario (a demand-response event, a pump failure, a warm-water excursion).

caps.*, collector.*, store.* and the ``events`` rows are SYNTHESIZED here: they stand in for
the controller, the collectors and the store until the demo writes them itself. They are
derived from the twin's state so they are realistic (limits from the topology, loads from
the twin, a DR event that caps the low-priority jobs, a CDU that stops answering during its
pump failure, a store outage that fills the spool and drains it) — but they are test data,
not the controller's output.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from models.clock import NS_PER_S
from models.events import (
    EV_CAP_CHANGED,
    EV_DR_END,
    EV_DR_START,
    EV_HEADROOM_LOW,
    EV_INFEASIBLE,
    EV_LEASE_FALLBACK,
    EV_MOVE,
    EV_NON_COMPLIANT,
    Event,
)
from models.readings import ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.topology import L_NODE, L_RACK, LEVELS, Topology
from models.twin.devices import inventory
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim
from powerplane.store.lineproto import encode, encode_events

DURATION_S = 780  # the whole demo scenario
SAMPLE_S = 5
DEFAULT_START = datetime(2026, 1, 15, 16, 0, tzinfo=UTC)  # a winter afternoon, before the evening DR
STORE_OUTAGE_S = (300.0, 480.0)  # InfluxDB unreachable: the spool fills, then drains


@dataclass(frozen=True)
class Seeded:
    """What was written: the database, the site and the time range (ns)."""

    database: str
    site: str
    start_ns: int
    end_ns: int
    lines: int


class _Synth:
    """The stand-in controller, collectors and store of the seeding."""

    def __init__(self, sim: TwinSim, site_id: str) -> None:
        self.sim = sim
        self.site = site_id
        self.reg = SeriesRegistry()
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

    def _add(self, out: list[tuple[int, float]], metric: str, value: float, **tags: str) -> None:
        out.append((self.reg.id(metric, site=self.site, **tags), float(value)))

    def caps(self, out: list[tuple[int, float]]) -> None:
        sim, t = self.sim, self.sim.topo
        capped = sim.gpu_cap_w < sim.gpu_demand_w - 1.0
        for lv in range(L_RACK + 1):
            sl = t.level_slice(lv)
            for j, ident in enumerate(t.ids(lv)):
                limit = float(t.node_limit_w[sl][j])
                if not np.isfinite(limit):
                    continue
                load = float(sim.node_power_w[sl][j])
                tags = {"level": LEVELS[lv], "id": ident}
                self._add(out, "caps.limit_w", limit, **tags)
                self._add(out, "caps.load_w", load, **tags)
                self._add(out, "caps.headroom_w", limit - load, **tags)
                self._add(out, "caps.binding", float(limit - load < 0.02 * limit), **tags)
        for k, lid in enumerate(t.loop_ids):
            cap, heat = float(sim.loop_capacity_w[k]), float(sim.loop_heat_w[k])
            tags = {"level": "loop", "id": lid}
            self._add(out, "caps.limit_w", cap, **tags)
            self._add(out, "caps.load_w", heat, **tags)
            self._add(out, "caps.headroom_w", cap - heat, **tags)
            self._add(out, "caps.binding", float(cap - heat < 0.02 * cap), **tags)
        for jx, job in enumerate(t.job_ids):
            g = t.gpu_job == jx
            cap, dem = float(sim.gpu_cap_w[g].sum()), float(sim.gpu_demand_w[g].sum())
            tags = {"level": "job", "id": job}
            self._add(out, "caps.cap_w", cap, **tags)
            self._add(out, "caps.demand_w", dem, **tags)
            self._add(out, "caps.cut_w", max(0.0, dem - cap), **tags)
            self._add(out, "caps.gpus_capped", float(capped[g].sum()), **tags)
        g = sim.grid()
        now = sim.now_ns
        targets = [e.target_w for e in g.events if e.start_ns <= now < e.end_ns]
        budget = min([g.limit_w, *targets])
        cap, dem = float(sim.gpu_cap_w.sum()), float(sim.gpu_demand_w.sum())
        tags = {"level": "site", "id": self.site}
        self._add(out, "caps.limit_w", budget, **tags)
        self._add(out, "caps.load_w", sim.facility_w, **tags)
        self._add(out, "caps.headroom_w", budget - sim.facility_w, **tags)
        self._add(out, "caps.binding", float(budget - sim.facility_w < 0.02 * budget), **tags)
        self._add(out, "caps.cap_w", cap, **tags)
        self._add(out, "caps.demand_w", dem, **tags)
        self._add(out, "caps.cut_w", max(0.0, dem - cap), **tags)
        self._add(out, "caps.gpus_capped", float(capped.sum()), **tags)
        self._add(out, "caps.solve_ms", 0.8 + 0.2 * self.rng.random(), **tags)

    def collectors(self, out: list[tuple[int, float]], t_s: float, sample_s: float) -> None:
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
                self.readings[name] += 8 * sample_s
                if self.rng.random() < 0.08:
                    self.rejected[name] += 1  # an out-of-range or stuck value now and then
                if protocol == "mqtt" and self.rng.random() < 0.3:
                    self.bad[name] += 1  # a malformed BMS payload now and then
            self._add(out, "collector.up", 0.0 if down else 1.0, **tags)
            self._add(out, "collector.latency_s", latency, **tags)
            self._add(out, "collector.consecutive_failures", self.failures[name], **tags)
            self._add(out, "collector.last_success_s", self.last_ok[name], **tags)
            self._add(out, "collector.readings", self.readings[name], **tags)
            self._add(out, "collector.rejected", self.rejected[name], **tags)
            self._add(out, "collector.messages_bad", self.bad[name], **tags)

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
        self._add(out, "store.written_points", self.written, **tags)
        self._add(out, "store.spooled_points", self.spooled, **tags)
        self._add(out, "store.rejected_points", self.rejected_points, **tags)
        self._add(out, "store.dropped_points", 0.0, **tags)

    def batch(self, rows: list[tuple[int, float]]) -> ReadingBatch:
        s = np.array([r[0] for r in rows], np.int32)
        v = np.array([r[1] for r in rows], np.float64)
        return ReadingBatch.of(self.sim.now_ns, s, v, 0, self.reg)


def _dr_caps(sim: TwinSim, active: bool) -> None:
    """The stand-in controller's DR response: low-priority jobs to their floor, training to 80 %."""
    t = sim.topo
    prio = np.where(t.gpu_job >= 0, t.job_priority[np.maximum(t.gpu_job, 0)], 99)
    if not active:
        sim.set_caps(t.gpu_max_w.copy())
        return
    caps = t.gpu_max_w.copy()
    caps[prio >= 2] = t.gpu_min_w[prio >= 2]
    caps[prio == 1] = 0.8 * t.gpu_max_w[prio == 1]
    sim.set_caps(caps)


def _events(sim: TwinSim, site: SiteConfig, topo: Topology) -> list[Event]:
    t0 = sim.start_ns
    ev: list[Event] = []
    for d in sim.dr_events:
        ev.append(Event(d.start_ns, EV_DR_START, "warning", "grid", f"demand response {d.id}: target "
                        f"{d.target_w / 1e3:,.0f} kW", d.id, {"value": d.target_w}))
        ev.append(Event(d.end_ns, EV_DR_END, "info", "grid", f"demand response {d.id} ended", d.id))
        for jx, job in enumerate(site.jobs):
            g = topo.gpu_job == jx
            floor = float(topo.gpu_min_w[g].sum())
            full = float(topo.gpu_max_w[g].sum())
            cap = floor if job.priority >= 2 else (0.8 * full if job.priority == 1 else full)
            for ts, c, why in ((d.start_ns, cap, "DR target"), (d.end_ns, full, "DR ended")):
                ev.append(Event(ts, EV_CAP_CHANGED, "info", "controller", f"{job.id}: cap {c / 1e3:,.0f} kW ({why})",
                                job.id, {"value": c, "priority": float(job.priority)}))
        low = max(site.jobs, key=lambda j: j.priority)
        ev.append(Event(d.start_ns + NS_PER_S, EV_MOVE, "warning", "controller",
                        f"move {low.id} (priority {low.priority}, checkpointable) to free power for {d.id}",
                        low.id, {"value": float(topo.gpu_max_w[topo.gpu_job == site.jobs.index(low)].sum())}))
    pump = site.twin.pump_failures[0]
    at = t0 + int((pump.start_s + 30) * NS_PER_S)
    ev.append(Event(at, EV_INFEASIBLE, "critical", "controller",
                    f"loop {pump.loop}: GPU floors exceed the capacity left by {pump.pumps_failed} failed pump(s)",
                    pump.loop, {"value": 85e3}))
    ev.append(Event(at, EV_HEADROOM_LOW, "warning", "controller", f"loop {pump.loop}: headroom below 5 %",
                    pump.loop, {"value": 40e3}))
    node = topo.ids(L_NODE)[3]
    ev.append(Event(t0 + 200 * NS_PER_S, EV_NON_COMPLIANT, "warning", "agent",
                    f"{node} draws 1.4 kW above its cap", node, {"value": 1400.0}))
    ev.append(Event(t0 + 450 * NS_PER_S, EV_LEASE_FALLBACK, "error", "agent",
                    f"{node}: lease expired, safe cap applied", node, {"value": 4000.0}))
    return ev


def run_twin(site: SiteConfig, topo: Topology) -> tuple[str, int, int, list[bytes]]:
    """Run the demo scenario; return (site id, start ns, end ns, line-protocol chunks)."""
    start = site.twin.start or DEFAULT_START
    sim = TwinSim(site, topo, start_ns=int(start.timestamp()) * NS_PER_S)
    site_id = site.site.name
    feed = TwinFeed(sim, site_id)
    synth = _Synth(sim, site_id)
    chunks: list[bytes] = []
    dr_on = False
    for k in range(DURATION_S // SAMPLE_S + 1):
        t_s = float(k * SAMPLE_S)
        sim.advance_to(sim.start_ns + int(t_s * NS_PER_S))
        active = any(e.start_ns <= sim.now_ns < e.end_ns for e in sim.dr_events)
        if active != dr_on:
            _dr_caps(sim, active)
            dr_on = active
        b = feed.batch()
        rows: list[tuple[int, float]] = []
        # The twin has no leak model: the CDUs report "dry", as a real leak sensor mostly does.
        for lid in topo.loop_ids:
            synth._add(rows, "cooling.leak", 0.0, loop=lid)
        synth.caps(rows)
        synth.collectors(rows, t_s, SAMPLE_S)
        synth.store(rows, t_s, len(b) + len(rows))
        chunks.append(encode(b))
        chunks.append(encode(synth.batch(rows)))
    chunks.append(encode_events(_events(sim, site, topo), site_id))
    return site_id, sim.start_ns, sim.now_ns, chunks


def seed(url: str, database: str, site: SiteConfig, topo: Topology) -> Seeded:
    """Create ``database`` on the InfluxDB 1.x at ``url`` and write the run into it."""
    _post(f"{url}/query", f"q=CREATE DATABASE {database}".encode(), "application/x-www-form-urlencoded")
    site_id, start_ns, end_ns, chunks = run_twin(site, topo)
    data = b"".join(chunks)
    for i in range(0, len(chunks), 20):
        _post(f"{url}/write?db={database}&precision=ns", b"".join(chunks[i:i + 20]), "text/plain")
    return Seeded(database, site_id, start_ns, end_ns, data.count(b"\n"))


def _post(url: str, body: bytes, content_type: str) -> None:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status not in (200, 204):
            raise RuntimeError(f"{url}: HTTP {r.status}")
