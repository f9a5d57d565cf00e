"""The control plane of one site, wired together: readings in -> state -> solve -> caps out -> verify.

``ControlPlane`` owns the period. Its hot path, once per ``[controller].period_s``, is
(after swapping in the job feed's newest job table, if it changed: a reference swap, the
table itself is built on the feed's thread, ``controllers.jobs.feed``)

    ingest   reading batches (from collector processes over MQTT, in-process collectors,
             test sources) and agent statuses (server power, acknowledgements) into the state
    verify   acknowledgements, enforcement and draw against what was sent -> worst-case pins
    solve    demand -> budget -> allocation -> safety gate -> plan
    publish  signed per-rack cap commands for the racks that need one
    store    the plan's aggregates, events and move advice, and the hand-off of the period's
             readings and events to the store thread and the hook dispatcher (bounded
             queues: never a blocking write here)
    report   device, store and actuation health (every ``health_period_s``) and the state
             snapshot for live views

and it records how late the period started and what each stage took (``controller.*``).

With an ``authority`` (several controllers, ``controllers.authority``) every period first asks
whether this controller holds authority, and under which epoch. A **standby** runs the whole
period on the same readings and statuses — its state, demand estimates and ramp stay warm —
but publishes no command, writes nothing to the store and tells the scheduler nothing. When
it acquires authority its publisher starts a new epoch (every rack gets a command in the
first period) and its ramp starts from the caps the agents report enforced; when it loses
authority it stops publishing in the same period (and before each command it sends).

A period that raises anything is counted, becomes a ``control_error`` event and the next
period runs: nothing a message carries can end the loop (every message passed a typed edge
before it got here). A period more than one period late skips the periods it missed and
counts them; a controller that keeps falling behind says so, naming the slowest stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from bus.mqtt import Inbox
from collectors.base import DeviceConfig
from collectors.liveness import SourceWatch
from collectors.runtime import CollectorSet
from controllers import safety
from controllers.actuation.actuator import Actuator
from controllers.authority import Authority
from controllers.consistency import TreeCheck
from controllers.jobs.feed import JobFeed
from controllers.loop import ControlLoop
from controllers.notices import Notices
from controllers.plan import CapPlan
from models import wire
from models.clock import NS_PER_S, Clock
from models.events import Event, EventKind
from models.histogram import Histogram
from models.readings import REGISTRY, Quality, ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.state import PueWindow, SiteState
from models.topology import L_NODE, L_RACK, Topology
from store.base import Sink, StoreStats

log = logging.getLogger("powerplane.runtime")

Source = Callable[[], ReadingBatch]
Apply = Callable[[CapPlan], None]
HookEvent = tuple[Event, Mapping[str, Any] | None]
# Extra per-period advice on a plan (move recommendations): events, each with an optional
# JSON-able detail for the scheduler hooks.
Advisor = Callable[[CapPlan, SiteState, int], list[tuple[Event, dict[str, Any] | None]]]
STAGES = ("ingest", "verify", "solve", "publish", "store", "report")
BEHIND_WARN_PERIODS = 5
MAX_SNAPSHOT_JOBS = 200  # the state topic carries the jobs that lose the most; the summary file all of them
MAX_HOSTLIST_CHARS = 4096  # this many late periods in a row: say so, naming the slowest stage


class HookSink(Protocol):
    """Where scheduler events go (``controllers.hooks``): must not block."""

    def submit(self, events: Sequence[Any], details: Mapping[int, Mapping[str, Any]] | None = None,
               now_ns: int | None = None) -> object:
        """Queue ``events`` for delivery."""


class StoreWriter:
    """The sink's writes, off the control loop: one thread, one bounded queue.

    ``write``/``write_events`` never block the loop; when the queue is full the oldest
    write is dropped and counted (the sink's own spool covers a slow server; a full queue
    means the store cannot keep up and says so in ``dropped``).
    """

    def __init__(self, sink: Sink, maxlen: int = 4096) -> None:
        self.sink = sink
        self.maxlen = maxlen
        self.dropped_writes = 0
        self.dropped_points = 0
        self.errors = 0
        self._q: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> None:
        with self._cond:
            if len(self._q) >= self.maxlen:
                _kind, old = self._q.popleft()
                self.dropped_writes += 1
                self.dropped_points += len(old)
                if self.dropped_writes == 1 or self.dropped_writes % 100 == 0:
                    log.error("store: write queue full (%d): %d writes dropped so far", self.maxlen,
                              self.dropped_writes)
            self._q.append(item)
            self._cond.notify()

    def write(self, batch: ReadingBatch) -> None:
        """Queue a batch."""
        if len(batch):
            self._put(("batch", batch))

    def write_events(self, events: Sequence[Event]) -> None:
        """Queue events."""
        if events:
            self._put(("events", list(events)))

    @property
    def depth(self) -> int:
        """Writes waiting."""
        return len(self._q) + self._busy

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._q and not self._stop:
                    self._cond.wait()
                if not self._q:
                    return
                # Readings queued together go in one transaction.
                items = list(self._q)
                self._q.clear()
                self._busy = True
            batches = [x for k, x in items if k == "batch"]
            events = [e for k, x in items if k == "events" for e in x]
            try:
                if batches:
                    self.sink.write(ReadingBatch.concat(batches))
                if events:
                    self.sink.write_events(events)
            except Exception as exc:  # a broken sink must not end the writer
                self.errors += 1
                log.error("store: write failed: %s", exc)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued is written."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._q and not self._busy, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (within ``timeout_s``), then stop the thread."""
        self.flush(timeout_s)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        self.sink.flush(timeout_s)


