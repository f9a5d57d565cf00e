"""The twin's physics: a pure, deterministic simulation of a site on arrays.

``TwinSim.step()`` advances site time by one fixed step (``twin.step_s``); the same seed
and the same sequence of caps give the same trajectory, whatever the wall clock does.
Servers that expose the twin over Modbus/SNMP/MQTT only *read* its arrays (see
``models.twin.devices``); the controller acts on it through ``set_caps``.

Power. Each GPU draws what its job asks, bounded by its cap, and follows that target with
a first-order lag (``GPU_TAU_S``):

* training: ``idle + u*(max-idle)``, dipping by ``swing_fraction`` at ``swing_hz`` in step
  with every other GPU of the job (synchronous compute/communicate phases), and down to
  near idle for ``CHECKPOINT_S`` every ``checkpoint_every_s``;
* inference: a daily curve (``models.grid.inference_load``) with bursty per-GPU noise;
* batch: steady at ``u`` with small noise; GPUs without a job idle.

A server draws ``(sum(GPU) + node_base) / psu_efficiency``; PDUs, racks (plus rack
overhead), rows, halls and UPS outputs are sums; a feed carries its UPSs' *input*
(output / efficiency). IT power is the sum of UPS outputs and the facility draws
``IT + overhead(IT)`` at the interconnect.

Cooling. A loop takes ``liquid_fraction`` of its racks' power as heat. Flow follows the
pumps that run; supply temperature follows its setpoint (plus any excursion, plus what the
exchanger cannot reject); return temperature follows ``supply + Q / (m_dot * cp)``; both
are first-order. Capacity is ``min(hx_rated, m_dot*cp*(max_return - supply))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from models.clock import NS_PER_S
from models.grid import DemandResponseEvent, GridSignals, inference_load, price_shape, solar_shape
from models.physics import OverheadModel
from models.site import PLACEMENT_RE, SiteConfig
from models.topology import L_FEED, L_NODE, L_PDU, L_RACK, L_UPS, LEVELS, Topology

GPU_TAU_S = 0.15  # GPU power settles on a new limit within a few hundred ms
CHECKPOINT_S = 20.0  # a checkpoint parks the GPUs near idle for this long
FLOW_TAU_S = 3.0  # pumps spin up/down
SUPPLY_TAU_S = 20.0  # CDU exchanger and facility water respond slowly
RETURN_TAU_S = 8.0  # transport delay of the secondary loop
FREQ_TAU_S = 30.0
FREQ_STD_HZ = 0.02

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # "pump" or "supply"
    loop: int
    start_s: float
    end_s: float
    amount: float  # pumps failed, or degrees C


def _placement_gpus(topo: Topology, placement: list[str]) -> NDArray[np.intp]:
    """Global GPU indices of a job placement (``rack`` or ``rack:first-last``)."""
    racks = {r: i for i, r in enumerate(topo.level_ids[L_RACK])}
    out: list[NDArray[np.intp]] = []
    for spec in placement:
        m = PLACEMENT_RE.match(spec)
        assert m is not None  # checked when the site was loaded
        r = racks[m["rack"]]
        first = int(m["first"]) if m["first"] is not None else 0
        last = int(m["last"]) if m["last"] is not None else int(topo.rack_nodes[r]) - 1
        n0 = int(topo.rack_first_node[r] - topo.level_offset[L_NODE])
        g0 = int(topo.node_first_gpu[n0 + first])
        g1 = int(topo.node_first_gpu[n0 + last] + topo.node_gpus[n0 + last])
        out.append(np.arange(g0, g1, dtype=np.intp))
    return np.concatenate(out) if out else np.zeros(0, np.intp)


def _first_order(x: F64, target: F64, dt: float, tau: float) -> None:
    """In place: move ``x`` toward ``target`` by the exact first-order response over ``dt``."""
    x += (target - x) * (1.0 - math.exp(-dt / tau))


class TwinSim:
    """A simulated site. All state is arrays; ``step()`` is the only thing that moves it."""

    def __init__(self, site: SiteConfig, topo: Topology, start_ns: int | None = None,
                 seed: int | None = None, start_capped: bool = False) -> None:
        self.site = site
        self.topo = topo
        self.step_s = site.twin.step_s
        tw_start = site.twin.start
        if start_ns is None:
            start_ns = (int(tw_start.timestamp() * NS_PER_S) if tw_start is not None
                        else int(datetime.now(UTC).timestamp()) * NS_PER_S)
        self.start_ns = int(start_ns)
        self.seed = site.twin.seed if seed is None else seed
        self.rng = np.random.default_rng(self.seed)
        self.steps = 0
        tz = ZoneInfo(site.site.timezone)
        start_dt = datetime.fromtimestamp(self.start_ns / NS_PER_S, tz)
        self._start_hour = start_dt.hour + start_dt.minute / 60.0 + start_dt.second / 3600.0

        t = topo
        g = t.n_gpus
        self.overhead = OverheadModel(
            site.facility.overhead_fixed_kw * 1e3, site.facility.overhead_linear,
            site.facility.overhead_quadratic, float(t.node_limit_w[t.level_slice(L_RACK)].sum()))

        # ---- static per-GPU job parameters ---------------------------------------------
        # Scenario jobs ([[twin.jobs]]) run only between their start and end: idle otherwise.
        jobs = [*site.jobs, *site.twin.jobs]
        n_j = len(jobs)
        self._job_kind = np.array([{"training": 0, "inference": 1, "batch": 2}[j.kind] for j in jobs] + [3],
                                  np.int8)  # index n_j: "no job"
        self._job_util = np.array([j.utilization for j in jobs] + [0.0])
        self._job_swing_hz = np.array([j.swing_hz for j in jobs] + [0.0])
        self._job_swing = np.array([j.swing_fraction for j in jobs] + [0.0])
        self._job_ckpt = np.array([j.checkpoint_every_s for j in jobs] + [0.0])
        # Scenario jobs draw their randomness from a stream of their own: adding one to a site leaves
        # every other draw (and so every trajectory of that seed) as it was.
        self._twin_rng = np.random.default_rng([self.seed, 1])
        n_site = len(site.jobs)
        base_phase = self.rng.uniform(0.0, 1.0, n_site + 1)
        self._job_phase = np.concatenate((base_phase[:n_site], self._twin_rng.uniform(0.0, 1.0, n_j - n_site),
                                          base_phase[n_site:]))  # jobs do not swing in step
        self._gpu_job_base = np.where(t.gpu_job >= 0, t.gpu_job, n_j)
        self._gpu_job = self._gpu_job_base.copy()
        # Scenario jobs hold their GPUs only between start and end (two may use the same nodes in turn).
        self._twin_gpus = [_placement_gpus(t, tj.placement) for tj in site.twin.jobs]
        self._twin_jobs = np.arange(n_site, n_j)
        self._twin_window = np.array([(tj.start_s, tj.end_s if tj.end_s is not None else np.inf)
                                      for tj in site.twin.jobs], np.float64).reshape(-1, 2)
        self._twin_active = np.zeros(len(site.twin.jobs), np.bool_)
        self._gpu_silicon = self.rng.normal(1.0, 0.02, g)  # part-to-part variation
        self._gpu_noise = np.zeros(g)  # per-GPU OU noise (inference burstiness)
        self._job_noise = np.zeros(n_j + 1)

        # ---- per-level helpers ---------------------------------------------------------
        off = t.level_offset
        # _parent_of[lv][i]: index, within level lv-1, of the parent of node i of level lv.
        self._parent_of: list[NDArray[np.intp]] = [np.empty(0, np.intp)] + [
            (t.node_parent[off[lv]:off[lv + 1]] - off[lv - 1]).astype(np.intp)
            for lv in range(1, len(LEVELS))
        ]
        self._gpu_node_local = (t.gpu_member[L_NODE] - off[L_NODE]).astype(np.intp)
        self._rack_loop = t.rack_loop.astype(np.intp)

        # ---- state -----------------------------------------------------------------------
        # A site whose control plane is starting runs at the agents' safe cap (they start there).
        safe = site.actuation.safe_cap_w
        self.gpu_cap_w = (np.clip(np.full(g, safe) if safe is not None else t.gpu_min_w, t.gpu_min_w, t.gpu_max_w)
                          if start_capped else t.gpu_max_w.copy())
        self.gpu_demand_w = np.zeros(g)
        self.gpu_power_w = t.gpu_idle_w.copy()
        self.node_power_w = np.zeros(t.n_nodes)
        self.node_energy_wh = np.zeros(t.n_nodes)
        self.it_w = 0.0
        self.facility_w = 0.0
        self.facility_energy_wh = 0.0
        self.it_energy_wh = 0.0
        self.observers: list[Callable[[TwinSim], None]] = []  # called after every step (the truth)

        nl = t.n_loops
        self.loop_pumps_running = t.loop_pumps.astype(np.float64).copy()
        self.loop_flow_lpm = t.loop_flow_lpm.copy()
        self.loop_supply_c = t.loop_supply_c.copy()
        self.loop_heat_w = np.zeros(nl)
        self.loop_return_c = t.loop_supply_c + 5.0
        self.loop_capacity_w = np.zeros(nl)
        self.loop_excursion_c = np.zeros(nl)
        self.loop_dp_kpa = np.array([lp.design_dp_kpa for lp in site.loops])
        self._design_dp = self.loop_dp_kpa.copy()

        # ---- scenario ------------------------------------------------------------------
        loop_ix = {lid: i for i, lid in enumerate(t.loop_ids)}
        self._events = [
            _Event("pump", loop_ix[p.loop], p.start_s, p.start_s + p.duration_s, p.pumps_failed)
            for p in site.twin.pump_failures
        ] + [
            _Event("supply", loop_ix[e.loop], e.start_s, e.start_s + e.duration_s, e.delta_c)
            for e in site.twin.supply_excursions
        ]
        self.dr_events = tuple(
            DemandResponseEvent(d.id, self.start_ns + int(d.start_s * NS_PER_S),
                                self.start_ns + int((d.start_s + d.duration_s) * NS_PER_S),
                                d.target_kw * 1e3,
                                self.start_ns + int(max(0.0, d.start_s - d.notice_s) * NS_PER_S))
            for d in site.twin.demand_response
        )
        self.limit_w = site.site.interconnect_limit_kw * 1e3
        self.frequency_hz = float(site.site.frequency_nominal_hz)
        self._price_noise = 0.0
        self._carbon_noise = 0.0
        self.price_per_mwh = site.grid.price_base_per_mwh
        self.carbon_g_per_kwh = site.grid.carbon_base_g_per_kwh
        self._update_grid(0.0)
        self._update_power(0.0)
        self._update_cooling(0.0, settle=True)

    # ---- time ------------------------------------------------------------------------------
    @property
    def t_s(self) -> float:
        """Seconds of site time since the twin started."""
        return self.steps * self.step_s

    @property
    def now_ns(self) -> int:
        """Current site time in ns since the epoch."""
        return self.start_ns + int(round(self.steps * self.step_s * NS_PER_S))

    def local_hour(self) -> float:
        """Local hour of day at the site (0-24)."""
        return (self._start_hour + self.t_s / 3600.0) % 24.0

    # ---- actuation -----------------------------------------------------------------------
    def set_caps(self, caps_w: F64, gpus: NDArray[np.integer] | None = None) -> None:
        """Enforce power caps, clamped to each GPU's hardware range as NVML would."""
        t = self.topo
        if gpus is None:
            self.gpu_cap_w[:] = np.clip(caps_w, t.gpu_min_w, t.gpu_max_w)
        else:
            self.gpu_cap_w[gpus] = np.clip(caps_w, t.gpu_min_w[gpus], t.gpu_max_w[gpus])

    def reset_energy(self, node: int) -> None:
        """Reset a power node's energy counter, as an operator resets a PDU's kWh meter."""
        self.node_energy_wh[node] = 0.0

    # ---- stepping --------------------------------------------------------------------------
    def step(self, n: int = 1) -> None:
        """Advance ``n`` fixed steps."""
        for _ in range(n):
            self.steps += 1
            dt = self.step_s
            self._update_grid(dt)
            self._update_power(dt)
            self._update_cooling(dt)
            for obs in self.observers:
                obs(self)

    def advance_to(self, ts_ns: int, max_steps: int = 100_000) -> int:
        """Step until site time reaches ``ts_ns``; return the number of steps taken."""
        need = int((ts_ns - self.start_ns) / (self.step_s * NS_PER_S)) - self.steps
        n = max(0, min(need, max_steps))
        self.step(n)
        return n

    # ---- power -----------------------------------------------------------------------------
    def _job_levels(self) -> F64:
        """Per job (plus a trailing "no job" slot): share of (max - idle) asked right now."""
        t_s = self.t_s
        kind = self._job_kind
        util = self._job_util
        level = util.copy()
        phase = 2.0 * math.pi * (self._job_swing_hz * t_s + self._job_phase)
        square = 0.5 * (1.0 + np.tanh(4.0 * np.sin(phase)))  # smooth square wave in [0, 1]
        training = kind == 0
        level[training] *= 1.0 - self._job_swing[training] * (1.0 - square[training])
        ckpt = self._job_ckpt
        in_ckpt = training & (ckpt > 0) & (t_s > CHECKPOINT_S) & \
            (np.mod(t_s, np.where(ckpt > 0, ckpt, 1.0)) < CHECKPOINT_S)
        level[in_ckpt] = 0.08
        inference = kind == 1
        level[inference] = util[inference] * inference_load(self.local_hour()) \
            * (1.0 + self._job_noise[inference])
        level[kind == 3] = 0.0
        if self._twin_jobs.size:
            active = (t_s >= self._twin_window[:, 0]) & (t_s < self._twin_window[:, 1])
            if (active != self._twin_active).any():
                self._twin_active = active
                self._gpu_job = self._gpu_job_base.copy()
                for k in np.flatnonzero(active).tolist():
                    self._gpu_job[self._twin_gpus[k]] = self._twin_jobs[k]
        return np.asarray(np.clip(level, 0.0, 1.0), dtype=np.float64)

    def _update_power(self, dt: float) -> None:
        t = self.topo
        if dt > 0:
            # Job-level OU noise (load changes) and GPU-level noise (request bursts).
            a_j = math.exp(-dt / 20.0)
            n_site = len(self.site.jobs)
            kick = self.rng.standard_normal(n_site + 1)
            if self._twin_jobs.size:
                kick = np.concatenate((kick[:n_site], self._twin_rng.standard_normal(self._twin_jobs.size),
                                       kick[n_site:]))
            self._job_noise = a_j * self._job_noise + math.sqrt(1 - a_j * a_j) * 0.05 * kick
            a_g = math.exp(-dt / 0.5)
            self._gpu_noise *= a_g
            self._gpu_noise += math.sqrt(1 - a_g * a_g) * 0.03 * self.rng.standard_normal(t.n_gpus)
        level = self._job_levels()[self._gpu_job]
        is_inference = self._job_kind[self._gpu_job] == 1
        noise = np.where(is_inference, 2.0 * self._gpu_noise, self._gpu_noise)
        span = t.gpu_max_w - t.gpu_idle_w
        demand = (t.gpu_idle_w + span * np.clip(level * (1.0 + noise), 0.0, 1.0)) * self._gpu_silicon
        self.gpu_demand_w = np.minimum(demand, t.gpu_max_w * 1.02)
        target = np.minimum(self.gpu_demand_w, self.gpu_cap_w)
        if dt > 0:
            _first_order(self.gpu_power_w, target, dt, GPU_TAU_S)
        else:
            self.gpu_power_w[:] = target
        self._sum_tree()
        if dt > 0:
            self.node_energy_wh += self.node_power_w * (dt / 3600.0)
            self.facility_energy_wh += self.facility_w * (dt / 3600.0)
            self.it_energy_wh += self.it_w * (dt / 3600.0)

    def _tree(self, gpu_w: F64, p: F64) -> None:
        """Fill ``p`` (every power node) with the power the tree carries when GPUs draw ``gpu_w``."""
        t = self.topo
        off = t.level_offset
        n_servers = t.count(L_NODE)
        # (np.bincount with weights returns float64; its stubs say int, hence the astype no-ops)
        servers = np.bincount(self._gpu_node_local, weights=gpu_w,
                              minlength=n_servers).astype(np.float64, copy=False)
        p[off[L_NODE]:off[L_NODE + 1]] = (servers + t.node_base_w) / t.node_psu_efficiency
        for lv in range(L_NODE, L_FEED, -1):  # child level lv feeds level lv-1
            child = p[off[lv]:off[lv + 1]]
            if lv == L_UPS:
                child = child / t.node_efficiency[off[lv]:off[lv + 1]]
            parent = np.bincount(self._parent_of[lv], weights=child,
                                 minlength=t.count(lv - 1)).astype(np.float64, copy=False)
            if lv - 1 == L_RACK:
                parent = parent + t.rack_overhead_w
            p[off[lv - 1]:off[lv]] = parent

    def _sum_tree(self) -> None:
        off = self.topo.level_offset
        self._tree(self.gpu_power_w, self.node_power_w)
        self.it_w = float(self.node_power_w[off[L_UPS]:off[L_UPS + 1]].sum())
        self.facility_w = self.overhead.facility_w(self.it_w)

    def demand_facility_w(self) -> float:
        """Facility power if every GPU drew what its job asks, uncapped (what a cap holds back)."""
        p = np.empty_like(self.node_power_w)
        self._tree(self.gpu_demand_w, p)
        off = self.topo.level_offset
        return self.overhead.facility_w(float(p[off[L_UPS]:off[L_UPS + 1]].sum()))

    # ---- cooling ---------------------------------------------------------------------------
    def _update_cooling(self, dt: float, settle: bool = False) -> None:
        t = self.topo
        t_s = self.t_s
        failed = np.zeros(t.n_loops)
        excursion = np.zeros(t.n_loops)
        for ev in self._events:
            if ev.start_s <= t_s < ev.end_s:
                if ev.kind == "pump":
                    failed[ev.loop] += ev.amount
                else:
                    excursion[ev.loop] += ev.amount
        self.loop_excursion_c = excursion
        self.loop_pumps_running = np.maximum(t.loop_pumps - failed, 0.0)
        # A system curve, not a straight line: one pump of two still moves ~55 % of the flow.
        flow_target = t.loop_flow_lpm * (self.loop_pumps_running / t.loop_pumps) ** 0.85
        rack_p = self.node_power_w[t.level_slice(L_RACK)]
        self.loop_heat_w = np.bincount(self._rack_loop, weights=t.rack_liquid_fraction * rack_p,
                                       minlength=t.n_loops).astype(np.float64, copy=False)
        if settle or dt <= 0:
            self.loop_flow_lpm = flow_target.copy()
        else:
            _first_order(self.loop_flow_lpm, flow_target, dt, FLOW_TAU_S)
        m_dot = np.maximum(self.loop_flow_lpm * t.loop_density_kg_per_l / 60.0, 0.05)
        m_cp = m_dot * t.loop_cp_j_per_kg_k
        unrejected = np.maximum(self.loop_heat_w - t.loop_hx_rated_w, 0.0)
        supply_target = t.loop_supply_c + excursion + unrejected / m_cp
        return_target = self.loop_supply_c + self.loop_heat_w / m_cp
        if settle or dt <= 0:
            self.loop_supply_c = supply_target.copy()
            self.loop_return_c = self.loop_supply_c + self.loop_heat_w / m_cp
        else:
            _first_order(self.loop_supply_c, supply_target, dt, SUPPLY_TAU_S)
            _first_order(self.loop_return_c, return_target, dt, RETURN_TAU_S)
        self.loop_capacity_w = np.minimum(
            t.loop_hx_rated_w, m_cp * np.maximum(t.loop_max_return_c - self.loop_supply_c, 0.0))
        self.loop_dp_kpa = self._design_dp * (self.loop_flow_lpm / t.loop_flow_lpm) ** 2

    def rack_inlet_c(self) -> F64:
        """Coolant temperature at each rack's manifold inlet (loop supply plus pipe gain)."""
        return self.loop_supply_c[self.topo.rack_loop] + 0.3

    def rack_outlet_c(self) -> F64:
        """Coolant temperature at each rack's manifold outlet."""
        t = self.topo
        racks_per_loop = np.bincount(t.rack_loop, minlength=t.n_loops).astype(np.float64)
        m_cp = np.maximum(self.loop_flow_lpm * t.loop_density_kg_per_l / 60.0, 0.05) \
            * t.loop_cp_j_per_kg_k / racks_per_loop
        heat = t.rack_liquid_fraction * self.node_power_w[t.level_slice(L_RACK)]
        return self.rack_inlet_c() + heat / m_cp[t.rack_loop]

    # ---- grid ------------------------------------------------------------------------------
    def _update_grid(self, dt: float) -> None:
        g = self.site.grid
        if dt > 0:
            a = math.exp(-dt / FREQ_TAU_S)
            f0 = float(self.site.site.frequency_nominal_hz)
            self.frequency_hz = f0 + a * (self.frequency_hz - f0) + \
                math.sqrt(1 - a * a) * FREQ_STD_HZ * float(self.rng.standard_normal())
            b = math.exp(-dt / 300.0)  # price and carbon wander on a five-minute scale
            kick = math.sqrt(1 - b * b)
            self._price_noise = b * self._price_noise + kick * 0.05 * float(self.rng.standard_normal())
            self._carbon_noise = b * self._carbon_noise + kick * 0.03 * float(self.rng.standard_normal())
        hour = self.local_hour()
        self.price_per_mwh = g.price_base_per_mwh * (1.0 + g.price_daily_swing * price_shape(hour)) \
            * (1.0 + self._price_noise)
        self.carbon_g_per_kwh = max(0.0, g.carbon_base_g_per_kwh * (1.0 - g.carbon_solar_dip * solar_shape(hour))
                                    * (1.0 + self._carbon_noise))

    def grid(self) -> GridSignals:
        """The grid's signals now, with every DR event that has been announced."""
        now = self.now_ns
        events = tuple(e for e in self.dr_events if e.state(now) is not None)
        return GridSignals(now, self.limit_w, self.frequency_hz, self.price_per_mwh,
                           self.carbon_g_per_kwh, self.site.grid.currency, events)

    # ---- views -------------------------------------------------------------------------------
    def level_power_w(self, level: int) -> F64:
        """Measured power of every node at ``level``."""
        return self.node_power_w[self.topo.level_slice(level)]

    def rack_power_w(self) -> F64:
        """Measured power of every rack."""
        return self.level_power_w(L_RACK)

    def pdu_power_w(self) -> F64:
        """Measured power of every PDU."""
        return self.level_power_w(L_PDU)
