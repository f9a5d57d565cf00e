"""Where each node's and GPU's caps sit in a rack's cap command: built once from the topology.

A rack's command carries one cap per GPU of the rack, in site-file order (nodes in rack
order, GPUs in node order); the controller and every agent derive that order from the
same site file. ``digest`` names the order (node ids and GPU counts): a command whose
digest differs from the agent's is refused, so an agent with another site file never
applies caps meant for other GPUs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from models.topology import L_NODE, L_RACK, Topology

I64 = NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class RackLayout:
    """One rack's nodes and GPUs, as indices into the site's server and GPU arrays."""

    rack: str
    index: int  # rack index (0-based among racks)
    nodes: tuple[str, ...]  # node ids, rack order
    node0: int  # server-local index of the rack's first node (nodes are contiguous)
    gpu0: int  # global index of the rack's first GPU (GPUs are contiguous)
    node_gpus: I64  # GPUs per node
    node_first: I64  # per node: offset of its first GPU within the rack's GPU vector
    min_w: NDArray[np.float64]  # per rack GPU: the lowest cap the board accepts
    max_w: NDArray[np.float64]
    digest: str

    @property
    def n_nodes(self) -> int:
        """Nodes in the rack."""
        return len(self.nodes)

    @cached_property
    def n_gpus(self) -> int:
        """GPUs in the rack."""
        return int(self.node_gpus.sum())

    @cached_property
    def every_node(self) -> list[int]:
        """Every rack-local node index, in rack order (what a rack agent's status lists)."""
        return list(range(len(self.nodes)))

    def gpu_slice(self, k: int) -> slice:
        """The rack-local GPU range of node ``k`` (rack-local node index)."""
        a = int(self.node_first[k])
        return slice(a, a + int(self.node_gpus[k]))

    def node_local(self, node: str) -> int:
        """Rack-local index of ``node``; KeyError if it is not in this rack."""
        try:
            return self.nodes.index(node)
        except ValueError:
            raise KeyError(node) from None


def layout_digest(nodes: tuple[str, ...], gpus: I64) -> str:
    """16 hex digits naming a rack's node order and GPU counts."""
    h = hashlib.sha256()
    for n, g in zip(nodes, gpus.tolist(), strict=True):
        h.update(f"{n}:{g}\n".encode())
    return h.hexdigest()[:16]


class Layouts:
    """Every rack's layout, and which rack a node belongs to."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        off = int(topo.level_offset[L_NODE])
        rack_ids = topo.ids(L_RACK)
        node_ids = topo.ids(L_NODE)
        self.racks: dict[str, RackLayout] = {}
        self.rack_of_node: dict[str, str] = {}
        for r, rid in enumerate(rack_ids):
            n0 = int(topo.rack_first_node[r]) - off
            nn = int(topo.rack_nodes[r])
            g0 = int(topo.rack_first_gpu[r])
            ng = int(topo.rack_gpus[r])
            gpus = topo.node_gpus[n0:n0 + nn].astype(np.int64)
            first = (topo.node_first_gpu[n0:n0 + nn].astype(np.int64) - g0)
            nodes = tuple(node_ids[n0:n0 + nn])
            self.racks[rid] = RackLayout(rid, r, nodes, n0, g0, gpus, first,
                                         topo.gpu_min_w[g0:g0 + ng].copy(), topo.gpu_max_w[g0:g0 + ng].copy(),
                                         layout_digest(nodes, gpus))
            for n in nodes:
                self.rack_of_node[n] = rid
        self.order = rack_ids

    def __getitem__(self, rack: str) -> RackLayout:
        return self.racks[rack]

    def __len__(self) -> int:
        return len(self.racks)
