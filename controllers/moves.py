"""Moving load: which jobs to move or preempt when caps alone cannot keep a site safe.

Two triggers, both read from a ``CapPlan``:

* **Local deficit** — a constraint in ``plan.infeasible`` (the floors alone exceed a
  rack/row/hall/UPS/feed limit or a loop's capacity). Jobs (or the part of a job under the
  constraint) move to free GPUs (``gpu_job == -1``) outside it, where power and cooling
  still have room after the move at every level up the tree, in the target loop and at the
  site; when nowhere fits, the job is preempted.
* **Site deficit** — a demand-response budget (or a site constraint the floors exceed):
  moving inside the site does not help, so jobs are suspended until the event ends.

Choice: lowest priority first, checkpointable before not, fewest GPUs that cover the
deficit; protected jobs (priority 0 and not checkpointable) only when nothing else covers
it, and the reason says so. Actions: ``move``; ``preempt`` (checkpoint and suspend); and
``drain`` for a job that cannot checkpoint — stop it at its next safe point and start
nothing on its nodes until ``until_ns``.

Two load bases, on purpose:

* Relief at an infeasible constraint is counted on ``plan.accounted_w`` (what the plan
  counts on; at an infeasible constraint every GPU is at its floor), moved GPUs falling to
  ``gpu_idle_w`` — the same watts ``Infeasible.deficit_w`` is measured in.
* Where load lands (and for the placement advisor and demand response) we use *demand*:
  ``max(plan.demand_w, accounted where a GPU overdraws its cap)``. Caps are upper bounds
  that the solver fills to TDP with spare power, so a headroom computed on caps would be
  zero wherever spare power was handed out. A move is accepted only if every node and loop
  whose load rises stays within ``limit * (1 - margin)`` / ``plan.loop_capacity_w`` and the
  IT load, if it rises, within ``plan.it_budget_w`` — checked with the twin's physics
  (``planned_node_load_w``), applied incrementally (the load is linear in GPU watts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from controllers.plan import CapPlan, planned_loop_heat_w, planned_node_load_w
from controllers.problem import KIND_LOOP, KIND_POWER
from models.events import EV_MOVE, Event
from models.grid import DemandResponseEvent
from models.topology import L_FEED, L_NODE, L_RACK, L_UPS, LEVELS, Topology

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Action = Literal["move", "preempt", "drain"]
DrBasis = Literal["protect", "floor", "demand", "useful"]
# "useful": a job held below this share of its demand for a whole DR event is better
# checkpointed and suspended (it keeps its progress and frees all its power).
USEFUL_SHARE = 0.75
REL_TOL = 1e-9
DR_PREFIX = "demand response"


# ---- load state: demand-basis loads, updated incrementally ---------------------------------

@dataclass(frozen=True, slots=True)
class Fit:
    """Outcome of a hypothetical change: does it fit, and how tight is it afterwards."""

    ok: bool
    min_share: float  # smallest remaining headroom / limit over every node and loop it touches
    binding: str  # the constraint with that smallest share ("rack r03", "loop cdu-2", "site")
    remaining_w: float  # that constraint's remaining headroom after the change, own watts
    it_delta_w: float  # change of IT power (sum of UPS outputs)


@dataclass(frozen=True, slots=True)
class Delta:
    """Change of load at the nodes and loops a set of GPU changes touches."""

    gpus: I64
    new_w: F64
    nodes: I64
    node_dw: F64
    loops: I64
    loop_dw: F64
    it_dw: float


def demand_basis_w(topo: Topology, plan: CapPlan) -> F64:
    """Per GPU: what it is predicted to draw (demand; measured draw where it overdraws its cap)."""
    demand = np.where(np.isfinite(plan.demand_w), plan.demand_w, plan.caps_w)
    over = plan.accounted_w > plan.caps_w * (1.0 + REL_TOL)
    return np.asarray(np.where(over, np.maximum(demand, plan.accounted_w), demand), np.float64)


class LoadState:
    """Demand-basis loads of a site under a plan; hypothetical changes are checked, then committed."""

    def __init__(self, topo: Topology, plan: CapPlan, gpu_w: F64 | None = None) -> None:
        self.topo = t = topo
        self.gpu_w = (demand_basis_w(topo, plan) if gpu_w is None else gpu_w).astype(np.float64).copy()
        self.node_w = planned_node_load_w(t, self.gpu_w)
        self.loop_w = planned_loop_heat_w(t, self.node_w)
        self.node_limit_w = t.node_limit_w * (1.0 - plan.margin)
        self.loop_cap_w = np.asarray(plan.loop_capacity_w, np.float64)
        self.it_w = float(self.node_w[t.level_slice(L_UPS)].sum())
        self.it_budget_w = float(plan.it_budget_w)
        self.free = t.gpu_job < 0
        off = t.level_offset
        # W at every level per W at a GPU: 1/PSU efficiency from the server up to the UPS
        # output, then 1/UPS efficiency at the feed (a feed carries UPS input).
        self._up = 1.0 / t.node_psu_efficiency[t.gpu_member[L_NODE] - off[L_NODE]]
        self._feed = self._up / t.node_efficiency[t.gpu_member[L_UPS]]
        self._rack_lf = t.rack_liquid_fraction

    def delta(self, gpus: NDArray[np.integer[Any]], new_w: F64) -> Delta:
        """Load change if ``gpus`` drew ``new_w`` instead of their current watts."""
        t = self.topo
        g = np.asarray(gpus, np.int64)
        dw = np.asarray(new_w, np.float64) - self.gpu_w[g]
        up = dw * self._up[g]
        nodes: list[I64] = []
        dws: list[F64] = []
        for lv in range(L_FEED, L_NODE + 1):
            u, inv = np.unique(t.gpu_member[lv][g], return_inverse=True)
            nodes.append(u.astype(np.int64))
            w = self._feed[g] * dw if lv == L_FEED else up
            dws.append(np.asarray(np.bincount(inv, weights=w, minlength=u.size), np.float64))
        rack_lo = int(t.level_offset[L_RACK])
        rack_n = nodes[L_RACK] - rack_lo
        heat = dws[L_RACK] * self._rack_lf[rack_n]
        lu, linv = np.unique(t.rack_loop[rack_n], return_inverse=True)
        return Delta(g, np.asarray(new_w, np.float64), np.concatenate(nodes), np.concatenate(dws),
                     lu.astype(np.int64), np.asarray(np.bincount(linv, weights=heat, minlength=lu.size), np.float64),
                     float(up.sum()))

    def check(self, d: Delta) -> Fit:
        """Would ``d`` keep every node and loop whose load rises within its limit, and the site within budget?"""
        t = self.topo
        new_node = self.node_w[d.nodes] + d.node_dw
        lim = self.node_limit_w[d.nodes]
        rising = d.node_dw > 0
        ok = bool(np.all(new_node[rising] <= lim[rising] * (1.0 + REL_TOL)))
        new_loop = self.loop_w[d.loops] + d.loop_dw
        cap = self.loop_cap_w[d.loops]
        rising_l = d.loop_dw > 0
        ok = ok and bool(np.all(new_loop[rising_l] <= cap[rising_l] * (1.0 + REL_TOL) + 1e-6))
        it_new = self.it_w + d.it_dw
        if d.it_dw > 0 and it_new > self.it_budget_w * (1.0 + REL_TOL):
            ok = False
        # Tightest constraint afterwards, as a share of its limit (finite limits only).
        best = (math.inf, "", math.inf)
        finite = np.isfinite(lim) & (lim > 0)
        if finite.any():
            share = (lim[finite] - new_node[finite]) / lim[finite]
            k = int(np.argmin(share))
            n = int(d.nodes[finite][k])
            best = (float(share[k]), f"{LEVELS[int(t.node_level[n])]} {t.node_id(n)}",
                    float(lim[finite][k] - new_node[finite][k]))
        if d.loops.size:
            share_l = (cap - new_loop) / np.where(cap > 0, cap, np.inf)
            k = int(np.argmin(share_l))
            if share_l[k] < best[0]:
                best = (float(share_l[k]), f"loop {t.loop_ids[int(d.loops[k])]}", float(cap[k] - new_loop[k]))
        if self.it_budget_w > 0:
            s = (self.it_budget_w - it_new) / self.it_budget_w
            if s < best[0]:
                best = (s, "site", self.it_budget_w - it_new)
        return Fit(ok, best[0], best[1], best[2], d.it_dw)

    def commit(self, d: Delta) -> None:
        """Apply ``d``."""
        self.gpu_w[d.gpus] = d.new_w
        np.add.at(self.node_w, d.nodes, d.node_dw)
        np.add.at(self.loop_w, d.loops, d.loop_dw)
        self.it_w += d.it_dw


def free_gpus_by_rack(topo: Topology, free: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Number of free GPUs in every rack."""
    rack = topo.gpu_member[L_RACK] - topo.level_offset[L_RACK]
    return np.bincount(rack[free], minlength=topo.count(L_RACK)).astype(np.int64)