@dataclass
class PlaneStats:
    """What the control plane did so far."""

    periods: int = 0  # period slots since the first (planned or missed)
    plans: int = 0
    missed_periods: int = 0
    control_errors: int = 0
    last_error: str = ""
    plans_with_violations: int = 0
    violations: list[str] = field(default_factory=list)  # first few, verbatim
    infeasible_plans: int = 0
    periods_at_risk: int = 0  # caps fit, but draws lagging their caps exceeded a limit
    worst_solve_ms: float = 0.0
    readings: int = 0  # device readings taken in (collectors, agents' server power)
    batches_rejected: Counter[str] = field(default_factory=Counter)
    readings_rejected: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    late_ms: Histogram = field(default_factory=lambda: Histogram(1.0, 60_000.0))
    stage_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stage_worst_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    period_ms: Histogram = field(default_factory=lambda: Histogram(1.0, 60_000.0))
    last_period_wall: float = 0.0  # time.monotonic() of the last completed period
    behind: int = 0  # consecutive late periods
    dr_stranded_w: float = 0.0
    dr_stranded_max_w: float = 0.0
    suspect_readings: int = 0  # parents found disagreeing with their children
    dr_target_w: float = 0.0
    standby_plans: int = 0  # plans made without authority (warm, never published)
    epoch: int = 0  # the epoch this controller publishes under now (0: standby)
    takeovers: list[dict[str, Any]] = field(default_factory=list)  # each acquisition and its first plan


