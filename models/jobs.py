"""GPU jobs: what runs on the GPUs, how important it is and what it may be capped to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.topology import Topology


@dataclass(frozen=True, slots=True, eq=False)
class GpuJob:
    """A job: its GPUs (global GPU indices), priority (0 highest) and per-GPU power range."""

    id: str
    kind: str
    priority: int
    gpus: NDArray[np.int32]
    min_w: float
    max_w: float
    checkpointable: bool
    weight: float = 1.0

    @property
    def n_gpus(self) -> int:
        """Number of GPUs the job holds."""
        return int(self.gpus.shape[0])

    def floor_w(self) -> float:
        """Least power the job can run at: every GPU at its lowest cap."""
        return self.min_w * self.n_gpus

    def ceiling_w(self) -> float:
        """Most power the job can draw: every GPU at its highest cap."""
        return self.max_w * self.n_gpus


def jobs_of(topo: Topology) -> list[GpuJob]:
    """The jobs of a topology, with their GPU index arrays."""
    order = np.argsort(topo.gpu_job, kind="stable")
    sorted_jobs = topo.gpu_job[order]
    out = []
    for j, job_id in enumerate(topo.job_ids):
        lo, hi = np.searchsorted(sorted_jobs, [j, j + 1])
        gpus = np.sort(order[lo:hi]).astype(np.int32)
        if gpus.size == 0:
            continue
        out.append(GpuJob(
            id=job_id, kind=topo.job_kind[j], priority=int(topo.job_priority[j]), gpus=gpus,
            min_w=float(topo.gpu_min_w[gpus].max()), max_w=float(topo.gpu_max_w[gpus].min()),
            checkpointable=bool(topo.job_checkpointable[j]), weight=float(topo.gpu_weight[gpus[0]]),
        ))
    return out