def take_free(topo: Topology, free: NDArray[np.bool_], rack: int, n: int) -> NDArray[np.int64]:
    """Up to ``n`` free GPUs of ``rack``, whole free servers first (a job is placed by server)."""
    lo = int(topo.rack_first_gpu[rack])
    hi = lo + int(topo.rack_gpus[rack])
    g = np.flatnonzero(free[lo:hi]).astype(np.int64) + lo
    if g.size <= n:
        return g
    srv = topo.gpu_member[L_NODE][g]
    _, inv, cnt = np.unique(srv, return_inverse=True, return_counts=True)
    whole = cnt[inv] == topo.node_gpus[srv - topo.level_offset[L_NODE]]
    order = np.argsort(~whole, kind="stable")
    return np.sort(g[order[:n]])


# ---- recommendations -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DrDeficit:
    """A site-wide shortfall: IT watts to shed, the DR event behind it and when it ends."""

    deficit_w: float  # site IT watts (sum of UPS outputs)
    event_id: str | None = None
    until_ns: int | None = None
    basis: DrBasis = "protect"  # the load basis the deficit is measured on; relief is counted on the same


@dataclass(frozen=True, slots=True)
class MoveRecommendation:
    """One job to move, preempt or drain, and why."""

    ts_ns: int
    action: Action
    job: str
    priority: int
    checkpointable: bool
    gpus: int
    nodes: tuple[str, ...]  # server ids the action frees
    from_racks: tuple[str, ...]
    to_racks: tuple[str, ...]  # empty unless action == "move"
    to_nodes: tuple[str, ...]  # servers the moved GPUs land on (empty unless "move")
    freed_w: float  # power freed at the constraint, in the constraint's own watts
    constraint: str  # what it relieves: "rack r01", "loop cdu-1", "site"
    reason: str
    until_ns: int | None = None  # end of the demand-response event, if that is the trigger

    def to_event(self, site: str) -> Event:
        """The ``move_recommendation`` event (entity = job, value = W freed)."""
        del site  # the store tags events with the site; kept for symmetry with CapPlan.events
        return Event(self.ts_ns, EV_MOVE, "warning", "controller", self.reason, self.job,
                     {"value": self.freed_w, "gpus": float(self.gpus), "priority": float(self.priority)})

    def detail(self) -> dict[str, Any]:
        """JSON-able form for webhook payloads."""
        return {"ts_ns": self.ts_ns, "action": self.action, "job": self.job, "priority": self.priority,
                "checkpointable": self.checkpointable, "gpus": self.gpus, "nodes": list(self.nodes),
                "from_racks": list(self.from_racks), "to_racks": list(self.to_racks), "to_nodes": list(self.to_nodes),
                "freed_w": self.freed_w, "constraint": self.constraint, "reason": self.reason,
                "until_ns": self.until_ns}