class ControlPlane:
    """Collect, decide, act and record for one site until stopped."""

    def __init__(self, site: SiteConfig, topo: Topology, clock: Clock, sink: Sink, *,
                 devices: Sequence[DeviceConfig] = (), sources: Sequence[Source] = (),
                 apply: Apply | None = None, control: bool = True, registry: SeriesRegistry = REGISTRY,
                 health_period_s: float = 10.0, on_event: Callable[[Event], None] | None = None,
                 actuator: Actuator | None = None, hooks: HookSink | None = None,
                 advisors: Sequence[Advisor] = (), readings: Inbox | None = None,
                 threaded_store: bool = True, publish_state: Callable[[dict[str, Any]], None] | None = None,
                 jobs: JobFeed | None = None, authority: Authority | None = None, holder: str = "controller",
                 store_readings: bool = True, source_timeout_s: float = 25.0) -> None:
        self.site = site
        self.site_id = site.site.name
        self.topo = topo
        self.clock = clock
        self.sink = sink
        self.writer = StoreWriter(sink) if threaded_store else None
        self.registry = registry
        self.state = SiteState(topo, registry)
        self.feeds = list(sources)
        self.apply = apply
        self.actuator = actuator
        self.hooks = hooks
        self.advisors = list(advisors)
        self.notices = Notices(site, topo)
        self.health_period_s = health_period_s
        self.stats = PlaneStats()
        self.recent: deque[Event] = deque(maxlen=200)
        self._on_event = on_event
        self.publish_state = publish_state
        self.collectors = CollectorSet(devices, clock=clock, registry=registry, on_batch=self._collected,
                                       on_event=self.event, on_dr_event=self.state.add_dr_event)
        self.readings = readings
        self.store_readings = store_readings  # False: store writers store the collectors' batches
        self.sources = SourceWatch(registry, self.site_id, source_timeout_s)
        self.authority = authority
        self.holder = holder
        self.max_epoch_seen = 0  # the newest epoch any agent reported applying
        if authority is None and actuator is not None:
            self.stats.epoch = actuator.publisher.epoch
        self._series = wire.SeriesCache(registry)
        self.loop = ControlLoop(site, topo, self.state, registry=registry) if control else None
        self.jobs = jobs
        self.jobs_version = 0  # the job table version the loop plans with (0: the site file's jobs)
        if jobs is not None and self.loop is not None:
            jobs.attach(self.loop.problem)
        self.last_plan: CapPlan | None = None
        self._applied: NDArray[np.float64] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: list[ReadingBatch] = []  # collected in process since the last period
        self._pending_events: list[Event] = []
        self._derived_it_ns = -1
        n_nodes = topo.count(L_NODE)
        self._node_cap_sids: NDArray[np.int32] | None = None
        self._rack_sids: NDArray[np.int32] | None = None
        self._server_rack: NDArray[np.intp] | None = None
        self._node_power_slot = -1
        self._stored_node_cap = np.full(n_nodes, np.nan)
        self._stored_node_cap_ns = np.full(n_nodes, -1, np.int64)
        self._next_health_ns = 0
        self._state_wall = 0.0
        self._state_errors = 0
        self._tree = TreeCheck(topo)
        self._suspect: set[int] = set()
        self._pue = PueWindow()  # site.pue: energies over a minute, not two readings' ratio

    # ---- data paths ----------------------------------------------------------------------
    def _collected(self, batch: ReadingBatch) -> None:
        """An in-process collector's batch: taken in at the next period (the loop owns the state)."""
        self._pending.append(batch)

    def event(self, ev: Event) -> None:
        """Record an event at the next period (store, recent list, hooks)."""
        self._pending_events.append(ev)

    def _write(self, batch: ReadingBatch) -> None:
        if self.writer is not None:
            self.writer.write(batch)
        else:
            self.sink.write(batch)

    def _write_events(self, events: Sequence[Event]) -> None:
        if self.writer is not None:
            self.writer.write_events(events)
        else:
            self.sink.write_events(events)

    def _noted(self, ev: Event) -> None:
        self.recent.append(ev)
        self.stats.events[ev.kind] += 1
        if self._on_event is not None:
            self._on_event(ev)

    def store_stats(self) -> StoreStats:
        """The sink's counters, with the writer queue's drops added."""
        s = self.sink.stats()
        if self.writer is None:
            return s
        from dataclasses import replace
        return replace(s, dropped_points=s.dropped_points + self.writer.dropped_points)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start collecting, and the period (controlling if enabled)."""
        if self.actuator is not None:
            await self.actuator.start()
        if self.jobs is not None:
            self.jobs.start()
        await self.collectors.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._control(), name="control"))

    async def stop(self) -> None:
        """Stop the period and the collectors, then write everything out."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.jobs is not None:
            await asyncio.to_thread(self.jobs.stop)
        await self.collectors.stop()
        if self.actuator is not None:
            self.actuator.stop()
        now = self.clock.now_ns()
        if self._stores:
            self._flush_pending(now)
            self._write(self.health_batch(now))
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        else:
            self.sink.flush()

    @property
    def _stores(self) -> bool:
        """Whether this controller writes to the store now (a standby leaves it to the authority)."""
        return self.authority is None or self.stats.epoch != 0

    @property
    def running(self) -> bool:
        """Whether the period task is alive (it only ends when stopped)."""
        return any(not t.done() for t in self._tasks)

    # ---- the period --------------------------------------------------------------------------
    def _ingest(self, now_ns: int, events: list[HookEvent], wire_events: list[Event]) -> tuple[list[ReadingBatch],
                                                                                              int]:
        """Everything that arrived since the last period, into the state; returns what to store and how
        many of those batches came over the wire from collector processes (first in the list)."""
        batches: list[ReadingBatch] = []
        if self.readings is not None:
            for _topic, payload in self.readings.drain():
                d = wire.decode(payload, self._series, site=self.site_id, now_ns=now_ns)
                if d.refused is not None:
                    self.stats.batches_rejected[str(d.refused)] += 1
                    if self.stats.batches_rejected[str(d.refused)] == 1:
                        log.warning("reading batch on %s refused: %s", _topic[:200], d.refused)
                    continue
                self.sources.seen(d.src, d.seq, now_ns, d.batch)
                self.stats.readings_rejected.update(d.rejected)
                if len(d.batch):
                    batches.append(d.batch)
                wire_events += d.events
        n_wire = len(batches)
        batches += self._pending
        self._pending = []
        for ev in self._pending_events:
            events.append((ev, None))
        self._pending_events = []
        events += [(e, None) for e in self.sources.check(now_ns)]
        batches += [src() for src in self.feeds]
        node_power = None
        if self.actuator is not None:
            events += self.actuator.statuses(now_ns)
            node_power = self.actuator.power_batch()
            batches.append(node_power)
            self.max_epoch_seen = max(self.max_epoch_seen, int(self.actuator.verifier.ack_order.max()) >> 40)
        for b in batches:
            self.state.ingest(b)
            self.stats.readings += len(b)
        if node_power is not None:  # the state takes every server's power; the store what operators read
            batches.remove(node_power)
            batches += self._node_power_stored(now_ns, node_power)
        self._tree_check(now_ns, events)
        batches.append(self.derived(now_ns))
        self.state.ingest(batches[-1])
        return batches, n_wire

    def _node_power_stored(self, now_ns: int, batch: ReadingBatch) -> list[ReadingBatch]:
        """What is stored of the agents' server power: every rack's servers summed, every period
        (``power.servers_w``, level rack, where every server of the rack is fresh), and each
        server itself once per ``[controller].node_power_every_s``, spread over the periods (a
        1M-GPU site has 250k servers: every one every period would be most of the controller's
        work, for a series no panel reads)."""
        cfg = self.site.controller
        out: list[ReadingBatch] = []
        t, st = self.topo, self.state
        sl = t.level_slice(L_NODE)
        p = st.node_power_w[sl]
        fresh = (st.node_power_ts_ns[sl] > 0) & ((now_ns - st.node_power_ts_ns[sl]) / NS_PER_S <= cfg.stale_after_s) \
            & np.isfinite(p)
        if self._rack_sids is None:
            self._rack_sids = self.registry.ids("power.servers_w", "id", t.ids(L_RACK), site=self.site_id,
                                                level="rack")
        if self._server_rack is None:
            self._server_rack = (t.gpu_member[L_RACK][t.node_first_gpu] - t.level_offset[L_RACK]).astype(np.intp)
        rack = self._server_rack
        n_r = t.count(L_RACK)
        total = np.bincount(rack, weights=np.where(fresh, p, 0.0), minlength=n_r).astype(np.float64, copy=False)
        complete = np.bincount(rack, weights=(~fresh).astype(np.float64), minlength=n_r) == 0
        has = np.bincount(rack, minlength=n_r) > 0
        ok = np.flatnonzero(complete & has)
        if ok.size:
            out.append(ReadingBatch.of(now_ns, self._rack_sids[ok], total[ok], 0, self.registry))
        every = cfg.node_power_every_s
        if every > 0 and len(batch):
            k = max(1, round(every / cfg.period_s))
            self._node_power_slot = (self._node_power_slot + 1) % k
            node = self.actuator.power_nodes if self.actuator is not None else np.zeros(0, np.intp)
            keep = node % k == self._node_power_slot
            if keep.any():
                out.append(batch.select(keep))
        return out

    def _tree_check(self, now_ns: int, events: list[HookEvent]) -> None:
        """Parents that disagree with their children: an event per new disagreement, and the parent
        taken at the larger side (``controllers.consistency``)."""
        st = self.state
        found = self._tree.check(st.node_power_w, st.node_power_ts_ns, now_ns,
                                 self.site.controller.totals_max_age_s)
        now_bad = {m.node for m in found}
        for m in found:
            if m.node not in self._suspect:
                self.stats.suspect_readings += 1
                events.append((Event(now_ns, EventKind.READING_SUSPECT, "warning", "controller",
                                     m.describe(self.topo) + "; planning on the larger", self.topo.node_id(m.node),
                                     {"value": m.parent_w, "children_w": m.children_w}), None))
        self._suspect = now_bad
        self._tree.worst_case(st.values, found)

    def _take_jobs(self) -> None:
        """Plan with the job feed's newest table from this period on (a reference swap)."""
        a = self.jobs.latest if self.jobs is not None else None
        if a is None or a.version == self.jobs_version:
            return
        self.jobs_version = a.version
        if self.loop is not None:
            self.loop.use_problem(a.problem)
        for adv in self.advisors:
            use = getattr(adv, "use_topology", None)
            if use is not None:
                use(a.topo)

    def derived(self, now_ns: int) -> ReadingBatch:
        """Site totals the devices do not report directly, every period (see ``SiteState.totals``)."""
        t = self.state.totals(now_ns, self.site.controller.totals_max_age_s, self.site.controller.stale_after_s)
        reg, site = self.registry, self.site_id
        sids: list[int] = []
        vals: list[float] = []
        self._pue.add_it(now_ns, t.it_w)
        wh, wh_ts = self.state.site("facility_wh")
        if wh_ts > 0:
            self._pue.add_register(wh_ts, wh)
        # PUE from the site meter's energy register over the last minute; a site whose meter has
        # no register gets the ratio of the latest readings.
        pue = self._pue.value() if wh_ts > 0 else t.pue
        if t.it_w is not None:
            sids += [reg.id("site.it_w", site=site), reg.id("site.it_age_s", site=site)]
            vals += [t.it_w, t.it_age_s]
        if pue is not None:
            sids.append(reg.id("site.pue", site=site))
            vals.append(pue)
        sids += [reg.id("grid.dr_active", site=site), reg.id("grid.dr_target_w", site=site)]
        vals += [float(t.dr_active), t.dr_target_w]
        st = self.stats
        st.dr_target_w = t.dr_target_w
        if t.dr_active and t.facility_w is not None and self.last_plan is not None:
            demand = self.last_plan.demand_facility_w
            st.dr_stranded_w = max(0.0, t.dr_target_w - t.facility_w) if demand > t.dr_target_w else 0.0
            st.dr_stranded_max_w = max(st.dr_stranded_max_w, st.dr_stranded_w)
            sids.append(reg.id("controller.dr_stranded_w", site=site))
            vals.append(st.dr_stranded_w)
        else:
            st.dr_stranded_w = 0.0
        return ReadingBatch.of(now_ns, np.asarray(sids, np.int32), np.asarray(vals), int(Quality.ESTIMATED), reg)

    def step(self, now_ns: int, late_ms: float = 0.0) -> CapPlan | None:
        """One control period at ``now_ns`` (see the module docstring); returns the plan."""
        st = self.stats
        ms = dict.fromkeys(STAGES, 0.0)
        t0 = time.perf_counter()
        events: list[HookEvent] = []
        self._take_jobs()
        wire_events: list[Event] = []
        batches, n_wire = self._ingest(now_ns, events, wire_events)
        authoritative = self._authority(now_ns)
        t1 = time.perf_counter()
        ms["ingest"] = (t1 - t0) * 1e3
        plan: CapPlan | None = None
        try:
            if self.loop is not None:
                plan = self._control_step(now_ns, events, batches, ms, authoritative)
        finally:
            t4 = time.perf_counter()
            if self.store_readings:
                events += [(e, None) for e in wire_events]
            else:
                del batches[:n_wire]  # the store writers keep what the collectors published, events too
                for ev in wire_events:
                    self._noted(ev)
            if authoritative:
                self._handoff(now_ns, batches, events)
            else:
                for ev, _ in events:
                    self._noted(ev)
            t5 = time.perf_counter()
            ms["store"] += (t5 - t4) * 1e3
            self._report(now_ns)
            ms["report"] = (time.perf_counter() - t5) * 1e3
            total = (time.perf_counter() - t0) * 1e3
            st.stage_ms = ms
            for k, v in ms.items():
                st.stage_worst_ms[k] = max(st.stage_worst_ms[k], v)
            st.period_ms.add(np.array([total]))
            st.late_ms.add(np.array([late_ms]))
            st.last_period_wall = time.monotonic()
            self._health(now_ns, late_ms, total)
        return plan

    def actuation_lag_s(self) -> float:
        """How long caps take to hold (site seconds): the measured settle p95 once there is
        one, the configured deadline (``[actuation].settle_s``) before; 0 without actuation."""
        if self.actuator is None:
            return 0.0
        p95 = self.actuator.verifier.stats.settle_percentiles()[1]
        return float(p95) if math.isfinite(p95) else self.site.actuation.settle_s

    def _authority(self, now_ns: int) -> bool:
        """Whether this controller commands the agents this period; handles acquiring and losing it."""
        if self.authority is None:
            return True
        ep = self.authority.current() or 0
        st = self.stats
        if ep == st.epoch:
            return ep != 0
        pub = self.actuator.publisher if self.actuator is not None else None
        if st.epoch:
            log.error("%s: authority of epoch %d lost: standby from now on", self.holder, st.epoch)
            self._authority_event(now_ns, EventKind.AUTHORITY_LOST, st.epoch, "lost authority: standby, publishing "
                                  "nothing")
        if ep:
            if pub is not None:
                pub.take_over(ep)
                if self.loop is not None:
                    # Warm: the ramp continues from what the agents enforce now, not from zero.
                    self.loop.follow(self.actuator.verifier.enforced_w)  # type: ignore[union-attr]
            st.takeovers.append({"epoch": ep, "acquired_ns": now_ns, "first_plan_ns": -1, "wall_ns": time.time_ns(),
                                 "plans_before": st.plans})
            log.warning("%s: authority of epoch %d: commanding the agents", self.holder, ep)
            self._authority_event(now_ns, EventKind.AUTHORITY_ACQUIRED, ep, "holds authority: commanding the agents")
        elif pub is not None:
            pub.enabled = False
        st.epoch = ep
        return ep != 0

    def _authority_event(self, now_ns: int, kind: EventKind, epoch: int, what: str) -> None:
        ev = Event(now_ns, kind, "warning", "controller", f"{self.holder} {what} (epoch {epoch})", self.holder,
                   {"epoch": float(epoch)})
        self._write_events([ev])  # stored whichever role this controller has now
        self._noted(ev)

    def _control_step(self, now_ns: int, events: list[HookEvent], batches: list[ReadingBatch],
                      ms: dict[str, float], authoritative: bool = True) -> CapPlan:
        assert self.loop is not None
        st = self.stats
        t1 = time.perf_counter()
        pinned = None
        if self.actuator is not None:
            verdicts, pinned = self.actuator.check(now_ns, self.loop.draw_per_gpu_w())
            events += verdicts
        t2 = time.perf_counter()
        ms["verify"] = (t2 - t1) * 1e3
        plan = self.loop.step(now_ns, pinned, self.actuation_lag_s())
        self.last_plan = plan
        st.plans += 1
        if not authoritative:
            st.standby_plans += 1
        elif st.takeovers and st.takeovers[-1]["first_plan_ns"] < 0:
            st.takeovers[-1]["first_plan_ns"] = now_ns
            st.takeovers[-1]["first_plan_wall_ns"] = time.time_ns()
        st.worst_solve_ms = max(st.worst_solve_ms, plan.solve_ms)
        # A constraint whose floors alone exceed it is infeasible (an event names the jobs to
        # move); the floors it is planned at are not a plan granting over a limit.
        infeasible = {x.constraint for x in plan.infeasible}
        granted = [v for v in plan.violations(self.topo, of="caps") if v.split(":", 1)[0] not in infeasible]
        caps = safety.gate(plan.caps_w, granted, self._applied)
        t3 = time.perf_counter()
        ms["solve"] = (t3 - t2) * 1e3
        if not authoritative:
            # A standby keeps its state, demand and ramp warm; what it would publish, store or tell the
            # scheduler is the authority's job.
            self._applied = caps if caps is not None else self._applied
            ms["publish"] = (time.perf_counter() - t3) * 1e3
            return plan
        if granted:
            st.plans_with_violations += 1
            st.violations.extend(granted[: max(0, 20 - len(st.violations))])
            events.append((Event(now_ns, EventKind.PLAN_VIOLATION, "critical", "controller",
                                 f"plan {plan.plan_id} grants over a limit; only its cuts applied: {granted[0]}",
                                 self.site_id, {"violations": float(len(granted))}), None))
        else:
            at_risk = plan.violations(self.topo)
            if at_risk:
                # The caps fit, but GPUs that have not yet followed them draw more: the limit is
                # at risk until they settle. Counted and reported, and the caps are applied.
                st.periods_at_risk += 1
                events.append((Event(now_ns, EventKind.LIMIT_AT_RISK, "warning", "controller",
                                     f"plan {plan.plan_id}: GPUs lagging their caps: {at_risk[0]}", self.site_id,
                                     {"limits": float(len(at_risk)), "gpus": float(plan.overdraw_gpus)}), None))
            if plan.infeasible:
                st.infeasible_plans += 1
        if caps is not None:
            applied = plan if caps is plan.caps_w else _with_caps(plan, caps)
            if self.apply is not None:
                self.apply(applied)
            if self.actuator is not None:
                self.actuator.apply(applied)
            self._applied = caps
        t4 = time.perf_counter()
        ms["publish"] = (t4 - t3) * 1e3
        if not granted:
            batches.append(plan.to_batch(self.site_id, self.registry))
            batches.append(self._node_caps(now_ns))
            events.extend((e, None) for e in plan.events(self.site_id))
            events.extend((e, None) for e in self.notices.events(plan, self.state, now_ns))
            for advise in self.advisors:
                events.extend(advise(plan, self.state, now_ns))
        ms["store"] = (time.perf_counter() - t4) * 1e3  # what goes to the store and hooks; step adds the hand-off
        return plan

    def _node_caps(self, now_ns: int) -> ReadingBatch:
        """``caps.gpu_cap_w`` per node (its GPUs' cap as sent), only where it changed, and for at most
        one server in ``[controller].node_caps_every_s / period_s`` a period."""
        if self.actuator is not None:
            pub = self.actuator.publisher
            sent = np.minimum.reduceat(np.where(np.isnan(pub.sent_w), np.inf, pub.sent_w), pub.first)
        elif self._applied is not None:
            sent = np.minimum.reduceat(self._applied, self.topo.node_first_gpu.astype(np.intp))
        else:
            return ReadingBatch.empty(self.registry)
        changed = np.flatnonzero(np.isfinite(sent) & ~(np.abs(sent - self._stored_node_cap) < 0.5))
        if not changed.size:
            return ReadingBatch.empty(self.registry)
        cfg = self.site.controller
        if cfg.node_caps_every_s > 0:
            # A site-wide swing changes every server's cap: store at most a share of the servers a
            # period, those whose stored cap is oldest first, so each catches up within the interval.
            budget = math.ceil(sent.size * cfg.period_s / cfg.node_caps_every_s)
            if changed.size > budget:
                oldest = np.argpartition(self._stored_node_cap_ns[changed], budget - 1)[:budget]
                changed = np.sort(changed[oldest])
        self._stored_node_cap[changed] = sent[changed]
        self._stored_node_cap_ns[changed] = now_ns
        if self._node_cap_sids is None:
            self._node_cap_sids = self.registry.ids("caps.gpu_cap_w", "id", self.topo.ids(L_NODE), site=self.site_id,
                                                    level="node")
        return ReadingBatch.of(now_ns, self._node_cap_sids[changed], sent[changed], 0, self.registry)

    def _handoff(self, now_ns: int, batches: list[ReadingBatch], events: list[HookEvent]) -> None:
        """The period's readings and events to the store thread and the hooks; never blocks."""
        self._write(ReadingBatch.concat(batches))
        if events:
            evs = [e for e, _ in events]
            self._write_events(evs)
            for ev in evs:
                self._noted(ev)
            if self.hooks is not None:
                details = {id(e): d for e, d in events if d}
                self.hooks.submit(evs, details, now_ns)

    def _flush_pending(self, now_ns: int) -> None:
        events: list[HookEvent] = [(e, None) for e in self._pending_events]
        self._pending_events = []
        batches, self._pending = self._pending, []
        self._handoff(now_ns, batches, events)

    # ---- loop health ---------------------------------------------------------------------------
    def health_values(self) -> dict[str, float]:
        """``controller.*`` values of the last period."""
        st = self.stats
        vals = {f"{k}_ms": v for k, v in st.stage_ms.items()}
        vals.update(periods=st.periods, epoch=st.epoch, plans=st.plans, missed_periods=st.missed_periods,
                    errors=st.control_errors,
                    readings_in=st.readings, batches_rejected=sum(st.batches_rejected.values()),
                    store_queue=self.writer.depth if self.writer else 0,
                    store_dropped=self.writer.dropped_points if self.writer else 0)
        return {k: float(v) for k, v in vals.items()}

    def health_batch(self, now_ns: int) -> ReadingBatch:
        """Collector, store and actuation health readings."""
        batches = [self.collectors.health_batch(now_ns, self.site_id),
                   self.sink.health_batch(now_ns, self.site_id)]
        if self.actuator is not None:
            batches.append(self.actuator.health_batch(now_ns))
        return ReadingBatch.concat(batches)

    def _health(self, now_ns: int, late_ms: float, total_ms: float) -> None:
        """The period's own ``controller.*`` readings (its stage times included) to the store."""
        reg, site = self.registry, self.site_id
        vals = self.health_values()
        vals["late_ms"] = late_ms
        vals["period_ms"] = total_ms
        sids = [reg.id(f"controller.{k}", site=site) for k in vals]
        if self._stores:
            self._write(ReadingBatch.of(now_ns, sids, list(vals.values()), 0, reg))

    def _report(self, now_ns: int) -> None:
        """The ``report`` stage: collector, store and actuation health every ``health_period_s``, and
        the state snapshot for live views."""
        if now_ns >= self._next_health_ns:
            self._next_health_ns = now_ns + int(self.health_period_s * NS_PER_S)
            if self._stores:
                self._write(self.health_batch(now_ns))
        if self.publish_state is not None and time.monotonic() - self._state_wall >= 0.2 \
                and (self.authority is None or self.stats.epoch):
            self._state_wall = time.monotonic()
            try:
                self.publish_state(self.snapshot(now_ns))
            except Exception as exc:  # the view is not worth a period; say it once
                self._state_errors += 1
                log.log(logging.ERROR if self._state_errors == 1 else logging.DEBUG,
                        "publishing the controller state failed: %s", exc, exc_info=self._state_errors == 1)

    def snapshot(self, now_ns: int) -> dict[str, Any]:
        """The controller's state for a live view or an operator (JSON-able, bounded size)."""
        st = self.stats
        out: dict[str, Any] = {
            "ts_ns": now_ns, "site": self.site_id, "periods": st.periods, "plans": st.plans,
            "missed_periods": st.missed_periods, "errors": st.control_errors, "last_error": st.last_error,
            "late_ms": st.late_ms.percentile(99), "stage_ms": st.stage_ms, "readings": st.readings,
            "plans_with_violations": st.plans_with_violations, "dr_stranded_w": st.dr_stranded_w,
            "store": asdict(self.store_stats()),
        }
        if self.authority is not None:
            out["authority"] = {"holder": self.holder, "epoch": st.epoch, "takeovers": st.takeovers[-4:]}
        down = self.sources.down_devices()
        if down:
            out["devices_down"] = down[:64]
        summary = self.last_plan.summary() if self.last_plan is not None else None
        if summary is not None:
            out["plan"] = summary.to_json(max_racks=64, max_jobs=64)
        if self.actuator is not None:
            out["actuation"] = self.actuator.health()
            out["modes"] = self.actuator.verifier.stats.modes
        topo = self.loop.topo if self.loop is not None else self.topo
        out["jobs_total"] = len(topo.job_ids)
        out["jobs"] = self.job_rows(summary, limit=MAX_SNAPSHOT_JOBS)
        out["jobs_version"] = self.jobs_version
        return out

    def job_rows(self, summary: Any = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Every job the loop plans with (site file and live), where it came from, its terms, and from
        the last plan its caps and what it loses to them (``powerplane jobs list``); ``limit``: only the
        jobs that lose the most."""
        topo = self.loop.topo if self.loop is not None else self.topo
        a = self.jobs.latest if self.jobs is not None and self.jobs.latest is not None else None
        if a is not None and a.version != self.jobs_version:
            a = None  # not yet planned with
        live = {j.id: j for j in a.jobs} if a is not None else {}
        caps = {j.id: j for j in summary.jobs} if summary is not None else {}
        n = len(topo.job_ids)
        order: list[int] = list(range(n))
        if limit is not None and n > limit:
            order = sorted(order, key=lambda k: -(caps[topo.job_ids[k]].cut_w if topo.job_ids[k] in caps else 0.0))
            order = order[:limit]
        first = topo.node_first_gpu
        node_job = topo.gpu_job[first]
        has = np.flatnonzero(node_job >= 0)
        servers = np.bincount(node_job[has], minlength=n)
        first_server = np.full(n, -1, np.int64)
        first_server[node_job[has][::-1]] = has[::-1]  # each job's first server
        rows: list[dict[str, Any]] = []
        for k in order:
            jid = topo.job_ids[k]
            lj = live.get(jid)
            row: dict[str, Any] = {"id": jid, "source": lj.facts.source if lj is not None else "site",
                                   "priority": int(topo.job_priority[k]), "kind": topo.job_kind[k],
                                   "checkpointable": bool(topo.job_checkpointable[k]), "n_nodes": int(servers[k])}
            if lj is not None:
                f = lj.facts
                row.update(weight=lj.terms.weight, rule=lj.terms.rule,
                           nodes=(a.nodes.get(jid, "") if a is not None else "")[:MAX_HOSTLIST_CHARS],
                           since_ns=lj.since_ns, asked_priority=f.priority,
                           **{key: getattr(f, key) for key in ("partition", "qos", "account", "user", "namespace",
                                                               "priority_class") if getattr(f, key)})
            elif first_server[k] >= 0:
                row["weight"] = float(topo.gpu_weight[first[first_server[k]]])
            c = caps.get(jid)
            if c is not None:
                row.update(gpus=c.gpus, cap_per_gpu_w=c.cap_per_gpu_w, demand_w=c.demand_w, cut_w=c.cut_w,
                           gpus_capped=c.gpus_capped)
            rows.append(row)
        return rows

    def _late(self, late_ms: float, period_ms: float) -> None:
        st = self.stats
        st.behind = st.behind + 1 if late_ms > period_ms / 2 else 0
        if st.behind == BEHIND_WARN_PERIODS or (st.behind and st.behind % 60 == 0):
            slow = max(st.stage_ms.items(), key=lambda kv: kv[1])
            log.warning("control loop falling behind: %d periods late in a row, last %.0f ms late; slowest stage "
                        "%s (%.0f ms); %d periods missed so far", st.behind, late_ms, slow[0], slow[1],
                        st.missed_periods)

    async def _control(self) -> None:
        period_ns = int(self.site.controller.period_s * NS_PER_S)
        next_ns = self.clock.now_ns()
        while True:
            wait = (next_ns - self.clock.now_ns()) / NS_PER_S
            if wait > 0:
                await self.clock.sleep(wait)
            now = self.clock.now_ns()
            late_ns = max(0, now - next_ns)
            if late_ns >= period_ns:
                skipped = late_ns // period_ns
                self.stats.missed_periods += int(skipped)
                self.stats.periods += int(skipped)
                next_ns += skipped * period_ns
                late_ns -= skipped * period_ns
            self.stats.periods += 1
            try:
                self.step(now, late_ns / 1e6)
            except Exception as exc:
                # A failed period keeps the caps in force; the next period tries again.
                self.stats.control_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                first = self.stats.control_errors == 1
                log.log(logging.ERROR, "control period failed (%d so far): %s", self.stats.control_errors,
                        self.stats.last_error, exc_info=first)
                self.event(Event(now, EventKind.CONTROL_ERROR, "error", "controller", self.stats.last_error,
                                 self.site_id))
            self._late(late_ns / 1e6, period_ns / 1e6)
            next_ns += period_ns
            await asyncio.sleep(0)


def _with_caps(plan: CapPlan, caps: NDArray[np.float64]) -> CapPlan:
    from dataclasses import replace

    return replace(plan, caps_w=caps)

