"""The control plane wired together: collectors -> SiteState -> controller -> caps, all into the store.

``ControlPlane`` owns no devices and no clock of its own: it is given the devices to
collect, the sink, the clock, any in-process sources (the twin's server-level power until
node agents report it) and what to do with a plan (the demo applies it to the twin's
GPUs). Every batch the collectors accept goes to the state and the store; every plan, its
``caps.*`` readings and its events (each decision with its reason) go to the store; every
plan is re-checked against every limit by ``CapPlan.violations`` and a violation is an
ERROR event, never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from collectors.base import DeviceConfig
from collectors.runtime import CollectorSet
from controllers.actuation.actuator import Actuator
from controllers.loop import ControlLoop
from controllers.notices import Notices
from controllers.plan import CapPlan
from models.clock import NS_PER_S, Clock
from models.errors import PowerplaneError
from models.events import Event
from models.readings import REGISTRY, ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import L_UPS, Topology
from powerplane.store.base import Sink

log = logging.getLogger("powerplane.runtime")

Source = Callable[[], ReadingBatch]
Apply = Callable[[CapPlan], None]
# Extra per-period advice on a plan (move recommendations): events, each with an optional
# JSON-able detail for the scheduler hooks.
Advisor = Callable[[CapPlan, SiteState, int], list[tuple[Event, dict[str, Any] | None]]]


class HookSink(Protocol):
    """Where scheduler events go (``controllers.hooks``): must not block."""

    def submit(self, events: Sequence[Event], details: Mapping[int, Mapping[str, Any]] | None = None,
               now_ns: int | None = None) -> object:
        """Queue ``events`` (``details`` keyed by ``id(event)``) for delivery."""


@dataclass
class PlaneStats:
    """What the control plane did so far."""

    plans: int = 0
    plans_with_violations: int = 0
    violations: list[str] = field(default_factory=list)  # first few, verbatim
    infeasible_plans: int = 0
    periods_at_risk: int = 0  # caps fit, but draws lagging their caps exceeded a limit
    worst_solve_ms: float = 0.0
    readings: int = 0
    events: Counter[str] = field(default_factory=Counter)
    control_errors: int = 0


class ControlPlane:
    """Collect, decide and record for one site until stopped."""

    def __init__(self, site: SiteConfig, topo: Topology, clock: Clock, sink: Sink, *,
                 devices: Sequence[DeviceConfig] = (), sources: Sequence[Source] = (),
                 apply: Apply | None = None, control: bool = True, registry: SeriesRegistry = REGISTRY,
                 health_period_s: float = 10.0, on_event: Callable[[Event], None] | None = None,
                 actuator: Actuator | None = None, hooks: HookSink | None = None,
                 advisors: Sequence[Advisor] = ()) -> None:
        self.site = site
        self.site_id = site.site.name
        self.topo = topo
        self.clock = clock
        self.sink = sink
        self.registry = registry
        self.state = SiteState(topo, registry)
        self.sources = list(sources)
        self.apply = apply
        self.actuator = actuator
        self.hooks = hooks
        self.advisors = list(advisors)
        self.notices = Notices(site, topo)
        self.health_period_s = health_period_s
        self.stats = PlaneStats()
        self.recent: deque[Event] = deque(maxlen=200)
        self._on_event = on_event
        self.collectors = CollectorSet(devices, clock=clock, registry=registry, on_batch=self.ingest,
                                       on_event=self.event, on_dr_event=self.state.add_dr_event)
        self.loop = ControlLoop(site, topo, self.state, registry=registry) if control else None
        self.last_plan: CapPlan | None = None
        self._applied: NDArray[np.float64] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.paused = False  # the demo's outage drill: no planning, no caps sent
        self._derived_it_ns = -1  # stamp of the last site.it_w derived() wrote, to tell it from a device's

    # ---- data paths ----------------------------------------------------------------------
    def ingest(self, batch: ReadingBatch) -> None:
        """One accepted batch: into the state (for control) and the store (for everyone)."""
        self.state.ingest(batch)
        self.sink.write(batch)
        self.stats.readings += len(batch)

    def event(self, ev: Event) -> None:
        """Record an event in the store and the recent list."""
        self.sink.write_events([ev])
        self._noted(ev)

    def _noted(self, ev: Event) -> None:
        self.recent.append(ev)
        self.stats.events[ev.kind] += 1
        if self._on_event is not None:
            self._on_event(ev)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start collecting, and controlling if enabled."""
        if self.actuator is not None:
            await self.actuator.start()
        await self.collectors.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._health(), name="health"))
        if self.loop is not None or self.sources:
            self._tasks.append(loop.create_task(self._control(), name="control"))

    async def stop(self) -> None:
        """Stop every task and the collectors, then flush the store."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        await self.collectors.stop()
        if self.actuator is not None:
            self.actuator.stop()
        self._write_health(self.clock.now_ns())
        self.sink.flush()

    # ---- periodic work ---------------------------------------------------------------------
    def derived(self, now_ns: int) -> ReadingBatch:
        """Site totals the devices do not report directly, from what they do report.

        ``site.it_w`` is the UPS output total (when every UPS reading is fresh) and ``site.pue``
        the site meter over it; ``grid.dr_target_w`` / ``grid.dr_active`` come from the DR
        events heard on the grid topic. Skipped where a device reports the value itself.
        """
        st, reg, site = self.state, self.registry, self.site_id
        stale_ns = int(self.site.controller.stale_after_s * NS_PER_S)
        sids: list[int] = []
        vals: list[float] = []
        it_w, it_ts = st.site("it_w")
        reported = it_ts != self._derived_it_ns and now_ns - it_ts <= stale_ns
        if not reported:
            sl = self.topo.level_slice(L_UPS)
            ups, ts = st.node_power_w[sl], st.node_power_ts_ns[sl]
            if ups.size and np.isfinite(ups).all() and ((now_ns - ts) <= stale_ns).all():
                it_w = float(ups.sum())
                self._derived_it_ns = now_ns
                sids.append(reg.id("site.it_w", site=site))
                vals.append(it_w)
                fac_w, fac_ts = st.site("facility_w")
                if np.isfinite(fac_w) and now_ns - fac_ts <= stale_ns and it_w > 0 and fac_w >= it_w:
                    sids.append(reg.id("site.pue", site=site))
                    vals.append(fac_w / it_w)
        active = [e for e in st.dr_events.values() if e.state(now_ns) == "active"]
        sids += [reg.id("grid.dr_active", site=site), reg.id("grid.dr_target_w", site=site)]
        vals += [float(bool(active)), min((e.target_w for e in active), default=0.0)]
        return ReadingBatch.of(now_ns, np.asarray(sids, np.int32), np.asarray(vals), 0, reg)

    def step(self, now_ns: int) -> CapPlan | None:
        """One control period at ``now_ns``: read sources, plan, check, apply, record.

        Everything the period produces reaches the store in one batch and one events write:
        one transaction per period rather than one per source.
        """
        events: list[Event] = []
        sources = list(self.sources)
        if self.actuator is not None:
            # Agent statuses first: their GPU power is this period's server power where no
            # other source reports it.
            events += self.actuator.statuses()
            sources.append(self.actuator.power_batch)
        batches = [src() for src in sources] + [self.derived(now_ns)]
        for b in batches:
            self.state.ingest(b)
        details: dict[int, dict[str, Any]] = {}
        try:
            return self._plan(now_ns, batches, events, details)
        finally:
            batch = ReadingBatch.concat(batches)
            self.sink.write(batch)
            self.stats.readings += len(batch)
            if events:
                self.sink.write_events(events)
                for ev in events:
                    self._noted(ev)
                if self.hooks is not None:
                    self.hooks.submit(events, details, now_ns)

    def _plan(self, now_ns: int, batches: list[ReadingBatch], events: list[Event],
              details: dict[int, dict[str, Any]]) -> CapPlan | None:
        if self.loop is None:
            return None
        pinned = None
        if self.actuator is not None:
            verdicts, pinned = self.actuator.check(now_ns, self.loop.draw_per_gpu_w())
            events += verdicts
        plan = self.loop.step(now_ns, pinned)
        self.last_plan = plan
        st = self.stats
        st.plans += 1
        st.worst_solve_ms = max(st.worst_solve_ms, plan.solve_ms)
        granted = plan.violations(self.topo, of="caps")
        if granted:
            # The plan grants more than a limit allows: a controller bug. Apply only what
            # lowers a cap (never raise one on a bad plan) and raise it as critical.
            st.plans_with_violations += 1
            st.violations.extend(granted[: max(0, 20 - len(st.violations))])
            events.append(Event(now_ns, "plan_violation", "critical", "controller",
                                f"plan {plan.plan_id} grants over a limit; only its cuts applied: {granted[0]}",
                                self.site_id, {"violations": float(len(granted))}))
            if self._applied is not None:
                self._apply(replace(plan, caps_w=np.minimum(plan.caps_w, self._applied)))
            return plan
        at_risk = plan.violations(self.topo)
        if at_risk:
            # The caps fit, but GPUs that have not yet followed them draw more: the limit is
            # at risk until they settle. Counted and reported, and the caps are applied.
            st.periods_at_risk += 1
            events.append(Event(now_ns, "limit_at_risk", "warning", "controller",
                                f"plan {plan.plan_id}: GPUs lagging their caps: {at_risk[0]}", self.site_id,
                                {"limits": float(len(at_risk)), "gpus": float(plan.overdraw_gpus)}))
        if plan.infeasible:
            st.infeasible_plans += 1
        self._apply(plan)
        self._applied = plan.caps_w
        batches.append(plan.to_batch(self.site_id, self.registry))
        events.extend(plan.events(self.site_id))
        events.extend(self.notices.events(plan, self.state, now_ns))
        for advise in self.advisors:
            for advice, detail in advise(plan, self.state, now_ns):
                events.append(advice)
                if detail is not None:
                    details[id(advice)] = detail
        return plan

    def _apply(self, plan: CapPlan) -> None:
        if self.apply is not None:
            self.apply(plan)
        if self.actuator is not None:
            self.actuator.apply(plan)

    async def _control(self) -> None:
        period_s = self.site.controller.period_s
        next_ns = self.clock.now_ns()
        while True:
            now = self.clock.now_ns()
            try:
                if not self.paused:
                    self.step(now)
            except PowerplaneError as exc:
                # A failed period keeps the caps in force; the next period tries again.
                self.stats.control_errors += 1
                self.event(Event(now, "control_error", "error", "controller", str(exc), self.site_id))
            next_ns += int(period_s * NS_PER_S)
            await self.clock.sleep(max(0.0, (next_ns - self.clock.now_ns()) / NS_PER_S))

    async def _health(self) -> None:
        while True:
            await self.clock.sleep(self.health_period_s)
            self._write_health(self.clock.now_ns())

    def _write_health(self, now_ns: int) -> None:
        batches = [self.collectors.health_batch(now_ns, self.site_id), self.sink.health_batch(now_ns, self.site_id)]
        if self.actuator is not None:
            batches.append(self.actuator.health_batch(now_ns))
        self.sink.write(ReadingBatch.concat(batches))