def site_basis_w(topo: Topology, plan: CapPlan, basis: DrBasis) -> F64:
    """Per GPU watts a site deficit is measured on (see ``dr_deficit``)."""
    demand = demand_basis_w(topo, plan)
    floor = np.minimum(demand, topo.gpu_min_w)  # a GPU asking less than its floor draws that
    if basis == "demand":
        return demand
    keep = topo.gpu_job < 0  # jobless GPUs draw what they draw
    if basis == "useful":
        useful = np.maximum(floor, USEFUL_SHARE * demand)
        return np.asarray(np.where(keep | (topo.gpu_priority == 0), demand, useful), np.float64)
    if basis == "protect":
        keep = keep | (topo.gpu_priority == 0)
    return np.asarray(np.where(keep, demand, floor), np.float64)


def dr_deficit(topo: Topology, plan: CapPlan, dr_events: Iterable[DemandResponseEvent] = (), *,
               basis: DrBasis = "protect") -> DrDeficit | None:
    """The site-wide deficit of a plan whose budget is set by demand response, else None.

    The deficit is the IT power (sum of UPS outputs) by which ``plan.it_budget_w`` falls short
    of the load on ``basis``: ``protect`` (default) — priority-0 work at its demand, all other
    work at its floor: caps absorb the rest by cutting lower priorities first, and beyond
    that only suspending work spares priority 0; ``floor`` — only what even the floors
    exceed; ``demand`` — everything the GPUs ask for (suspend instead of capping at all);
    ``useful`` — priority 0 at its demand and every other job at ``USEFUL_SHARE`` of its
    demand: below that for the whole event, suspending a job beats crawling (the controller's
    choice for its DR recommendations).
    The event id comes from ``plan.budget_reason``; its end from the matching event
    (pass ``state.dr_events.values()``).
    """
    if not plan.budget_reason.startswith(DR_PREFIX):
        return None
    it_w = float(planned_node_load_w(topo, site_basis_w(topo, plan, basis))[topo.level_slice(L_UPS)].sum())
    deficit = it_w - plan.it_budget_w
    if deficit <= 0:
        return None
    ident = plan.budget_reason[len(DR_PREFIX):].strip()
    event_id = ident if ident and not ident.startswith("(") else None
    until = next((e.end_ns for e in dr_events if e.id == event_id), None)
    return DrDeficit(deficit, event_id, until, basis)


