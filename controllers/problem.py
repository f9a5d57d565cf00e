"""The site's allocation problem as arrays: consumers, constraints and their capacities.

Built once per topology (``SiteProblem.build``); each control period only recomputes the
capacities (``capacities_w``) and the per-consumer floors, demands and ceilings.

Consumers are server nodes: their GPUs share a job (placement is by node), so a priority
and a weight, every constraint, and — telemetry being per server — one demand. Solving
per server rather than per GPU is exact and 4x smaller on 4-GPU trays; ``gpu_caps_w``
spreads the per-GPU result back to every GPU.

Constraints (compact index): 0 is the site (IT budget on the sum of UPS outputs), then
every power node with a finite limit (feed..server), then every cooling loop. Capacities
are GPU watts: ``(limit * share - static) / gain`` (see ``models.topology``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from controllers.allocate import Structure
from models.topology import L_NODE, L_UPS, LEVELS, Topology

F64 = NDArray[np.float64]
I32 = NDArray[np.int32]

KIND_SITE, KIND_POWER, KIND_LOOP = 0, 1, 2


@dataclass(frozen=True, eq=False)
class SiteProblem:
    """Consumers and constraints of one topology."""

    topo: Topology
    structure: Structure
    server: I32  # global power-node index of each consumer (a server)
    first_gpu: I32
    count: F64  # GPUs per consumer
    floor_w: F64  # per GPU
    ceiling_w: F64
    job: I32
    psu_efficiency: F64
    base_w: F64  # server base load (CPUs, memory, fans), W at the GPU side of the PSU
    con_kind: NDArray[np.int8]
    con_ref: I32  # power node (global index) or loop index; -1 for the site
    con_gain: F64
    con_static_w: F64
    con_limit_w: F64  # static limits (power nodes); NaN for the site and loops
    _cache: dict[str, object] = field(default_factory=dict)

    @property
    def n_constraints(self) -> int:
        """Number of constraints."""
        return int(self.con_kind.shape[0])

    @classmethod
    def build(cls, topo: Topology) -> SiteProblem:
        """Flatten ``topo`` into the solver's arrays."""
        t = topo
        sl = t.level_slice(L_NODE)
        n_srv = t.count(L_NODE)
        first = t.node_first_gpu.astype(np.int32)
        floor = np.maximum.reduceat(t.gpu_min_w, first)
        ceiling = np.minimum.reduceat(t.gpu_max_w, first)
        finite = np.isfinite(t.node_limit_w)
        power_nodes = np.flatnonzero(finite).astype(np.int32)
        compact = np.full(t.n_nodes, -1, np.int32)
        compact[power_nodes] = 1 + np.arange(power_nodes.shape[0], dtype=np.int32)
        n_power = power_nodes.shape[0]
        mem = np.empty((n_srv, len(LEVELS) + 2), np.int32)
        mem[:, 0] = 0
        mem[:, 1:1 + len(LEVELS)] = compact[t.gpu_member[:, first]].T
        mem[:, -1] = 1 + n_power + t.gpu_loop[first]
        m = 1 + n_power + t.n_loops
        ups = t.level_slice(L_UPS)
        kind = np.concatenate(([KIND_SITE], np.full(n_power, KIND_POWER),
                               np.full(t.n_loops, KIND_LOOP))).astype(np.int8)
        ref = np.concatenate(([-1], power_nodes, np.arange(t.n_loops))).astype(np.int32)
        gain = np.concatenate(([t.node_gain[ups].max()], t.node_gain[power_nodes], t.loop_gain))
        static = np.concatenate(([t.node_static_w[ups].sum()], t.node_static_w[power_nodes], t.loop_static_w))
        limit = np.concatenate(([np.nan], t.node_limit_w[power_nodes], np.full(t.n_loops, np.nan)))
        count = t.node_gpus.astype(np.float64)
        structure = Structure.build(count, t.gpu_weight[first], t.gpu_priority[first], mem, m)
        return cls(t, structure, (np.arange(n_srv) + sl.start).astype(np.int32), first, count, floor, ceiling,
                   t.gpu_job[first].astype(np.int32), t.node_psu_efficiency.astype(np.float64),
                   t.node_base_w.astype(np.float64), kind, ref, gain.astype(np.float64),
                   static.astype(np.float64), limit.astype(np.float64))

    def with_jobs(self, topo: Topology) -> SiteProblem:
        """This problem for ``topo``, the same site with another job assignment (``models.jobs.with_jobs``):
        the constraints and membership stay, priorities, weights and jobs follow (``Structure.regroup``).
        Costs tens of milliseconds at 1M GPUs where ``build`` costs most of a second."""
        if topo.n_gpus != self.topo.n_gpus or topo.level_offset is not self.topo.level_offset:
            raise ValueError("with_jobs needs the same site (only the jobs may differ)")
        first = self.first_gpu
        structure = self.structure.regroup(topo.gpu_weight[first], topo.gpu_priority[first])
        # Series ids (``CapPlan.to_batch``) do not depend on the jobs: keep them, except the per-job ones.
        cache: dict[str, object] = {}
        for k, v in self._cache.items():
            if k.startswith("caps-series/") and isinstance(v, dict):
                cache[k] = {key: ids for key, ids in v.items() if key[0] != "job"}
        out = replace(self, topo=topo, structure=structure, job=topo.gpu_job[first].astype(np.int32), _cache=cache)
        if "constraint_names" in self.__dict__:
            out.__dict__["constraint_names"] = self.constraint_names
        return out

    # ---- names ---------------------------------------------------------------------------
    def constraint_name(self, c: int) -> str:
        """``site``, ``<level> <id>`` or ``loop <id>``."""
        kind = int(self.con_kind[c])
        if kind == KIND_SITE:
            return "site"
        ref = int(self.con_ref[c])
        if kind == KIND_LOOP:
            return f"loop {self.topo.loop_ids[ref]}"
        return f"{LEVELS[int(self.topo.node_level[ref])]} {self.topo.node_id(ref)}"

    @cached_property
    def constraint_names(self) -> tuple[str, ...]:
        """Names of all constraints, by compact index."""
        return tuple(self.constraint_name(c) for c in range(self.n_constraints))

    def entity(self, c: int) -> tuple[str, str]:
        """``(level, id)`` tags of constraint ``c`` (level is ``site``, a power level or ``loop``)."""
        kind = int(self.con_kind[c])
        ref = int(self.con_ref[c])
        if kind == KIND_SITE:
            return "site", self.topo.site_name
        if kind == KIND_LOOP:
            return "loop", self.topo.loop_ids[ref]
        return LEVELS[int(self.topo.node_level[ref])], self.topo.node_id(ref)

    # ---- capacities ----------------------------------------------------------------------
    def limits_w(self, it_budget_w: float, loop_capacity_w: F64) -> F64:
        """Per constraint, the limit in its own watts (site: IT budget; loops: heat capacity)."""
        lim = self.con_limit_w.copy()
        lim[0] = it_budget_w
        lim[self.con_kind == KIND_LOOP] = loop_capacity_w
        return lim

    def gpu_space_w(self, limit_w: F64) -> F64:
        """Convert limits in the constraints' own watts to GPU watts."""
        return (limit_w - self.con_static_w) / self.con_gain

    def real_load_w(self, gpu_load_w: F64) -> F64:
        """Convert GPU-watt loads to each constraint's own watts."""
        return self.con_gain * gpu_load_w + self.con_static_w

    # ---- GPUs ----------------------------------------------------------------------------
    def gpu_values(self, per_consumer: F64) -> F64:
        """Spread a per-GPU value of each consumer to every GPU."""
        return np.repeat(per_consumer, self.topo.node_gpus)

    def per_gpu_draw_w(self, server_power_w: F64) -> F64:
        """Average GPU draw of each server from its measured input power."""
        return (server_power_w * self.psu_efficiency - self.base_w) / self.count
