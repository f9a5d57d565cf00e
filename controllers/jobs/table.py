"""The live job table: every job the schedulers reported, resolved against the site.

Updates are ``Start(facts)`` and ``End(source, id)``; ``JobTable.apply`` takes them in and
bumps ``version`` when the table changed. What is refused is counted by ``(source, reason)``
and logged once per reason (repeats at DEBUG):

=================  ============================================================================
reason             when
=================  ============================================================================
malformed          the entry did not pass its source's edge (bad JSON, id, hostlist, too large)
unknown_node       a node name is not a server of this site (the job keeps its known nodes;
                   refused if none is left)
node_reserved      a node belongs to a site-file ``[[jobs]]`` job (a reservation; ditto)
duplicate          the id is live already with the same facts (a re-sent prolog), or is live
                   from another source, or is a site-file job's id
too_many_jobs      ``[scheduler].max_jobs`` live jobs already
unknown_job        an end for a job that is not live (e.g. one that was refused)
=================  ============================================================================

A node holds one job. A start that names nodes another live job holds takes them (the newer
job runs there: Slurm may start the next job before the last one's epilog ran); the older
job keeps its other nodes and leaves the table when it has none (counted as ``node_taken``
in ``moved``, not a refusal). Ending a job frees its nodes: its power goes back to the pool
at the next plan.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from controllers.jobs.names import NodeIndex
from models.jobs import JobFacts, LiveJob, node_jobs, terms_of
from models.site import SiteConfig
from models.topology import Topology

log = logging.getLogger("powerplane.jobs")

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}$")
MAX_HOSTLIST_NODES = 20_000  # a job's hostlist for views names at most this many nodes
REASONS = ("malformed", "unknown_node", "node_reserved", "duplicate", "too_many_jobs", "unknown_job")


@dataclass(frozen=True, slots=True)
class Start:
    """A job started (or its facts changed)."""

    facts: JobFacts


@dataclass(frozen=True, slots=True)
class End:
    """A job ended."""

    source: str
    id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """An entry a source could not read (counted as ``reason`` against ``source``)."""

    source: str
    reason: str
    detail: str


Update = Start | End | Refused


class JobTable:
    """Live jobs by id, with the servers each holds."""

    def __init__(self, site: SiteConfig, base: Topology, names: NodeIndex) -> None:
        self.scheduler = site.scheduler
        self.base = base
        self.names = names
        self.reserved = node_jobs(base) >= 0  # servers of site-file jobs
        self.site_ids = set(base.job_ids)
        self.owner = np.full(base.node_first_gpu.shape[0], -1, np.int64)  # server -> slot of its live job
        self.jobs: dict[str, LiveJob] = {}
        self.hostlists: dict[str, str] = {}  # job id -> its servers' host names as a hostlist (for views)
        self._slot: dict[str, int] = {}
        self._by_slot: dict[int, str] = {}
        self._next_slot = 0
        self.version = 0
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.started: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.nodes_taken = 0
        self._logged: set[tuple[str, str]] = set()

    # ---- updates ---------------------------------------------------------------------------
    def apply(self, updates: Iterable[Update], now_ns: int) -> bool:
        """Take ``updates`` in, in order; True if the table changed."""
        before = self.version
        for u in updates:
            if isinstance(u, Start):
                self._start(u.facts, now_ns)
            elif isinstance(u, End):
                self._end(u.source, u.id)
            else:
                self.refuse(u.source, u.reason, u.detail)
        return self.version != before

    def refuse(self, source: str, reason: str, detail: str) -> None:
        """Count (and log the first of each reason) an entry that was refused."""
        self.rejected[(source, reason)] += 1
        key = (source, reason)
        level = logging.WARNING if key not in self._logged else logging.DEBUG
        self._logged.add(key)
        log.log(level, "jobs: %s entry refused (%s): %s", source, reason, detail[:300])

    def _start(self, f: JobFacts, now_ns: int) -> None:
        if not JOB_ID_RE.match(f.id):
            self.refuse(f.source, "malformed", f"job id {f.id[:80]!r}")
            return
        old = self.jobs.get(f.id)
        if f.id in self.site_ids or (old is not None and old.facts.source != f.source):
            whence = old.facts.source if old is not None else "the site file"
            self.refuse(f.source, "duplicate", f"job {f.id} is live from {whence}")
            return
        if old is not None and old.facts == f:
            self.refuse(f.source, "duplicate", f"job {f.id} started again with the same facts")
            return
        if old is None and len(self.jobs) >= self.scheduler.max_jobs:
            self.refuse(f.source, "too_many_jobs", f"job {f.id}: {len(self.jobs)} live jobs already")
            return
        idx = [self.names.get(n) for n in f.nodes]
        unknown = [n for n, k in zip(f.nodes, idx, strict=True) if k is None]
        servers = np.unique(np.array([k for k in idx if k is not None], np.int64))
        if unknown:
            self.refuse(f.source, "unknown_node", f"job {f.id}: {len(unknown)} node(s) not of this site, e.g. "
                                                  f"{unknown[0][:80]!r}")
        held = self.reserved[servers] if servers.size else np.zeros(0, np.bool_)
        if held.any():
            self.refuse(f.source, "node_reserved", f"job {f.id}: {int(held.sum())} node(s) belong to site-file jobs")
            servers = servers[~held]
        if not servers.size:
            if old is not None:
                self._drop(f.id)
            return
        if old is not None:
            self._drop(f.id)
        slot = self._next_slot
        self._next_slot += 1
        others = self.owner[servers]
        for s in np.unique(others[others >= 0]).tolist():
            self._shrink(self._by_slot[int(s)], servers, f.id)
        self.owner[servers] = slot
        self._slot[f.id] = slot
        self._by_slot[slot] = f.id
        self.jobs[f.id] = LiveJob(f, servers.astype(np.int32), terms_of(f, self.scheduler),
                                  old.since_ns if old is not None else now_ns)
        self.hostlists[f.id] = self._hostlist(servers)
        self.started[f.source] += old is None
        self.version += 1

    def _shrink(self, job_id: str, taken: np.ndarray, by: str) -> None:
        job = self.jobs[job_id]
        keep = job.servers[~np.isin(job.servers, taken)]
        self.nodes_taken += int(job.servers.size - keep.size)
        log.info("jobs: job %s takes %d node(s) of job %s", by, job.servers.size - keep.size, job_id)
        if not keep.size:
            self._drop(job_id)
            self.ended[job.facts.source] += 1
            return
        self.jobs[job_id] = LiveJob(job.facts, keep, job.terms, job.since_ns)
        self.hostlists[job_id] = self._hostlist(keep)

    def _hostlist(self, servers: np.ndarray) -> str:
        import hostlist

        # once per job start (a millisecond for a rack's worth), never per rebuild
        return str(hostlist.collect_hostlist([self.names.names[int(k)] for k in servers[:MAX_HOSTLIST_NODES]]))

    def _drop(self, job_id: str) -> None:
        job = self.jobs.pop(job_id)
        self.hostlists.pop(job_id, None)
        slot = self._slot.pop(job_id)
        del self._by_slot[slot]
        mine = job.servers[self.owner[job.servers] == slot]
        self.owner[mine] = -1
        self.version += 1

    def _end(self, source: str, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.facts.source != source:
            self.refuse(source, "unknown_job", f"end of job {job_id[:80]!r}, which is not live from {source}")
            return
        self._drop(job_id)
        self.ended[source] += 1

    # ---- views -----------------------------------------------------------------------------
    def live(self) -> list[LiveJob]:
        """The live jobs, oldest first (a stable order: the topology's job indices follow it)."""
        return sorted(self.jobs.values(), key=lambda j: (self._slot[j.id]))

    def counts(self) -> Counter[str]:
        """Live jobs per source."""
        return Counter(j.facts.source for j in self.jobs.values())