def _order_key(topo: Topology, j: int) -> tuple[bool, int, bool]:
    """Lowest priority first, checkpointable first; protected jobs (p0, not checkpointable) last."""
    prio = int(topo.job_priority[j])
    ckpt = bool(topo.job_checkpointable[j])
    return (prio == 0 and not ckpt, -prio, not ckpt)


class _Planner:
    """Recommendation state shared across triggers: loads, free GPUs, jobs already handled."""

    def __init__(self, topo: Topology, plan: CapPlan) -> None:
        self.topo = topo
        self.plan = plan
        self.load = LoadState(topo, plan)
        self.acc_w = np.asarray(plan.accounted_w, np.float64)
        self.handled: set[int] = set()  # jobs preempted / drained: their GPUs are no one's to take
        self.out: list[MoveRecommendation] = []
        t = topo
        self.rack_of_gpu = t.gpu_member[L_RACK] - t.level_offset[L_RACK]
        order = np.argsort(t.gpu_job, kind="stable")
        bounds = np.searchsorted(t.gpu_job[order], np.arange(len(t.job_ids) + 1))
        self.job_gpus = [np.sort(order[bounds[j]:bounds[j + 1]]).astype(np.int64) for j in range(len(t.job_ids))]

    # -- helpers --
    def _servers(self, gpus: I64) -> tuple[str, ...]:
        t = self.topo
        return tuple(t.node_id(int(n)) for n in np.unique(t.gpu_member[L_NODE][gpus]))

    def _racks(self, gpus: I64) -> tuple[str, ...]:
        return tuple(self.topo.level_ids[L_RACK][int(r)] for r in np.unique(self.rack_of_gpu[gpus]))

    def _stop_action(self, j: int) -> Action:
        return "preempt" if bool(self.topo.job_checkpointable[j]) else "drain"

    def _free_job(self, gpus: I64) -> None:
        self.load.commit(self.load.delta(gpus, self.topo.gpu_idle_w[gpus]))

    def _rec(self, action: Action, j: int, gpus: I64, to: I64 | None, freed_w: float, constraint: str,
             reason: str, until_ns: int | None = None) -> None:
        t = self.topo
        self.out.append(MoveRecommendation(
            self.plan.ts_ns, action, t.job_ids[j], int(t.job_priority[j]), bool(t.job_checkpointable[j]),
            int(gpus.size), self._servers(gpus), self._racks(gpus), self._racks(to) if to is not None else (),
            self._servers(to) if to is not None else (),
            float(freed_w), constraint, reason, until_ns))

    # -- site-wide: suspend --
    def site_deficit(self, deficit_w: float, basis_w: F64, constraint: str, why: str, until_ns: int | None) -> None:
        """Suspend jobs whose IT power (on ``basis_w``) covers ``deficit_w``; moving within the site cannot help."""
        t = self.topo
        gain = self.load._up
        relief = {j: float(((basis_w[g] - t.gpu_idle_w[g]) * gain[g]).sum())
                  for j, g in enumerate(self.job_gpus) if g.size and j not in self.handled}
        remaining = deficit_w
        groups: dict[tuple[bool, int, bool], list[int]] = {}
        for j in relief:
            if relief[j] > 0:
                groups.setdefault(_order_key(t, j), []).append(j)
        for key in sorted(groups):
            pool = groups[key]
            while pool and remaining > 0:
                # Fewest GPUs that cover what is left; if none covers it alone, the biggest first.
                covering = [j for j in pool if relief[j] >= remaining]
                j = (min(covering, key=lambda k: (self.job_gpus[k].size, t.job_ids[k])) if covering
                     else max(pool, key=lambda k: (relief[k], t.job_ids[k])))
                pool.remove(j)
                g = self.job_gpus[j]
                protected = key[0]
                note = " (priority 0, not checkpointable: nothing else covers the deficit)" if protected else ""
                until = (f" until the event ends in {(until_ns - self.plan.ts_ns) / 1e9:,.0f} s"
                         if until_ns is not None else "")
                action = self._stop_action(j)
                reason = (f"{action} {t.job_ids[j]} (priority {int(t.job_priority[j])}, {g.size} GPUs){until}: "
                          f"frees {relief[j] / 1e3:,.1f} kW of the {remaining / 1e3:,.1f} kW {why}{note}")
                self._rec(action, j, g, None, relief[j], constraint, reason, until_ns)
                self._free_job(g)
                self.handled.add(j)
                remaining -= relief[j]

    # -- local: move off a subtree --
    def local_deficit(self, c: int, deficit_w: float) -> None:
        """Move (or else preempt) jobs off the subtree of constraint ``c`` until ``deficit_w`` is freed."""
        t, p = self.topo, self.plan.problem
        kind, ref = int(p.con_kind[c]), int(p.con_ref[c])
        name = self.plan.constraint_names[c]
        if kind == KIND_POWER:
            lv = int(t.node_level[ref])
            inside = t.gpu_member[lv] == ref
            factor = self.load._feed if lv == L_FEED else self.load._up
            rack_inside = np.zeros(t.count(L_RACK), bool)
            rack_inside[np.unique(self.rack_of_gpu[inside])] = True
        elif kind == KIND_LOOP:
            inside = t.gpu_loop == ref
            factor = self.load._up * t.rack_liquid_fraction[self.rack_of_gpu]
            rack_inside = t.rack_loop == ref
        else:
            return
        # Relief per GPU at c if it were freed (accounted basis, see the module docstring).
        relief_g = np.maximum(self.acc_w - t.gpu_idle_w, 0.0) * factor
        jobs = [j for j in np.unique(t.gpu_job[inside]) if j >= 0 and int(j) not in self.handled]
        order = sorted((int(j) for j in jobs), key=lambda j: (*_order_key(t, j), t.job_ids[j]))
        remaining = deficit_w
        for j in order:
            if remaining <= 0:
                break
            g_in = self.job_gpus[j][inside[self.job_gpus[j]]]
            g_in = g_in[self.load.gpu_w[g_in] > t.gpu_idle_w[g_in]]  # not already moved away
            if not g_in.size:
                continue
            part = self._covering_part(g_in, relief_g, remaining)
            part_relief = float(relief_g[part].sum())
            protected = _order_key(t, j)[0]
            note = " (priority 0, not checkpointable: nothing else covers the deficit)" if protected else ""
            dest = self._destination(part, rack_inside)
            if dest is not None:
                reason = (f"move {part.size} GPUs of {t.job_ids[j]} (priority {int(t.job_priority[j])}) to "
                          f"{', '.join(self._racks(dest))}: frees {part_relief / 1e3:,.1f} kW of the "
                          f"{remaining / 1e3:,.1f} kW by which floors exceed {name}{note}")
                self._rec("move", j, part, dest, part_relief, name, reason)
                remaining -= part_relief
                continue
            g = self.job_gpus[j]
            all_in = g[inside[g]]
            freed = float(relief_g[all_in].sum())
            action = self._stop_action(j)
            reason = (f"{action} {t.job_ids[j]} (priority {int(t.job_priority[j])}, {g.size} GPUs): no rack outside "
                      f"{name} has the free GPUs, power and cooling for {part.size} GPUs; frees {freed / 1e3:,.1f} kW "
                      f"of the {remaining / 1e3:,.1f} kW by which floors exceed {name}{note}")
            self._rec(action, j, g, None, freed, name, reason)
            self._free_job(g)
            self.handled.add(j)
            remaining -= freed

    def _covering_part(self, g_in: I64, relief_g: F64, need_w: float) -> I64:
        """Fewest whole servers of ``g_in`` whose relief covers ``need_w`` (all of them if none does)."""
        t = self.topo
        srv = t.gpu_member[L_NODE][g_in]
        u, inv = np.unique(srv, return_inverse=True)
        per_srv = np.bincount(inv, weights=relief_g[g_in], minlength=u.size)
        order = np.argsort(-per_srv, kind="stable")
        k = int(np.searchsorted(np.cumsum(per_srv[order]), need_w * (1.0 - 1e-12))) + 1
        chosen = np.zeros(u.size, bool)
        chosen[order[:k]] = True
        return g_in[chosen[inv]]

    def _destination(self, part: I64, rack_inside: NDArray[np.bool_]) -> I64 | None:
        """Free GPUs outside the constrained subtree that take ``part`` safely; commits the move if found."""
        t, load = self.topo, self.load
        n = int(part.size)
        w = load.gpu_w[part]  # the job draws at the destination what it is predicted to draw here
        free_rack = free_gpus_by_rack(t, load.free)
        cand = np.flatnonzero((free_rack > 0) & ~rack_inside)
        if not cand.size or int(free_rack[cand].sum()) < n:
            return None
        # One rack if possible (best headroom after the move), else spread over the racks with
        # most free GPUs, keeping each addition only if the whole move still fits.
        best: tuple[float, int] | None = None
        for r in cand[free_rack[cand] >= n]:
            dest = take_free(t, load.free, int(r), n)
            fit = load.check(self._move_delta(part, dest, w))
            if fit.ok and (best is None or fit.min_share > best[0]):
                best = (fit.min_share, int(r))
        if best is not None:
            dest = take_free(t, load.free, best[1], n)
        else:
            chunks: list[I64] = []
            placed = 0
            for r in cand[np.argsort(-free_rack[cand], kind="stable")]:
                if placed >= n:
                    break
                g = take_free(t, load.free, int(r), n - placed)
                trial = np.concatenate([*chunks, g])
                if load.check(self._move_delta(part[:trial.size], trial, w[:trial.size])).ok:
                    chunks.append(g)
                    placed += g.size
            if placed < n:
                return None
            dest = np.concatenate(chunks)
        d = self._move_delta(part, dest, w)
        if not load.check(d).ok:  # pragma: no cover - the search only keeps fitting moves
            return None
        load.commit(d)
        load.free[dest] = False
        return dest

    def _move_delta(self, part: I64, dest: I64, w: F64) -> Delta:
        """Origin GPUs to idle, destination GPUs to the job's watts, in one delta."""
        gpus = np.concatenate([part, dest])
        new_w = np.concatenate([self.topo.gpu_idle_w[part], w])
        return self.load.delta(gpus, new_w)


