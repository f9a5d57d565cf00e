"""The flattened array view of a site, built once per topology, for numba kernels and numpy.

Power nodes of every level live in one global index space, level by level:

    LEVELS = feed, ups, hall, row, rack, pdu, node      (node = one server / compute tray)

    node_level[n]     level of node n (index into LEVELS)
    node_parent[n]    global index of its parent (-1 for feeds)
    node_limit_w[n]   breaker / rating limit in W (inf where none is configured)
    node_gain[n]      W measured at n per W drawn by a GPU under it (conversion losses)
    node_static_w[n]  W measured at n that no GPU cap controls (CPUs, fans, switches, losses)

    gpu_member[l, g]  global index of GPU g's node at level l (shape: levels x GPUs)
    gpu_loop[g]       cooling loop of GPU g

A GPU's power p_g shows up at node n as ``gain_n * p_g``; the rest of n's draw is
``static_w``. So a limit becomes a constraint on GPU watts:

    sum(p_g for g under n) <= (limit_n - static_n) / gain_n

Gains are the largest over the GPUs under a node, which is exact for homogeneous rack
types and conservative (safe) otherwise. Loops work the same way on heat: a rack sends
``liquid_fraction`` of its electrical power into its loop.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from models.physics import COOLANTS
from models.site import PLACEMENT_RE, SiteConfig

LEVELS: Final = ("feed", "ups", "hall", "row", "rack", "pdu", "node")
L_FEED, L_UPS, L_HALL, L_ROW, L_RACK, L_PDU, L_NODE = range(len(LEVELS))
IDLE_PRIORITY: Final = 16  # GPUs without a job: below every configurable priority (0-15)

I32 = NDArray[np.int32]
F64 = NDArray[np.float64]


def _pdu_suffix(k: int, pdus: int) -> str:
    return string.ascii_lowercase[k] if pdus <= 26 else str(k + 1)


@dataclass(frozen=True, eq=False)
class Topology:
    """Arrays describing one site's power tree, cooling loops, GPUs and jobs."""

    site_name: str
    level_ids: tuple[tuple[str, ...], ...]  # ids for feed..rack; pdu/node ids are derived
    level_offset: I32  # first global index of each level, plus the total at the end
    node_level: NDArray[np.int8]
    node_parent: I32
    node_limit_w: F64
    node_gain: F64
    node_static_w: F64
    node_efficiency: F64  # conversion efficiency at the node (UPS, server PSU), else 1
    gpu_member: I32  # (levels, gpus)
    gpu_loop: I32
    gpu_min_w: F64
    gpu_max_w: F64
    gpu_idle_w: F64
    gpu_job: I32  # -1 for GPUs without a job
    gpu_priority: NDArray[np.int16]
    gpu_weight: F64
    rack_first_node: I32  # global index of the rack's first server node
    rack_nodes: I32
    rack_first_gpu: I32
    rack_gpus: I32
    rack_loop: I32
    rack_liquid_fraction: F64
    rack_overhead_w: F64
    node_base_w: F64  # per server node (indexed by server-local index)
    node_psu_efficiency: F64
    node_first_gpu: I32
    node_gpus: I32
    loop_ids: tuple[str, ...]
    loop_flow_lpm: F64
    loop_supply_c: F64
    loop_max_return_c: F64
    loop_hx_rated_w: F64
    loop_cp_j_per_kg_k: F64
    loop_density_kg_per_l: F64
    loop_pumps: I32
    loop_gain: F64
    loop_static_w: F64
    job_ids: tuple[str, ...]
    job_priority: NDArray[np.int16]
    job_kind: tuple[str, ...]
    job_checkpointable: NDArray[np.bool_]
    rack_first_pdu: I32  # global index of the rack's first PDU
    rack_pdus: I32

    # ---- sizes -------------------------------------------------------------------------
    @property
    def n_gpus(self) -> int:
        """Number of GPUs."""
        return int(self.gpu_loop.shape[0])

    @property
    def n_nodes(self) -> int:
        """Number of power nodes of all levels."""
        return int(self.level_offset[-1])

    def count(self, level: int) -> int:
        """Number of power nodes at ``level``."""
        return int(self.level_offset[level + 1] - self.level_offset[level])

    def level_slice(self, level: int) -> slice:
        """Global index range of ``level``."""
        return slice(int(self.level_offset[level]), int(self.level_offset[level + 1]))

    @property
    def n_loops(self) -> int:
        """Number of cooling loops."""
        return len(self.loop_ids)

    # ---- names -------------------------------------------------------------------------
    def node_id(self, n: int) -> str:
        """Id of global power node ``n`` (``r01/pdu-a``, ``r01/node-007`` below racks)."""
        level = int(self.node_level[n])
        local = n - int(self.level_offset[level])
        if level <= L_RACK:
            return self.level_ids[level][local]
        if level == L_PDU:
            rack = int(self.node_parent[n]) - int(self.level_offset[L_RACK])
            k = n - int(self.rack_first_pdu[rack])
            return f"{self.level_ids[L_RACK][rack]}/pdu-{_pdu_suffix(k, int(self.rack_pdus[rack]))}"
        rack = int(self.node_parent[self.node_parent[n]]) - int(self.level_offset[L_RACK])
        k = n - int(self.rack_first_node[rack])
        return f"{self.level_ids[L_RACK][rack]}/node-{k:03d}"

    def index(self, level: int, ident: str) -> int:
        """Global index of the node ``ident`` at ``level`` (feed..rack levels)."""
        return int(self.level_offset[level]) + self.level_ids[level].index(ident)

    def ids(self, level: int) -> list[str]:
        """Ids of all nodes at ``level``."""
        if level <= L_RACK:
            return list(self.level_ids[level])
        return [self.node_id(n) for n in range(*self.level_slice(level).indices(self.n_nodes))]

    # ---- derived limits ----------------------------------------------------------------
    def gpu_space_limit_w(self, margin: float = 0.0) -> F64:
        """Per node: the GPU watts it can carry, ``(limit*(1-margin) - static) / gain``."""
        return (self.node_limit_w * (1.0 - margin) - self.node_static_w) / self.node_gain

    def loop_gpu_space_capacity_w(self, capacity_w: F64, margin: float = 0.0) -> F64:
        """Per loop: the GPU watts whose heat it can remove at ``capacity_w``."""
        return (capacity_w * (1.0 - margin) - self.loop_static_w) / self.loop_gain

    def summary(self) -> dict[str, int | float]:
        """Counts and totals for printing."""
        rack_limit = self.node_limit_w[self.level_slice(L_RACK)]
        return {
            "feeds": self.count(L_FEED), "ups": self.count(L_UPS), "halls": self.count(L_HALL),
            "rows": self.count(L_ROW), "racks": self.count(L_RACK), "pdus": self.count(L_PDU),
            "nodes": self.count(L_NODE), "gpus": self.n_gpus, "loops": self.n_loops,
            "jobs": len(self.job_ids), "rack_limit_mw": float(rack_limit.sum()) / 1e6,
        }


