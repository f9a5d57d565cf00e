"""The control loop: latest state -> demand -> budget -> solve -> safety -> cap plan.

``ControlLoop.step(now_ns)`` is called once per period (``[controller].period_s``) by
whoever owns the clock; it does no I/O and never sleeps. The caller applies
``plan.caps_w`` (the demo: ``sim.set_caps``; later, the actuation agents) and writes
``plan.to_batch()`` and ``plan.events()`` to the store.
"""

from __future__ import annotations

import time

import numpy as np

from controllers import safety
from controllers.allocate import solve
from controllers.budget import LoopCapacity, overhead_model, site_budget
from controllers.demand import DemandEstimator
from controllers.kernels import constraint_load
from controllers.plan import BIND_NONE, BIND_RAMP, CapPlan, Infeasible
from controllers.problem import KIND_POWER, SiteProblem
from models.clock import NS_PER_S
from models.readings import REGISTRY, SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_NODE, Topology


class ControlLoop:
    """Turns the site's state into a cap plan every period."""

    def __init__(self, site: SiteConfig, topo: Topology, state: SiteState, *,
                 registry: SeriesRegistry = REGISTRY) -> None:
        if state.topo is not topo:
            raise ValueError("state belongs to another topology")
        self.site = site
        self.topo = topo
        self.state = state
        self.registry = registry
        self.cfg = cfg = site.controller
        self.problem = p = SiteProblem.build(topo)
        n = p.structure.n
        self.demand = DemandEstimator(n, ewma_s=cfg.demand_ewma_s, peak_s=cfg.demand_peak_s,
                                      period_s=cfg.period_s, stale_after_s=cfg.stale_after_s)
        self.hysteresis = safety.Hysteresis(p.n_constraints, cfg.cap_threshold, cfg.target_threshold,
                                            cfg.release_threshold)
        self.loops = LoopCapacity(topo, cfg.period_s)
        self.overhead = overhead_model(site, topo)
        self.enforced_w = np.full(n, np.nan)  # per GPU of each consumer: the last planned cap
        self.plan_id = 0
        self._throttled_until_ns = np.zeros(n, np.int64)
        self._last_ns: int | None = None
        self._power_mask = p.con_kind == KIND_POWER

    def use_problem(self, problem: SiteProblem) -> None:
        """Plan with ``problem`` from the next step: the same site with another job assignment
        (``SiteProblem.with_jobs``); demand, hysteresis and the caps in force carry over."""
        if problem.structure.n != self.problem.structure.n or problem.n_constraints != self.problem.n_constraints:
            raise ValueError("use_problem needs the same site (only the jobs may differ)")
        self.problem = problem
        self.topo = problem.topo

    def follow(self, enforced_per_gpu_w: np.ndarray) -> None:
        """Start the ramp from the caps the agents report enforcing (per GPU, NaN unknown), where they
        are lower than this loop's own last plan: a warm standby that takes over raises no cap by
        more than the ramp over what is really in force."""
        e = np.asarray(enforced_per_gpu_w, np.float64)
        first = self.topo.node_first_gpu.astype(np.intp)
        per = np.minimum.reduceat(np.where(np.isnan(e), np.inf, e), first) if e.size else e
        if per.shape == self.enforced_w.shape:
            self.enforced_w = np.where(np.isfinite(per), np.fmin(self.enforced_w, per), self.enforced_w)

    def draw_per_gpu_w(self) -> np.ndarray:
        """Each server's measured draw per GPU, from the latest telemetry (NaN where none)."""
        return self.problem.per_gpu_draw_w(self.state.node_power_w[self.topo.level_slice(L_NODE)])

    def step(self, now_ns: int, pinned_w: np.ndarray | None = None, lag_s: float = 0.0) -> CapPlan:
        """Solve one period at site time ``now_ns``.

        ``pinned_w`` (per server, per GPU; NaN where not pinned): servers that do not follow
        their caps (``controllers.actuation.verify``) are accounted at this fixed load.
        ``lag_s``: how long caps take to hold after they are sent (the verifier's settle p95);
        a falling loop capacity is projected over the period plus this lag.
        """
        p, cfg, st = self.problem, self.cfg, self.state
        sl = self.topo.level_slice(L_NODE)
        draw = p.per_gpu_draw_w(st.node_power_w[sl])
        demand, stale = self.demand.update(draw, st.node_power_ts_ns[sl], now_ns)
        acc = safety.account(demand, draw, stale, self.enforced_w, p.floor_w, p.ceiling_w,
                             self._throttled_until_ns > now_ns)
        if pinned_w is not None:
            acc = safety.pin(acc, pinned_w)
        peak_ns = int(cfg.demand_peak_s * NS_PER_S)
        self._throttled_until_ns = np.where(acc.throttled & ~acc.stale, now_ns + peak_ns, self._throttled_until_ns)

        budget = site_budget(self.site, st, self.overhead, now_ns, margin=cfg.margin, lead_s=cfg.dr_lead_s,
                             stale_after_s=cfg.stale_after_s)
        loop_cap = self.loops.estimate(st, now_ns, stale_after_s=cfg.stale_after_s,
                                       lookahead_s=cfg.period_s + max(lag_s, 0.0)) * (1.0 - cfg.margin)
        limit = p.limits_w(budget.it_w, loop_cap)
        limit[self._power_mask] *= 1.0 - cfg.margin
        s = p.structure
        demand_load = p.real_load_w(constraint_load(s.count, acc.demand_w, s.mem, p.n_constraints))
        share = self.hysteresis.update(demand_load, limit)
        cap_gpu = p.gpu_space_w(limit * share)

        # The ramp is a bound of the solve, not a clip after it: what a rising GPU may not take
        # yet goes to the others in the same period, and the binding reasons describe the caps
        # that are applied.
        dt_s = (now_ns - self._last_ns) / NS_PER_S if self._last_ns is not None else cfg.period_s
        ramp_hi = np.where(np.isfinite(self.enforced_w), self.enforced_w + cfg.ramp_w_per_s * max(dt_s, 0.0),
                           np.inf)
        hi = np.maximum(acc.floor_w, np.minimum(acc.ceiling_w, ramp_hi))
        t0 = time.perf_counter()
        alloc = solve(s, acc.floor_w, acc.demand_w, hi, cap_gpu)
        solve_ms = (time.perf_counter() - t0) * 1e3

        caps = safety.ramp(self.enforced_w, alloc.x_w, dt_s, cfg.ramp_w_per_s)  # a guard: a no-op
        # A server over its cap keeps being asked for the cap it should hold (never a higher
        # one), while the plan accounts for what it really draws.
        caps = np.clip(np.where(acc.overdraw, np.fmin(self.enforced_w, caps), caps), p.floor_w, p.ceiling_w)
        accounted = np.where(acc.overdraw, alloc.x_w, caps)
        self.enforced_w = caps
        self._last_ns = now_ns
        self.plan_id += 1

        # Infeasible: floors over the limit in force (after margin), not over the hysteresis
        # target, and the deficit is measured against that limit.
        cap_limit = p.gpu_space_w(limit)
        infeasible = [self._infeasible(int(c), alloc.floor_load_w, cap_limit, acc.floor_w)
                      for c in alloc.infeasible(cap_limit)]
        below = caps < p.ceiling_w * (1.0 - 1e-9)
        ramped = below & (alloc.bind < 0) & (hi < acc.ceiling_w) & (caps >= hi * (1.0 - 1e-9))
        bind_consumer = np.where(below, alloc.bind, BIND_NONE)
        bind_consumer = np.where(ramped, BIND_RAMP, bind_consumer).astype(np.int32)
        load = p.real_load_w(constraint_load(s.count, accounted, s.mem, p.n_constraints))
        over_ids = tuple(self.topo.node_id(int(n)) for n in p.server[acc.overdraw][:20])
        return CapPlan(
            plan_id=self.plan_id, ts_ns=now_ns, caps_w=p.gpu_values(caps), accounted_w=p.gpu_values(accounted),
            demand_w=p.gpu_values(acc.demand_w), consumer_caps_w=caps, consumer_demand_w=acc.demand_w,
            budget_w=budget.facility_w, it_budget_w=budget.it_w,
            budget_reason=budget.reason, bind=np.repeat(bind_consumer, self.topo.node_gpus),
            constraint_names=p.constraint_names, constraint_limit_w=limit * share, constraint_load_w=load,
            loop_capacity_w=loop_cap, infeasible=infeasible, solve_ms=solve_ms, rounds=alloc.rounds,
            stale_gpus=int(s.count[acc.stale].sum()), overdraw_gpus=int(s.count[acc.overdraw].sum()),
            overdraw_ids=over_ids,
            stale_loops=tuple(lid for lid, st_ in zip(self.topo.loop_ids, self.loops.stale, strict=True) if st_),
            margin=cfg.margin, overhead=self.overhead, problem=p)

    def _infeasible(self, c: int, floor_load_w: np.ndarray, cap_gpu: np.ndarray, floor_w: np.ndarray) -> Infeasible:
        """Deficit of constraint ``c`` and the jobs to move: lowest priority, checkpointable first."""
        p = self.problem
        s = p.structure
        deficit_gpu = float(floor_load_w[c] - cap_gpu[c])
        members = np.flatnonzero((s.mem == c).any(axis=1))
        jobs: dict[int, float] = {}
        for i in members:
            j = int(p.job[i])
            if j >= 0:
                jobs[j] = jobs.get(j, 0.0) + float(s.count[i] * floor_w[i])
        topo = self.topo
        order = sorted(jobs, key=lambda j: (-int(topo.job_priority[j]), not bool(topo.job_checkpointable[j]),
                                            -jobs[j]))
        picked: list[str] = []
        freed = 0.0
        for j in order:
            if freed >= deficit_gpu:
                break
            picked.append(topo.job_ids[j])
            freed += jobs[j]
        return Infeasible(p.constraint_names[c], deficit_gpu * float(p.con_gain[c]), tuple(picked))