def recommend(topo: Topology, plan: CapPlan, *, dr: DrDeficit | None = None) -> list[MoveRecommendation]:
    """Jobs to move, preempt or drain for every infeasible constraint of ``plan`` and a DR deficit."""
    pl = _Planner(topo, plan)
    site_inf = next((x for x in plan.infeasible if x.constraint == "site"), None)
    if dr is not None and dr.deficit_w > 0:
        deficit = max(dr.deficit_w, site_inf.deficit_w if site_inf else 0.0)
        label = f"demand response {dr.event_id}" if dr.event_id else "demand response"
        pl.site_deficit(deficit, site_basis_w(topo, plan, dr.basis), "site",
                        f"by which the {dr.basis} load exceeds the {label} IT budget", dr.until_ns)
    elif site_inf is not None:
        pl.site_deficit(site_inf.deficit_w, np.maximum(plan.accounted_w, topo.gpu_idle_w), "site",
                        "by which floors exceed the site IT budget", None)
    names = {n: c for c, n in enumerate(plan.constraint_names)}
    for inf in sorted(plan.infeasible, key=lambda x: -x.deficit_w):
        c = names.get(inf.constraint)
        if c is not None and inf.constraint != "site":
            pl.local_deficit(c, inf.deficit_w)
    return pl.out


