"""The job feed: the schedulers' jobs, taken in off the control loop and handed to it ready to plan with.

A thread polls the sources (the Slurm spool, the jobs endpoint's inbox, the Kubernetes pod
watch) every ``poll_s``, applies what changed to the ``JobTable``, and when the table changed
builds the new job assignment: the topology with the live jobs (``models.jobs.with_jobs``,
a few array passes) and the allocation problem regrouped by the new priorities and weights
(``SiteProblem.with_jobs``: the constraint membership is kept, only the per-constraint class
grouping is redone). The result is published as one immutable ``Assignment``; the control
loop swaps it in at the start of its next period (a reference swap), so a job change never
costs the loop more than that, and caps, moves and hooks plan with the new table from the
next period on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from controllers.jobs.names import NodeIndex
from controllers.jobs.table import JobTable, Update
from controllers.problem import SiteProblem
from models.clock import Clock
from models.jobs import LiveJob, with_jobs
from models.site import SiteConfig
from models.topology import Topology

log = logging.getLogger("powerplane.jobs")


@dataclass(frozen=True, eq=False)
class Assignment:
    """One version of the job table, ready to plan with."""

    version: int
    topo: Topology
    problem: SiteProblem
    jobs: tuple[LiveJob, ...]
    build_ms: float
    ts_ns: int
    nodes: dict[str, str] = field(default_factory=dict)  # job id -> its servers as a hostlist


@dataclass
class FeedStats:
    """What the feed did (a copy, safe to read from any thread)."""

    polls: int = 0
    poll_errors: int = 0
    rebuilds: int = 0
    last_build_ms: float = 0.0
    worst_build_ms: float = 0.0
    live: Counter[str] = field(default_factory=Counter)
    started: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    nodes_taken: int = 0
    last_poll_wall: float = 0.0


class JobFeed:
    """Polls job sources into a ``JobTable`` and publishes ``Assignment``s (see the module docstring)."""

    def __init__(self, site: SiteConfig, base: Topology, clock: Clock,
                 sources: Sequence[Callable[[], Sequence[Update]]], *, poll_s: float | None = None,
                 names: NodeIndex | None = None, health: Mapping[str, Callable[[], bool]] | None = None) -> None:
        self.site = site
        self.base = base
        self.clock = clock
        self.sources = list(sources)
        self.poll_s = poll_s if poll_s is not None else site.controller.period_s
        self._names = names
        self._health = dict(health or {})
        self.table: JobTable | None = None
        self.problem: SiteProblem | None = None
        self.latest: Assignment | None = None
        self._stats = FeedStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, problem: SiteProblem) -> None:
        """The loop's problem (for the site file's jobs): new assignments regroup it."""
        self.problem = problem

    def start(self) -> JobFeed:
        """Poll on a thread every ``poll_s`` of site time."""
        self._thread = threading.Thread(target=self._run, name="job-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        wall = self.poll_s / max(getattr(self.clock, "speed", 1.0), 1e-9)
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # the feed must outlive a bug in a source
                with self._lock:
                    self._stats.poll_errors += 1
                    first = self._stats.poll_errors == 1
                log.log(logging.ERROR if first else logging.DEBUG, "jobs: poll failed: %s", exc, exc_info=first)
            self._stop.wait(wall)

    def poll(self) -> Assignment | None:
        """One poll: take updates in; when the table changed, build and publish the new assignment."""
        if self.table is None:
            names = self._names if self._names is not None else NodeIndex(self.site, self.base)
            self.table = JobTable(self.site, self.base, names)
        updates: list[Update] = []
        for src in self.sources:
            updates.extend(src())
        now = self.clock.now_ns()
        with self._lock:
            changed = self.table.apply(updates, now)
            self._stats.polls += 1
            self._stats.last_poll_wall = time.monotonic()
            self._copy_counts()
        if not changed:
            return None
        return self._build(now)

    def _copy_counts(self) -> None:
        t = self.table
        assert t is not None
        s = self._stats
        s.live = t.counts()
        s.started = Counter(t.started)
        s.ended = Counter(t.ended)
        s.rejected = Counter(t.rejected)
        s.nodes_taken = t.nodes_taken

    def _build(self, now_ns: int) -> Assignment:
        assert self.table is not None
        base_problem = self.problem if self.problem is not None else SiteProblem.build(self.base)
        self.problem = base_problem
        t0 = time.perf_counter()
        live = tuple(self.table.live())
        topo = with_jobs(self.base, live)
        problem = base_problem.with_jobs(topo)
        ms = (time.perf_counter() - t0) * 1e3
        a = Assignment(self.table.version, topo, problem, live, ms, now_ns, dict(self.table.hostlists))
        self.latest = a
        with self._lock:
            s = self._stats
            s.rebuilds += 1
            s.last_build_ms = ms
            s.worst_build_ms = max(s.worst_build_ms, ms)
        log.info("jobs: table version %d: %d live jobs; planned with from the next period (built in %.1f ms)",
                 a.version, len(live), ms)
        return a

    def health(self) -> dict[str, float]:
        """1.0 per source that works (spool readable, watch synced), 0.0 otherwise."""
        out = {}
        for name, check in self._health.items():
            try:
                out[name] = float(bool(check()))
            except Exception:
                out[name] = 0.0
        return out

    def stats(self) -> FeedStats:
        """A copy of the counters."""
        with self._lock:
            s = self._stats
            return FeedStats(s.polls, s.poll_errors, s.rebuilds, s.last_build_ms, s.worst_build_ms, Counter(s.live),
                             Counter(s.started), Counter(s.ended), Counter(s.rejected), s.nodes_taken,
                             s.last_poll_wall)