def _index(ids: list[str]) -> dict[str, int]:
    return {x: i for i, x in enumerate(ids)}


def build_topology(site: SiteConfig) -> Topology:
    """Flatten a validated site into arrays; vectorised, so 1M GPUs build in well under 2 s."""
    feeds = [f.id for f in site.feeds]
    ups = [u.id for u in site.ups]
    halls = [h.id for h in site.halls]
    rows = [r.id for r in site.rows]
    racks = [r.id for r in site.racks]
    loops = [lp.id for lp in site.loops]
    feed_ix, ups_ix, hall_ix, row_ix, loop_ix = map(_index, (feeds, ups, halls, rows, loops))
    type_names = list(site.rack_types)
    type_ix = _index(type_names)
    types = [site.rack_types[t] for t in type_names]

    n_r = len(racks)
    rack_type = np.fromiter((type_ix[r.type] for r in site.racks), np.int32, n_r)
    rack_row = np.fromiter((row_ix[r.row] for r in site.racks), np.int32, n_r)
    rack_loop = np.fromiter((loop_ix[r.loop] for r in site.racks), np.int32, n_r)
    rack_limit_w = np.fromiter((site.rack_limit_kw(r) * 1e3 for r in site.racks), np.float64, n_r)

    def per_type(attr: str) -> F64:
        """One float per rack type; an unset optional limit is inf."""
        return np.array([getattr(t, attr) if getattr(t, attr) is not None else np.inf for t in types],
                        dtype=np.float64)

    def per_type_int(attr: str) -> I32:
        return np.array([getattr(t, attr) for t in types], dtype=np.int32)

    t_nodes = per_type_int("nodes")
    t_gpn = per_type_int("gpus_per_node")
    t_pdus = per_type_int("pdus")
    rack_nodes = t_nodes[rack_type]
    rack_pdus = t_pdus[rack_type]
    rack_gpn = t_gpn[rack_type]

    # Server nodes, PDUs and GPUs, all vectorised.
    n_nodes = int(rack_nodes.sum())
    node_rack = np.repeat(np.arange(n_r, dtype=np.int32), rack_nodes)
    rack_first_node_local = np.concatenate(([0], np.cumsum(rack_nodes)[:-1])).astype(np.int32)
    node_in_rack = np.arange(n_nodes, dtype=np.int32) - rack_first_node_local[node_rack]
    rack_first_pdu_local = np.concatenate(([0], np.cumsum(rack_pdus)[:-1])).astype(np.int32)
    nodes_per_pdu = rack_nodes // rack_pdus
    node_pdu = rack_first_pdu_local[node_rack] + node_in_rack // nodes_per_pdu[node_rack]
    n_pdus = int(rack_pdus.sum())
    pdu_rack = np.repeat(np.arange(n_r, dtype=np.int32), rack_pdus)
    node_gpus = rack_gpn[node_rack]
    n_gpus = int(node_gpus.sum())
    gpu_node = np.repeat(np.arange(n_nodes, dtype=np.int32), node_gpus)
    node_first_gpu = np.concatenate(([0], np.cumsum(node_gpus)[:-1])).astype(np.int32)
    gpu_rack = node_rack[gpu_node]

    row_hall = np.array([hall_ix[r.hall] for r in site.rows], np.int32)
    hall_ups = np.array([ups_ix[h.ups] for h in site.halls], np.int32)
    ups_feed = np.array([feed_ix[u.feed] for u in site.ups], np.int32)

    counts = [len(feeds), len(ups), len(halls), len(rows), n_r, n_pdus, n_nodes]
    offset = np.concatenate(([0], np.cumsum(counts))).astype(np.int32)
    total = int(offset[-1])

    gpu_local = np.empty((len(LEVELS), n_gpus), np.int32)
    gpu_local[L_NODE] = gpu_node
    gpu_local[L_PDU] = node_pdu[gpu_node]
    gpu_local[L_RACK] = gpu_rack
    gpu_local[L_ROW] = rack_row[gpu_rack]
    gpu_local[L_HALL] = row_hall[gpu_local[L_ROW]]
    gpu_local[L_UPS] = hall_ups[gpu_local[L_HALL]]
    gpu_local[L_FEED] = ups_feed[gpu_local[L_UPS]]
    gpu_member = gpu_local + offset[:-1, None]

    parent = np.full(total, -1, np.int32)
    parent[offset[L_UPS]:offset[L_UPS + 1]] = ups_feed + offset[L_FEED]
    parent[offset[L_HALL]:offset[L_HALL + 1]] = hall_ups + offset[L_UPS]
    parent[offset[L_ROW]:offset[L_ROW + 1]] = row_hall + offset[L_HALL]
    parent[offset[L_RACK]:offset[L_RACK + 1]] = rack_row + offset[L_ROW]
    parent[offset[L_PDU]:offset[L_PDU + 1]] = pdu_rack + offset[L_RACK]
    parent[offset[L_NODE]:offset[L_NODE + 1]] = node_pdu + offset[L_PDU]
    level = np.repeat(np.arange(len(LEVELS), dtype=np.int8), counts)

    limit = np.empty(total, np.float64)
    limit[offset[L_FEED]:offset[L_FEED + 1]] = [f.limit_kw * 1e3 for f in site.feeds]
    limit[offset[L_UPS]:offset[L_UPS + 1]] = [u.limit_kw * 1e3 for u in site.ups]
    limit[offset[L_HALL]:offset[L_HALL + 1]] = [h.limit_kw * 1e3 for h in site.halls]
    limit[offset[L_ROW]:offset[L_ROW + 1]] = [r.limit_kw * 1e3 for r in site.rows]
    limit[offset[L_RACK]:offset[L_RACK + 1]] = rack_limit_w
    limit[offset[L_PDU]:offset[L_PDU + 1]] = (per_type("pdu_limit_kw") * 1e3)[rack_type[pdu_rack]]
    limit[offset[L_NODE]:offset[L_NODE + 1]] = (per_type("node_limit_kw") * 1e3)[rack_type[node_rack]]

    efficiency = np.ones(total, np.float64)
    efficiency[offset[L_UPS]:offset[L_UPS + 1]] = [u.efficiency for u in site.ups]
    node_psu = per_type("psu_efficiency")[rack_type[node_rack]]
    efficiency[offset[L_NODE]:offset[L_NODE + 1]] = node_psu
    node_base = per_type("node_base_w")[rack_type[node_rack]]
    rack_overhead = per_type("rack_overhead_w")[rack_type]

    # Gains and static loads, bottom-up. A feed measures UPS *input*: output / efficiency.
    gain = np.zeros(total, np.float64)
    static = np.zeros(total, np.float64)
    gain[offset[L_NODE]:offset[L_NODE + 1]] = 1.0 / node_psu
    static[offset[L_NODE]:offset[L_NODE + 1]] = node_base / node_psu
    for lv in range(L_NODE, L_FEED, -1):  # child levels, bottom-up
        lo, hi = int(offset[lv]), int(offset[lv + 1])
        par = parent[lo:hi]
        # A feed measures UPS *input*: each UPS's output divided by its efficiency.
        scale = 1.0 / efficiency[lo:hi] if lv == L_UPS else 1.0
        np.maximum.at(gain, par, gain[lo:hi] * scale)
        np.add.at(static, par, static[lo:hi] * scale)
        if lv == L_PDU:  # racks are complete: add what sits in the rack but not in a node
            static[offset[L_RACK]:offset[L_RACK + 1]] += rack_overhead

    rack_lf = per_type("liquid_fraction")[rack_type]
    rack_gain = gain[offset[L_RACK]:offset[L_RACK + 1]]
    rack_static = static[offset[L_RACK]:offset[L_RACK + 1]]
    n_l = len(loops)
    loop_gain = np.zeros(n_l)
    np.maximum.at(loop_gain, rack_loop, rack_lf * rack_gain)
    loop_static = np.bincount(rack_loop, weights=rack_lf * rack_static, minlength=n_l).astype(np.float64)

    # Jobs: assign node ranges, then spread to GPUs.
    node_job = np.full(n_nodes, -1, np.int32)
    rack_ix = _index(racks)
    for j, job in enumerate(site.jobs):
        for spec in job.placement:
            m = PLACEMENT_RE.match(spec)
            assert m is not None  # checked when the site was loaded
            r = rack_ix[m["rack"]]
            first = int(m["first"]) if m["first"] is not None else 0
            last = int(m["last"]) if m["last"] is not None else int(rack_nodes[r]) - 1
            base = int(rack_first_node_local[r])
            node_job[base + first: base + last + 1] = j
    gpu_job = node_job[gpu_node]
    job_priority = np.array([j.priority for j in site.jobs], np.int16)
    job_weight = np.array([j.weight for j in site.jobs], np.float64)
    if site.jobs:
        safe = np.maximum(gpu_job, 0)
        gpu_priority = np.where(gpu_job >= 0, job_priority[safe], IDLE_PRIORITY).astype(np.int16)
        gpu_weight = np.where(gpu_job >= 0, job_weight[safe], 1.0)
    else:
        gpu_priority = np.full(n_gpus, IDLE_PRIORITY, np.int16)
        gpu_weight = np.ones(n_gpus)

    t_gpu = rack_type[gpu_rack]
    coolants = [COOLANTS[lp.coolant] for lp in site.loops]
    rack_first_gpu = np.concatenate(([0], np.cumsum(rack_nodes * rack_gpn)[:-1])).astype(np.int32)
    return Topology(
        site_name=site.site.name,
        level_ids=(tuple(feeds), tuple(ups), tuple(halls), tuple(rows), tuple(racks), (), ()),
        level_offset=offset,
        node_level=level,
        node_parent=parent,
        node_limit_w=limit,
        node_gain=gain,
        node_static_w=static,
        node_efficiency=efficiency,
        gpu_member=gpu_member,
        gpu_loop=rack_loop[gpu_rack],
        gpu_min_w=per_type("gpu_min_w")[t_gpu],
        gpu_max_w=per_type("gpu_max_w")[t_gpu],
        gpu_idle_w=per_type("gpu_idle_w")[t_gpu],
        gpu_job=gpu_job,
        gpu_priority=gpu_priority,
        gpu_weight=gpu_weight,
        rack_first_node=rack_first_node_local + offset[L_NODE],
        rack_nodes=rack_nodes.astype(np.int32),
        rack_first_gpu=rack_first_gpu,
        rack_gpus=(rack_nodes * rack_gpn).astype(np.int32),
        rack_loop=rack_loop,
        rack_liquid_fraction=rack_lf,
        rack_overhead_w=rack_overhead,
        node_base_w=node_base,
        node_psu_efficiency=node_psu,
        node_first_gpu=node_first_gpu,
        node_gpus=node_gpus.astype(np.int32),
        loop_ids=tuple(loops),
        loop_flow_lpm=np.array([lp.flow_lpm for lp in site.loops]),
        loop_supply_c=np.array([lp.supply_c for lp in site.loops]),
        loop_max_return_c=np.array([lp.max_return_c for lp in site.loops]),
        loop_hx_rated_w=np.array([lp.hx_rated_kw * 1e3 for lp in site.loops]),
        loop_cp_j_per_kg_k=np.array([c.cp_j_per_kg_k for c in coolants]),
        loop_density_kg_per_l=np.array([c.density_kg_per_l for c in coolants]),
        loop_pumps=np.array([lp.pumps for lp in site.loops], np.int32),
        loop_gain=loop_gain,
        loop_static_w=loop_static,
        job_ids=tuple(j.id for j in site.jobs),
        job_priority=job_priority,
        job_kind=tuple(j.kind for j in site.jobs),
        job_checkpointable=np.array([j.checkpointable for j in site.jobs], np.bool_),
        rack_first_pdu=rack_first_pdu_local + offset[L_PDU],
        rack_pdus=rack_pdus.astype(np.int32),
    )


def server_gpus(topo: Topology) -> dict[str, NDArray[np.intp]]:
    """Server (node-level) id -> global indices of its GPUs, in GPU order."""
    off = int(topo.level_offset[L_NODE])
    node_of_gpu = topo.gpu_member[L_NODE] - off
    order = np.argsort(node_of_gpu, kind="stable")
    bounds = np.searchsorted(node_of_gpu[order], np.arange(topo.count(L_NODE) + 1))
    return {nid: order[bounds[k]:bounds[k + 1]] for k, nid in enumerate(topo.ids(L_NODE))}