# ---- dedup / hysteresis ----------------------------------------------------------------------

@dataclass
class MoveTracker:
    """Emit a recommendation when it first appears or materially changes; forget it once its
    constraint has been clear for ``clear_periods`` updates (so a flapping constraint does not
    re-emit every period)."""

    change_share: float = 0.2  # freed_w changing by more than this share is material
    clear_periods: int = 3
    _seen: dict[tuple[str, str, str], MoveRecommendation] = field(default_factory=dict)
    _clear: dict[str, int] = field(default_factory=dict)

    def update(self, recs: Iterable[MoveRecommendation]) -> list[MoveRecommendation]:
        """The recommendations of this period that are new or materially changed."""
        recs = list(recs)
        active = {r.constraint for r in recs}
        for c in {k[0] for k in self._seen} - active:
            self._clear[c] = self._clear.get(c, 0) + 1
            if self._clear[c] >= self.clear_periods:
                self._seen = {k: v for k, v in self._seen.items() if k[0] != c}
                del self._clear[c]
        out = []
        for r in recs:
            self._clear.pop(r.constraint, None)
            key = (r.constraint, r.job, r.action)
            prev = self._seen.get(key)
            if prev is None or self._material(prev, r):
                out.append(r)
                self._seen[key] = r
        return out

    def _material(self, a: MoveRecommendation, b: MoveRecommendation) -> bool:
        return (a.gpus != b.gpus or a.to_racks != b.to_racks or a.nodes != b.nodes or a.until_ns != b.until_ns
                or abs(b.freed_w - a.freed_w) > self.change_share * max(abs(a.freed_w), 1.0))


