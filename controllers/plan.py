"""A cap plan: the per-GPU caps of one control period, why, and how it is reported.

``CapPlan.violations`` re-derives every planned load from the per-GPU caps with the same
physics as the twin (server = (GPUs + base) / PSU efficiency, sums up the tree, rack
overhead, feed = UPS output / efficiency, facility = IT + overhead(IT), loop heat = liquid
share of rack power) — independently of the solver's gains and GPU-space capacities — and
lists every limit the plan would exceed.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from functools import cached_property
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from controllers.problem import KIND_LOOP, KIND_POWER, SiteProblem
from models.events import EV_INFEASIBLE, Event, EventKind
from models.physics import OverheadModel
from models.readings import REGISTRY, ReadingBatch, SeriesRegistry
from models.topology import L_FEED, L_NODE, L_RACK, L_UPS, LEVELS, Topology

F64 = NDArray[np.float64]
I32 = NDArray[np.int32]
REL_TOL = 1e-7
BIND_NONE = -1  # ``CapPlan.bind``: nothing holds the GPU below its ceiling
BIND_RAMP = -2  # ... its cap is rising at the ramp rate (``[controller].ramp_w_per_s``)
RAMP = "ramp"  # the reason's name where binding constraints are listed


@dataclass(frozen=True, slots=True)
class Infeasible:
    """A constraint that the floors alone exceed, and the jobs to move to relieve it."""

    constraint: str
    deficit_w: float  # in the constraint's own watts
    jobs: tuple[str, ...]  # lowest priority first, checkpointable first


def planned_node_load_w(topo: Topology, gpu_w: F64) -> F64:
    """Power at every node of the tree if every GPU draws ``gpu_w`` (the twin's physics)."""
    t = topo
    off = t.level_offset
    p = np.zeros(t.n_nodes)
    servers = np.bincount(t.gpu_member[L_NODE] - off[L_NODE], weights=gpu_w,
                          minlength=t.count(L_NODE)).astype(np.float64)
    p[off[L_NODE]:off[L_NODE + 1]] = (servers + t.node_base_w) / t.node_psu_efficiency
    for lv in range(L_NODE, L_FEED, -1):
        child = p[off[lv]:off[lv + 1]]
        if lv == L_UPS:
            child = child / t.node_efficiency[off[lv]:off[lv + 1]]
        parent = np.bincount(t.node_parent[off[lv]:off[lv + 1]] - off[lv - 1], weights=child,
                             minlength=t.count(lv - 1)).astype(np.float64)
        if lv - 1 == L_RACK:
            parent = parent + t.rack_overhead_w
        p[off[lv - 1]:off[lv]] = parent
    return p


def planned_loop_heat_w(topo: Topology, node_load_w: F64) -> F64:
    """Heat every loop must remove at the planned rack power."""
    rack = node_load_w[topo.level_slice(L_RACK)]
    return np.bincount(topo.rack_loop, weights=topo.rack_liquid_fraction * rack,
                       minlength=topo.n_loops).astype(np.float64)


def _sum_by(group: NDArray[np.integer], weights: F64, n: int) -> F64:
    """``weights`` summed per group (``n`` groups)."""
    return np.bincount(group, weights, minlength=n).astype(np.float64, copy=False)


def _fields(sums: dict[str, F64]) -> dict[str, F64]:
    """``cap_w``, ``demand_w``, ``cut_w`` and ``gpus_capped`` of groups from their sums."""
    return {"cap_w": sums["cap_w"], "demand_w": sums["demand_w"],
            "cut_w": np.maximum(sums["demand_w"] - sums["cap_w"], 0.0),
            "gpus_capped": sums["gpus_capped"].astype(np.float64)}


def _rack_groups(p: SiteProblem, topo: Topology) -> dict[str, NDArray[np.intp]]:
    """Each consumer's rack (``rack``) and each rack's feed, UPS, hall and row (level-local); kept with
    the problem for its own topology."""
    hit = p._cache.get("rack-groups") if topo is p.topo else None
    if isinstance(hit, dict):
        return hit
    off = topo.level_offset
    rack_gpu = topo.rack_first_gpu.astype(np.intp)
    out = {"rack": (topo.gpu_member[L_RACK][p.first_gpu] - off[L_RACK]).astype(np.intp)}
    for lv in range(L_FEED, L_RACK):
        out[LEVELS[lv]] = (topo.gpu_member[lv][rack_gpu] - off[lv]).astype(np.intp)
    if topo is p.topo:
        p._cache["rack-groups"] = out
    return out


@dataclass(frozen=True, eq=False)
class CapPlan:
    """What to apply for one period (``caps_w`` per GPU) and everything needed to explain it."""

    plan_id: int
    ts_ns: int
    caps_w: F64  # per GPU: the cap to apply
    accounted_w: F64  # per GPU: the load the plan counts on (caps; measured draw where a cap did not take)
    demand_w: F64  # per GPU: predicted demand
    consumer_caps_w: F64  # per server: the per-GPU cap (caps_w before spreading)
    consumer_demand_w: F64
    budget_w: float  # facility power allowed
    it_budget_w: float
    budget_reason: str
    bind: I32  # per GPU: index into constraint_names of what holds its cap; BIND_NONE, BIND_RAMP
    constraint_names: tuple[str, ...]
    constraint_limit_w: F64  # per constraint, own watts, after margin and hysteresis share
    constraint_load_w: F64  # per constraint, own watts, as planned
    loop_capacity_w: F64  # loop capacity the plan relied on (after margin)
    infeasible: list[Infeasible]
    solve_ms: float
    rounds: int
    stale_gpus: int
    overdraw_gpus: int
    overdraw_ids: tuple[str, ...]  # servers drawing over their cap
    stale_loops: tuple[str, ...]  # loops whose capacity is the last known value
    margin: float
    overhead: OverheadModel
    problem: SiteProblem

    # ---- checks ---------------------------------------------------------------------------
    def violations(self, topo: Topology, of: Literal["accounted", "caps"] = "accounted") -> list[str]:
        """Every limit the planned load would exceed, re-derived from the per-GPU watts.

        ``accounted`` (default): the load the plan counts on, with GPUs that have not yet
        followed their caps at their measured draw. ``caps``: what the plan grants alone.
        """
        out: list[str] = []
        gpu_w = self.accounted_w if of == "accounted" else self.caps_w
        if gpu_w.shape != (topo.n_gpus,):
            return [f"plan has {gpu_w.shape[0]} GPUs, topology {topo.n_gpus}"]
        load = self._accounted_load if of == "accounted" and topo is self.problem.topo else \
            planned_node_load_w(topo, gpu_w)
        limit = topo.node_limit_w
        over = np.flatnonzero(load > limit * (1.0 + REL_TOL))
        for n in over:
            out.append(f"{LEVELS[int(topo.node_level[n])]} {topo.node_id(int(n))}: planned "
                       f"{load[n] / 1e3:,.1f} kW > limit {limit[n] / 1e3:,.1f} kW")
        it_w = float(load[topo.level_slice(L_UPS)].sum())
        facility = self.overhead.facility_w(it_w)
        if facility > self.budget_w * (1.0 + REL_TOL):
            out.append(f"site: planned facility {facility / 1e3:,.1f} kW > budget {self.budget_w / 1e3:,.1f} kW")
        heat = planned_loop_heat_w(topo, load)
        for k in np.flatnonzero(heat > self.loop_capacity_w * (1.0 + REL_TOL) + 1e-6):
            out.append(f"loop {topo.loop_ids[k]}: planned heat {heat[k] / 1e3:,.1f} kW > capacity "
                       f"{self.loop_capacity_w[k] / 1e3:,.1f} kW")
        low = np.flatnonzero(self.caps_w < topo.gpu_min_w * (1.0 - REL_TOL))
        if low.size:
            out.append(f"{low.size} GPUs capped below their floor")
        return out

    # ---- derived views --------------------------------------------------------------------
    @property
    def demand_facility_w(self) -> float:
        """Facility power if every GPU drew its predicted demand (the twin's physics)."""
        topo = self.problem.topo
        load = planned_node_load_w(topo, self.demand_w)
        return float(self.overhead.facility_w(float(load[topo.level_slice(L_UPS)].sum())))

    @property
    def gpus_capped(self) -> int:
        """GPUs whose cap is below their predicted demand."""
        capped = self.consumer_caps_w < self.consumer_demand_w * (1.0 - 1e-9)
        return int(self.problem.count[capped].sum())

    @property
    def ramp_gpus(self) -> int:
        """GPUs held below demand and ceiling only by the ramp of their rising cap."""
        return int(np.count_nonzero(self.bind == BIND_RAMP))

    def binding_constraints(self) -> dict[int, int]:
        """Constraint index -> number of GPUs it holds."""
        return dict(self._binding)

    @cached_property
    def _binding(self) -> dict[int, int]:
        # Three callers a period (store batch, events, live view): counted once, over the
        # constraints, instead of np.unique sorting every GPU's index each time.
        b = self.bind[self.bind >= 0]
        if not b.size:
            return {}
        n = np.bincount(b, minlength=len(self.constraint_names))
        return {int(i): int(n[i]) for i in np.flatnonzero(n)}

    def _groups(self, group: NDArray[np.integer], n: int) -> dict[str, F64]:
        """Sums per group of servers (``group`` per consumer), weighted by their GPU counts."""
        w = self._consumer_sums
        return _fields({k: _sum_by(group, v, n) for k, v in w.items()})

    @cached_property
    def _consumer_sums(self) -> dict[str, F64]:
        # Per consumer, what ``_groups`` sums: caps and demand of all its GPUs, GPUs capped.
        p = self.problem
        capped = (self.consumer_caps_w < self.consumer_demand_w * (1.0 - 1e-9)) * p.count
        return {"cap_w": self.consumer_caps_w * p.count, "demand_w": self.consumer_demand_w * p.count,
                "gpus_capped": capped}

    def _entities(self, topo: Topology) -> list[tuple[str, list[str], dict[str, F64]]]:
        """``(level, ids, fields)`` for site, feed..rack, loops and jobs."""
        return self._entity_table if topo is self.problem.topo else self._entities_of(topo)

    @cached_property
    def _entity_table(self) -> list[tuple[str, list[str], dict[str, F64]]]:
        # The store batch and the live view both ask every period: derive once per plan.
        return self._entities_of(self.problem.topo)

    @cached_property
    def _accounted_load(self) -> F64:
        # The accounted load at every node: checked (``violations``) and reported (``_entities``).
        return planned_node_load_w(self.problem.topo, self.accounted_w)

    def _entities_of(self, topo: Topology) -> list[tuple[str, list[str], dict[str, F64]]]:
        load = self._accounted_load if topo is self.problem.topo else planned_node_load_w(topo, self.accounted_w)
        bound_nodes = np.zeros(topo.n_nodes)
        bound_loops = np.zeros(topo.n_loops)
        site_bound = 0.0
        p = self.problem
        for c in self.binding_constraints():
            kind, ref = int(p.con_kind[c]), int(p.con_ref[c])
            if kind == KIND_POWER:
                bound_nodes[ref] = 1.0
            elif kind == KIND_LOOP:
                bound_loops[ref] = 1.0
            else:
                site_bound = 1.0
        out: list[tuple[str, list[str], dict[str, F64]]] = []
        it_w = float(load[topo.level_slice(L_UPS)].sum())
        # Every server's sums go to its rack once; feeds, UPSes, halls, rows and loops add up their
        # racks (a rack has one parent at every level and one loop), not a pass over every server.
        grp = _rack_groups(p, topo)
        n_r = topo.count(L_RACK)
        rack = {k: _sum_by(grp["rack"], v, n_r) for k, v in self._consumer_sums.items()}
        site = _fields({k: np.array([v.sum()]) for k, v in rack.items()})
        site.update(load_w=np.array([it_w]), limit_w=np.array([self.it_budget_w]),
                    headroom_w=np.array([self.it_budget_w - it_w]), binding=np.array([site_bound]),
                    solve_ms=np.array([self.solve_ms]))
        out.append(("site", [topo.site_name], site))
        lim_in_force = topo.node_limit_w * (1.0 - self.margin)
        for lv in range(L_FEED, L_RACK + 1):
            sl = topo.level_slice(lv)
            if lv == L_RACK:
                f = _fields(dict(rack))
            else:
                up = grp[LEVELS[lv]]
                f = _fields({k: _sum_by(up, v, topo.count(lv)) for k, v in rack.items()})
            lim = lim_in_force[sl]
            f.update(load_w=load[sl], limit_w=lim, headroom_w=lim - load[sl], binding=bound_nodes[sl])
            out.append((LEVELS[lv], list(topo.level_ids[lv]), f))
        heat = planned_loop_heat_w(topo, load)
        f = _fields({k: _sum_by(topo.rack_loop, v, topo.n_loops) for k, v in rack.items()})
        f.update(load_w=heat, limit_w=self.loop_capacity_w, headroom_w=self.loop_capacity_w - heat,
                 binding=bound_loops)
        out.append(("loop", list(topo.loop_ids), f))
        if topo.job_ids:
            f = self._groups(np.where(p.job >= 0, p.job, len(topo.job_ids)), len(topo.job_ids) + 1)
            out.append(("job", list(topo.job_ids), {k: v[:-1] for k, v in f.items()}))
        return out

    # ---- outputs ---------------------------------------------------------------------------
    def to_batch(self, site: str, registry: SeriesRegistry = REGISTRY) -> ReadingBatch:
        """``caps.*`` readings for the site, every level feed..rack, every loop and job."""
        topo = self.problem.topo
        # Interning ~10 series per entity costs more than the solve at 1M GPUs: once per site.
        cache = self.problem._cache.setdefault(f"caps-series/{site}/{id(registry)}", {})
        assert isinstance(cache, dict)
        series: list[NDArray[np.int32]] = []
        values: list[F64] = []
        for level, ids, fields in self._entities(topo):
            for name, vals in fields.items():
                sids = cache.get((level, name))
                if sids is None:
                    if level == "job":  # live jobs come and go: intern each job's series once, not per table
                        per = cache.setdefault(("job-sids",), {})
                        for i in ids:
                            if (name, i) not in per:
                                per[(name, i)] = registry.id(f"caps.{name}", site=site, level=level, id=i)
                        sids = np.fromiter((per[(name, i)] for i in ids), np.int32, len(ids))
                    else:
                        sids = np.fromiter((registry.id(f"caps.{name}", site=site, level=level, id=i) for i in ids),
                                           np.int32, len(ids))
                    cache[(level, name)] = sids
                series.append(sids)
                values.append(np.asarray(vals, np.float64)[: len(ids)])
        return ReadingBatch.of(self.ts_ns, np.concatenate(series), np.concatenate(values), 0, registry)

    def events(self, site: str) -> list[Event]:
        """One event per decision, each with its reason (the binding constraint)."""
        ev = [Event(self.ts_ns, EventKind.CAP_PLAN, "info", "controller",
                    f"plan {self.plan_id}: budget {self.budget_w / 1e3:,.0f} kW facility "
                    f"({self.budget_reason}), IT {self.it_budget_w / 1e3:,.0f} kW; "
                    f"{self.gpus_capped} GPUs capped below demand", site,
                    {"budget_w": self.budget_w, "it_budget_w": self.it_budget_w,
                     "gpus_capped": float(self.gpus_capped), "solve_ms": self.solve_ms})]
        for c, n in sorted(self.binding_constraints().items(), key=lambda kv: -kv[1]):
            name = self.constraint_names[c]
            ev.append(Event(self.ts_ns, EventKind.CAP_BINDING, "info", "controller",
                            f"{name} holds {n} GPUs: planned {self.constraint_load_w[c] / 1e3:,.1f} kW of "
                            f"{self.constraint_limit_w[c] / 1e3:,.1f} kW", name,
                            {"gpus": float(n), "load_w": float(self.constraint_load_w[c]),
                             "limit_w": float(self.constraint_limit_w[c])}))
        for inf in self.infeasible:
            ev.append(Event(self.ts_ns, EV_INFEASIBLE, "error", "controller",
                            f"{inf.constraint}: floors exceed the limit by {inf.deficit_w / 1e3:,.1f} kW; "
                            f"move {', '.join(inf.jobs) or 'nothing movable'}", inf.constraint,
                            {"value": inf.deficit_w, "deficit_w": inf.deficit_w}))
        if self.overdraw_gpus:
            ev.append(Event(self.ts_ns, EventKind.CAP_OVERDRAW, "warning", "controller",
                            f"{self.overdraw_gpus} GPUs draw over their cap (accounted at measured draw): "
                            f"{', '.join(self.overdraw_ids[:5])}{' ...' if len(self.overdraw_ids) > 5 else ''}",
                            site, {"gpus": float(self.overdraw_gpus)}))
        if self.stale_gpus:
            ev.append(Event(self.ts_ns, EventKind.TELEMETRY_STALE, "warning", "controller",
                            f"{self.stale_gpus} GPUs without fresh telemetry, accounted at their last cap",
                            site, {"gpus": float(self.stale_gpus)}))
        for lid in self.stale_loops:
            ev.append(Event(self.ts_ns, EventKind.TELEMETRY_STALE, "warning", "controller",
                            f"loop {lid}: no fresh capacity, flow or supply temperature; planning on "
                            f"{self.loop_capacity_w[self.problem.topo.loop_ids.index(lid)] / 1e3:,.0f} kW",
                            lid))
        return ev

    def summary(self) -> PlanSummary:
        """What the plan decided, per rack, loop and job, and why (for views, ``plan --json``, operators)."""
        topo = self.problem.topo
        ents = {level: (ids, f) for level, ids, f in self._entities(topo)}
        r_ids, r = ents["rack"]
        l_ids, lp = ents["loop"]
        jobs: list[JobCaps] = []
        if "job" in ents:
            j_ids, jf = ents["job"]
            gpus = np.bincount(np.where(topo.gpu_job >= 0, topo.gpu_job, len(j_ids)), minlength=len(j_ids) + 1)
            for jid, pri, n, cap, dem, cut, capped in zip(
                    j_ids, topo.job_priority.tolist(), gpus.tolist(), jf["cap_w"].tolist(), jf["demand_w"].tolist(),
                    jf["cut_w"].tolist(), jf["gpus_capped"].tolist(), strict=False):
                jobs.append(JobCaps(jid, int(pri), int(n), cap / n if n else 0.0, dem, cut, int(capped)))
        return PlanSummary(
            self.plan_id, self.ts_ns, self.budget_w, self.it_budget_w, self.budget_reason, self.gpus_capped,
            self.solve_ms,
            [RackCaps(*row) for row in zip(r_ids, *(np.asarray(r[f], np.float64).tolist() for f in
                                                   ("cap_w", "demand_w", "load_w", "limit_w", "headroom_w")),
                                           strict=True)],
            [LoopHeat(i, ld, lim) for i, ld, lim in zip(l_ids, np.asarray(lp["load_w"], np.float64).tolist(),
                                                         np.asarray(lp["limit_w"], np.float64).tolist(),
                                                         strict=True)],
            jobs,
            {**{self.constraint_names[c]: n for c, n in self.binding_constraints().items()},
             **({RAMP: self.ramp_gpus} if self.ramp_gpus else {})},
            [dict(constraint=x.constraint, deficit_w=x.deficit_w, jobs=list(x.jobs)) for x in self.infeasible])


@dataclass(frozen=True, slots=True)
class RackCaps:
    """One rack in a plan summary."""

    id: str
    cap_w: float  # sum of its GPUs' caps
    demand_w: float  # sum of their predicted demand
    load_w: float  # the planned load at the rack (its own watts: GPUs, bases, PSU losses, overhead)
    limit_w: float  # the limit in force (after margin)
    headroom_w: float


@dataclass(frozen=True, slots=True)
class LoopHeat:
    """One cooling loop in a plan summary."""

    id: str
    load_w: float  # heat planned into the loop
    capacity_w: float  # capacity relied on (after margin and look-ahead)


@dataclass(frozen=True, slots=True)
class JobCaps:
    """One job in a plan summary: its caps and what they cost it."""

    id: str
    priority: int
    gpus: int
    cap_per_gpu_w: float  # mean cap per GPU
    demand_w: float  # predicted demand, all its GPUs
    cut_w: float  # demand not granted
    gpus_capped: int


@dataclass(frozen=True)
class PlanSummary:
    """A plan's decisions in small form: budget and reason, per rack, loop and job, binding and infeasible."""

    plan_id: int
    ts_ns: int
    budget_w: float
    it_budget_w: float
    budget_reason: str
    gpus_capped: int
    solve_ms: float
    racks: list[RackCaps]
    loops: list[LoopHeat]
    jobs: list[JobCaps]
    binding: dict[str, int]  # constraint (or "ramp") -> GPUs it holds
    infeasible: list[dict[str, Any]]  # constraint, deficit_w, jobs to move

    def to_json(self, max_racks: int | None = None, max_jobs: int | None = None) -> dict[str, Any]:
        """As JSON-able data; ``max_racks``: only the racks with the least headroom, ``max_jobs``: only the
        jobs that lose the most to caps (site order kept)."""
        racks = self.racks
        if max_racks is not None and len(racks) > max_racks:
            keep = {r.id for r in sorted(racks, key=lambda r: r.headroom_w)[:max_racks]}
            racks = [r for r in racks if r.id in keep]
        jobs = self.jobs
        if max_jobs is not None and len(jobs) > max_jobs:
            keep = {j.id for j in sorted(jobs, key=lambda j: -j.cut_w)[:max_jobs]}
            jobs = [j for j in jobs if j.id in keep]
        # Field by field (``asdict`` would deep-copy every rack before the cut: most of a period at 1M GPUs).
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclass_fields(self)}
        d["racks"] = [_row(r) for r in racks]
        d["loops"] = [_row(lp) for lp in self.loops]
        d["jobs"] = [_row(j) for j in jobs]
        d["binding"] = dict(self.binding)
        d["infeasible"] = [{**x, "jobs": list(x["jobs"])} for x in self.infeasible]
        d["jobs_total"] = len(self.jobs)
        return d


def _row(obj: Any) -> dict[str, Any]:
    """A flat slotted dataclass row as a dict (what ``asdict`` gives, without its deep copies)."""
    return {name: getattr(obj, name) for name in obj.__slots__}
