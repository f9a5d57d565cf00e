"""GPU jobs: what runs on the GPUs, how important it is and what it may be capped to."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from models.site import MAX_PRIORITY, Scheduler
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


# ---- live jobs: what the schedulers report, resolved against the site ------------------------

SOURCES = ("site", "slurm", "kubernetes")


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What a scheduler says about one job, before the site's rules give it a priority.

    ``nodes`` are scheduler node names (expanded); ``priority`` is what the job asked for
    itself (a comment, a label), which the rules only let it lower.
    """

    id: str
    source: str
    nodes: tuple[str, ...]
    partition: str = ""
    qos: str = ""
    account: str = ""
    user: str = ""
    namespace: str = ""
    priority_class: str = ""
    priority: int | None = None
    checkpointable: bool | None = None
    ts_ns: int = 0


@dataclass(frozen=True, slots=True)
class Terms:
    """What the rules grant a job."""

    priority: int
    weight: float
    checkpointable: bool
    kind: str
    rule: int  # index of the rule that matched, -1 for the defaults


def terms_of(facts: JobFacts, scheduler: Scheduler) -> Terms:
    """Priority, weight, kind and checkpointability of a job under the site's ``[scheduler]`` rules:
    the first rule whose every given key matches (shell-style globs) wins; a job may ask for a lower
    priority (a higher number) than its rule's, never a higher one."""
    for k, r in enumerate(scheduler.rules):
        if r.source != "any" and r.source != facts.source:
            continue
        pairs = ((r.partition, facts.partition), (r.qos, facts.qos), (r.account, facts.account),
                 (r.namespace, facts.namespace), (r.priority_class, facts.priority_class))
        if all(pat is None or fnmatch.fnmatchcase(val, pat) for pat, val in pairs):
            prio, weight, ckpt, kind, rule = r.priority, r.weight, r.checkpointable, r.kind, k
            break
    else:
        prio, weight, ckpt, kind, rule = (scheduler.default_priority, scheduler.default_weight,
                                          scheduler.default_checkpointable, scheduler.default_kind, -1)
    if facts.priority is not None and scheduler.job_may_lower_priority:
        prio = max(prio, min(int(facts.priority), MAX_PRIORITY))
    if facts.checkpointable is not None:
        ckpt = facts.checkpointable
    return Terms(prio, weight, ckpt, kind, rule)


@dataclass(frozen=True, slots=True, eq=False)
class LiveJob:
    """A scheduler's job as the controller plans with it: its servers and its terms."""

    facts: JobFacts
    servers: NDArray[np.int32]  # server-local node indices, sorted, unique
    terms: Terms
    since_ns: int  # when the controller took it in

    @property
    def id(self) -> str:
        """The scheduler's job id."""
        return self.facts.id


def node_jobs(topo: Topology) -> NDArray[np.int32]:
    """Per server (node-level index): the job of its GPUs, -1 for none."""
    return topo.gpu_job[topo.node_first_gpu].astype(np.int32)


def with_jobs(base: Topology, live: Sequence[LiveJob]) -> Topology:
    """``base`` (the site file's jobs) with the live jobs added: the same arrays, new job assignment.

    Live jobs must hold servers no site-file job holds and no other live job holds (the job
    table sees to that). Costs a few array passes over the GPUs: 1M GPUs in milliseconds.
    """
    nb = len(base.job_ids)
    node_job = node_jobs(base)
    prio_n = base.gpu_priority[base.node_first_gpu].copy()
    weight_n = base.gpu_weight[base.node_first_gpu].copy()
    for k, job in enumerate(live):
        node_job[job.servers] = nb + k
        prio_n[job.servers] = job.terms.priority
        weight_n[job.servers] = job.terms.weight
    counts = base.node_gpus
    return replace(
        base,
        gpu_job=np.repeat(node_job, counts).astype(np.int32),
        gpu_priority=np.repeat(prio_n, counts).astype(np.int16),
        gpu_weight=np.repeat(weight_n, counts).astype(np.float64),
        job_ids=base.job_ids + tuple(j.id for j in live),
        job_priority=np.concatenate((base.job_priority, np.array([j.terms.priority for j in live], np.int16))),
        job_kind=base.job_kind + tuple(j.terms.kind for j in live),
        job_checkpointable=np.concatenate((base.job_checkpointable,
                                           np.array([j.terms.checkpointable for j in live], np.bool_))),
    )