__all__ = ["DrBasis", "DrDeficit", "Fit", "LoadState", "MoveAdvisor", "MoveRecommendation", "MoveTracker",
           "demand_basis_w", "dr_deficit", "free_gpus_by_rack", "recommend", "site_basis_w", "take_free"]


class MoveAdvisor:
    """The control plane's per-period advisor: recommendations for infeasible constraints and
    demand-response shortfalls, each emitted once (``MoveTracker``) as a ``move_recommendation``
    event with its detail for the scheduler hooks."""

    def __init__(self, topo: Topology, site: str, *, basis: DrBasis = "useful") -> None:
        self.topo = topo
        self.site = site
        self.basis = basis
        self.tracker = MoveTracker()
        self.emitted = 0

    def use_topology(self, topo: Topology) -> None:
        """Recommend with ``topo`` (the same site with another job assignment) from the next period."""
        self.topo = topo

    def __call__(self, plan: CapPlan, state: Any, now_ns: int) -> list[tuple[Event, dict[str, Any] | None]]:
        """This period's new or changed recommendations."""
        dr = dr_deficit(self.topo, plan, state.dr_events.values(), basis=self.basis)
        recs = recommend(self.topo, plan, dr=dr) if (dr is not None or plan.infeasible) else []
        out: list[tuple[Event, dict[str, Any] | None]] = [(r.to_event(self.site), r.detail())
                                                         for r in self.tracker.update(recs)]
        self.emitted += len(out)
        return out
