"""Prometheus metrics of the long-running processes, read from what they already count.

Every process has its own ``CollectorRegistry`` (never the global default) holding one
custom collector that reads the process's counters *at scrape time*: the control loop,
the agent and the collector update nothing per period for Prometheus. Whatever is derived
from a plan (caps per job and priority, headroom per level) is summarised once per plan
and cached by plan id, so a scrape costs a few array reductions over the consumers at most
once per plan, and never a label set per node or GPU: per-entity series exist only for
the few large things (feeds, UPSes, halls, loops, jobs up to ``MAX_JOB_SERIES``, devices,
agent units), per-level aggregates for rows and racks.

Names follow Prometheus conventions: base units (``_watts``, ``_seconds``), ``_total`` for
counters, ``powerplane_`` prefix; the README lists them beside the InfluxDB schema.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from models.histogram import Histogram

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

MAX_JOB_SERIES = 2_000  # jobs with their own series (those losing the most to caps); the rest per priority
LATENCY_BOUNDS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
PER_ENTITY_LEVELS = ("site", "feed", "ups", "hall", "loop")


def _copy(c: Mapping[Any, int] | Counter[Any]) -> dict[Any, int]:
    """A copy of a counter another thread may be adding keys to."""
    for _ in range(5):
        try:
            return dict(c)
        except RuntimeError:  # changed size during iteration: try again
            continue
    return {}


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


class _Families:
    """Builds metric families by name, so that a collector reads like a list of series."""

    def __init__(self) -> None:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self._c, self._g = CounterMetricFamily, GaugeMetricFamily
        self.out: dict[str, Any] = {}

    def _fam(self, kind: str, name: str, doc: str, labels: tuple[str, ...]) -> Any:
        fam = self.out.get(name)
        if fam is None:
            cls = self._c if kind == "counter" else self._g
            fam = cls(name, doc, labels=list(labels))
            self.out[name] = fam
        return fam

    def gauge(self, name: str, doc: str, value: float, **labels: str) -> None:
        """One gauge sample (NaN/inf skipped)."""
        fam = self._fam("gauge", name, doc, tuple(labels))
        if _finite(value):
            fam.add_metric(list(labels.values()), float(value))

    def counter(self, name: str, doc: str, value: float, **labels: str) -> None:
        """One counter sample (``name`` without ``_total``: prometheus_client adds it)."""
        fam = self._fam("counter", name, doc, tuple(labels))
        if _finite(value):
            fam.add_metric(list(labels.values()), float(value))

    def histogram(self, name: str, doc: str, h: Histogram, scale: float = 1.0,
                  bounds: list[float] = LATENCY_BOUNDS_S) -> None:
        """A ``models.histogram.Histogram`` (values in 1/``scale`` of the base unit) as a Prometheus histogram."""
        from prometheus_client.core import HistogramMetricFamily

        cum = h.cumulative([b / scale for b in bounds])
        buckets = [(repr(b), float(n)) for b, n in zip(bounds, cum, strict=True)] + [("+Inf", float(h.n))]
        self.out[name] = HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum * scale)

    def families(self) -> list[Metric]:
        return list(self.out.values())


class _Collector:
    """A prometheus_client custom collector around a function that fills ``_Families``."""

    def __init__(self, fill: Callable[[_Families], None]) -> None:
        self.fill = fill
        self.errors = 0

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        try:
            self.fill(f)
        except Exception:  # a scrape must not fail on a counter that moved under it: what was built is served
            self.errors += 1
        f.counter("powerplane_metrics_errors", "scrapes whose collection failed part-way", self.errors)
        yield from f.families()

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: families vary with the site


def registry_of(fill: Callable[[_Families], None]) -> CollectorRegistry:
    """A process's own registry with one collector."""
    from prometheus_client.registry import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(fill))  # type: ignore[arg-type]
    return reg


# ---- the controller ---------------------------------------------------------------------------

class PlanDigest:
    """What Prometheus shows of one plan, computed once per plan id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plan_id = -1
        self._jobs_version = -1
        self.values: dict[str, Any] = {}

    def get(self, plan: Any, job_sources: Mapping[str, str], jobs_version: int) -> dict[str, Any]:
        """The digest of ``plan`` (recomputed when the plan or the job table changed)."""
        with self._lock:
            if plan.plan_id != self._plan_id or jobs_version != self._jobs_version:
                self.values = digest(plan, job_sources)
                self._plan_id, self._jobs_version = plan.plan_id, jobs_version
            return self.values


def digest(plan: Any, job_sources: Mapping[str, str]) -> dict[str, Any]:
    """Per priority, per job (the ``MAX_JOB_SERIES`` that lose the most) and per level, from a plan."""
    p = plan.problem
    topo = p.topo
    count = p.count
    prio = p.structure.priority.astype(np.int64)
    cap = plan.consumer_caps_w * count
    demand = np.fmax(plan.consumer_demand_w, 0.0) * count
    cut = np.maximum(demand - cap, 0.0)
    capped = np.where(cap < demand - 1e-6, count, 0.0)
    size = int(prio.max()) + 1 if prio.size else 1
    per_prio = {k: np.bincount(prio, w, minlength=size) for k, w in
                (("cap", cap), ("demand", demand), ("cut", cut), ("gpus", count), ("capped", capped))}
    prios = [int(x) for x in np.flatnonzero(per_prio["gpus"])]
    jobs: list[dict[str, Any]] = []
    if topo.job_ids:
        j = p.job
        has = j >= 0
        n = len(topo.job_ids)
        per_job = {k: np.bincount(j[has], w[has], minlength=n) for k, w in
                   (("cap", cap), ("demand", demand), ("cut", cut), ("gpus", count), ("capped", capped))}
        order = np.argsort(-per_job["cut"], kind="stable")[:MAX_JOB_SERIES]
        for k in order.tolist():
            if per_job["gpus"][k] <= 0:
                continue
            jid = topo.job_ids[k]
            jobs.append({"job": jid, "source": job_sources.get(jid, "site"), "priority": str(int(topo.job_priority[k])),
                         "cap": float(per_job["cap"][k]), "demand": float(per_job["demand"][k]),
                         "cut": float(per_job["cut"][k]), "gpus": float(per_job["gpus"][k]),
                         "capped": float(per_job["capped"][k])})
    levels: dict[str, dict[str, Any]] = {}
    entities: list[tuple[str, str, float, float]] = []
    for level, ids, f in plan._entities(topo):
        if "headroom_w" not in f or level == "job":
            continue
        room = np.asarray(f["headroom_w"], np.float64)[: len(ids)]
        lim = np.asarray(f["limit_w"], np.float64)[: len(ids)]
        load = np.asarray(f["load_w"], np.float64)[: len(ids)]
        fin = np.isfinite(lim) & (lim > 0)
        levels[level] = {"min_headroom": float(room[fin].min()) if fin.any() else math.nan,
                         "min_ratio": float((room[fin] / lim[fin]).min()) if fin.any() else math.nan,
                         "load": float(load.sum()), "limit": float(lim[fin].sum()) if fin.any() else math.nan,
                         "binding": float(np.asarray(f.get("binding", np.zeros(len(ids))))[: len(ids)].sum())}
        if level in PER_ENTITY_LEVELS:
            entities += [(level, str(i), float(room[k]), float(lim[k])) for k, i in enumerate(ids)]
    return {"prios": prios, "per_prio": per_prio, "jobs": jobs, "levels": levels, "entities": entities}


def controller_registry(plane: Any, *, epoch: int, link: Any = None, period_wall_s: float = 1.0) -> CollectorRegistry:
    """The controller's registry: loop health, plans, caps per job and priority, headroom, DR, store,
    hooks, actuation, jobs."""
    cache = PlanDigest()

    def fill(f: _Families) -> None:
        st = plane.stats
        f.gauge("powerplane_controller_epoch", "authority epoch this controller holds (0: none)", epoch)
        f.counter("powerplane_controller_periods", "control period slots since start (planned or missed)", st.periods)
        f.counter("powerplane_controller_plans", "plans made", st.plans)
        f.counter("powerplane_controller_missed_periods", "periods skipped because the loop was a period late",
                  st.missed_periods)
        f.counter("powerplane_controller_errors", "control periods that failed", st.control_errors)
        f.counter("powerplane_controller_plans_with_violations", "plans that granted over a limit (only cuts applied)",
                  st.plans_with_violations)
        f.counter("powerplane_controller_infeasible_plans", "plans with a constraint whose floors exceed it",
                  st.infeasible_plans)
        f.counter("powerplane_controller_periods_at_risk", "periods with a limit at risk from GPUs lagging caps",
                  st.periods_at_risk)
        f.histogram("powerplane_controller_period_lateness_seconds", "how late each period started", st.late_ms,
                    scale=1e-3)
        f.histogram("powerplane_controller_period_duration_seconds", "time one period took (all stages)",
                    st.period_ms, scale=1e-3)
        for stage, ms in dict(st.stage_ms).items():
            f.gauge("powerplane_controller_stage_seconds", "time the last period spent per stage", ms / 1e3,
                    stage=stage)
        for stage, ms in dict(st.stage_worst_ms).items():
            f.gauge("powerplane_controller_stage_worst_seconds", "worst time per stage since start", ms / 1e3,
                    stage=stage)
        last = st.last_period_wall
        f.gauge("powerplane_controller_last_period_age_seconds", "wall seconds since the last period completed",
                time.monotonic() - last if last else math.nan)
        f.gauge("powerplane_controller_period_seconds", "the control period (wall seconds)", period_wall_s)
        f.counter("powerplane_controller_readings", "device readings taken in", st.readings)
        for reason, n in _copy(st.batches_rejected).items():
            f.counter("powerplane_controller_batches_rejected", "reading batches refused at the wire edge", n,
                      reason=str(reason))
        for reason, n in _copy(st.readings_rejected).items():
            f.counter("powerplane_controller_readings_rejected", "readings refused at the wire edge", n,
                      reason=str(reason))
        for kind, n in _copy(st.events).items():
            f.counter("powerplane_events", "events recorded, by kind", n, kind=str(kind))
        # DR
        f.gauge("powerplane_dr_target_watts", "demand-response target in force (0: none)", st.dr_target_w)
        f.gauge("powerplane_dr_active", "1 while a demand-response event is active", float(st.dr_target_w > 0))
        f.gauge("powerplane_dr_stranded_watts", "DR target the site could have drawn but did not", st.dr_stranded_w)
        _store(f, plane)
        _hooks(f, plane)
        _actuation(f, plane)
        _jobs(f, plane)
        if link is not None:
            _mqtt(f, link)
        plan = plane.last_plan
        if plan is not None:
            _plan(f, plan, cache.get(plan, _job_sources(plane), plane.jobs_version))

    return registry_of(fill)


def _job_sources(plane: Any) -> dict[str, str]:
    a = plane.jobs.latest if plane.jobs is not None else None
    return {j.id: j.facts.source for j in a.jobs} if a is not None else {}


def _plan(f: _Families, plan: Any, d: dict[str, Any]) -> None:
    f.gauge("powerplane_plan_id", "id of the last plan", plan.plan_id)
    f.gauge("powerplane_plan_timestamp_seconds", "site time of the last plan", plan.ts_ns / 1e9)
    f.gauge("powerplane_budget_watts", "facility budget of the last plan", plan.budget_w)
    f.gauge("powerplane_it_budget_watts", "IT budget of the last plan", plan.it_budget_w)
    f.gauge("powerplane_plan_solve_seconds", "solver time of the last plan", plan.solve_ms / 1e3)
    f.gauge("powerplane_gpus_capped", "GPUs capped below their demand", plan.gpus_capped)
    f.gauge("powerplane_gpus_stale", "GPUs without fresh telemetry (accounted at worst case)", plan.stale_gpus)
    f.gauge("powerplane_gpus_overdraw", "GPUs drawing over their cap", plan.overdraw_gpus)
    f.gauge("powerplane_infeasible_constraints", "constraints whose floors exceed them", len(plan.infeasible))
    pp = d["per_prio"]
    for k in d["prios"]:
        label = str(k)
        f.gauge("powerplane_priority_cap_watts", "caps granted per priority (sum over its GPUs)", pp["cap"][k],
                priority=label)
        f.gauge("powerplane_priority_demand_watts", "predicted demand per priority", pp["demand"][k], priority=label)
        f.gauge("powerplane_priority_cut_watts", "demand not granted per priority", pp["cut"][k], priority=label)
        f.gauge("powerplane_priority_gpus", "GPUs per priority (16: no job)", pp["gpus"][k], priority=label)
        f.gauge("powerplane_priority_gpus_capped", "GPUs capped below demand per priority", pp["capped"][k],
                priority=label)
    for j in d["jobs"]:
        lab = {"job": j["job"], "source": j["source"], "priority": j["priority"]}
        f.gauge("powerplane_job_cap_watts", "caps granted to a job (sum over its GPUs)", j["cap"], **lab)
        f.gauge("powerplane_job_demand_watts", "predicted demand of a job", j["demand"], **lab)
        f.gauge("powerplane_job_cut_watts", "what a job loses to caps: demand not granted", j["cut"], **lab)
        f.gauge("powerplane_job_gpus", "GPUs of a job", j["gpus"], **lab)
        f.gauge("powerplane_job_gpus_capped", "GPUs of a job capped below demand", j["capped"], **lab)
    for level, v in d["levels"].items():
        f.gauge("powerplane_level_headroom_min_watts", "least headroom over the entities of a level", v["min_headroom"],
                level=level)
        f.gauge("powerplane_level_headroom_min_ratio", "least headroom / limit over a level", v["min_ratio"],
                level=level)
        f.gauge("powerplane_level_load_watts", "planned load summed over a level", v["load"], level=level)
        f.gauge("powerplane_level_limit_watts", "limits in force summed over a level", v["limit"], level=level)
    for level, ident, room, lim in d["entities"]:
        f.gauge("powerplane_headroom_watts", "headroom of one site, feed, UPS, hall or loop", room, level=level,
                id=ident)
        f.gauge("powerplane_limit_watts", "limit in force of one site, feed, UPS, hall or loop", lim, level=level,
                id=ident)


def _store(f: _Families, plane: Any) -> None:
    s = plane.store_stats()
    f.counter("powerplane_store_written_points", "points the store acknowledged", s.written_points)
    f.counter("powerplane_store_written_events", "events the store acknowledged", s.written_events)
    f.counter("powerplane_store_rejected_points", "points the store refused (never retried)", s.rejected_points)
    f.counter("powerplane_store_dropped_points", "points dropped (spool or write queue full)", s.dropped_points)
    f.gauge("powerplane_store_spooled_points", "points waiting in the durable spool", s.spooled_points)
    f.gauge("powerplane_store_queue_depth", "writes waiting for the store thread",
            plane.writer.depth if plane.writer is not None else 0)
    f.gauge("powerplane_store_ok", "1 unless the store's last write failed", float(not s.last_error))


def _hooks(f: _Families, plane: Any) -> None:
    if plane.hooks is None:
        return
    hs = plane.hooks.stats()
    f.counter("powerplane_hook_events", "scheduler hook events submitted", hs.hook_events)
    f.counter("powerplane_hook_coalesced", "hook events merged into a pending one", hs.coalesced)
    for name, s in dict(hs.sinks).items():
        for outcome in ("delivered", "retried", "dead_lettered", "failed", "dropped"):
            f.counter("powerplane_hook_deliveries", "hook deliveries per sink and outcome", getattr(s, outcome),
                      sink=name, outcome=outcome)
        f.gauge("powerplane_hook_queue_depth", "events waiting per hook sink", s.queue_depth, sink=name)


def _actuation(f: _Families, plane: Any) -> None:
    a = plane.actuator
    if a is None:
        return
    h = a.health()
    for mode in ("controlled", "fallback", "unknown"):
        f.gauge("powerplane_nodes", "nodes per mode, as their agents report", h.get(f"nodes_{mode}", 0.0), mode=mode)
    f.counter("powerplane_commands", "signed rack commands published", h.get("commands", 0.0))
    f.counter("powerplane_agent_statuses", "agent statuses taken in", h.get("statuses", 0.0))
    f.counter("powerplane_agent_statuses_rejected", "agent statuses refused", h.get("bad_statuses", 0.0))
    f.gauge("powerplane_nodes_noncompliant", "nodes not following their caps now", h.get("noncompliant_nodes", 0.0))
    f.counter("powerplane_lease_fallbacks", "nodes that fell back to their safe cap", h.get("lease_fallbacks", 0.0))
    if "settle_p95_s" in h:
        f.gauge("powerplane_cap_settle_p95_seconds", "95th percentile of the time a cut took to show in the draw",
                h["settle_p95_s"])


def _jobs(f: _Families, plane: Any) -> None:
    feed = plane.jobs
    f.gauge("powerplane_jobs_version", "job table version planned with (0: the site file's jobs)", plane.jobs_version)
    if feed is None:
        return
    s = feed.stats()
    for src in ("slurm", "kubernetes"):
        f.gauge("powerplane_jobs_live", "live scheduler jobs per source", s.live.get(src, 0), source=src)
        f.counter("powerplane_jobs_started", "scheduler jobs taken in per source", s.started.get(src, 0), source=src)
        f.counter("powerplane_jobs_ended", "scheduler jobs that ended per source", s.ended.get(src, 0), source=src)
    for (src, reason), n in s.rejected.items():
        f.counter("powerplane_jobs_rejected", "scheduler entries refused, per source and reason", n, source=src,
                  reason=reason)
    f.counter("powerplane_jobs_nodes_taken", "nodes a newer job took from an older one", s.nodes_taken)
    f.counter("powerplane_jobs_rebuilds", "job assignments built (the table changed)", s.rebuilds)
    f.gauge("powerplane_jobs_rebuild_seconds", "time the last job assignment took to build", s.last_build_ms / 1e3)
    f.counter("powerplane_jobs_poll_errors", "job feed polls that failed", s.poll_errors)
    for name, up in feed.health().items():
        f.gauge("powerplane_jobs_source_up", "1 while a job source works (spool readable, watch synced)", up,
                source=name)


def _mqtt(f: _Families, link: Any) -> None:
    f.gauge("powerplane_mqtt_connected", "1 while connected to the broker", float(link.connected.is_set()))
    f.counter("powerplane_mqtt_connects", "connections made to the broker", link.connects)
    f.counter("powerplane_mqtt_disconnects", "connections lost", link.disconnects)


# ---- the agent ----------------------------------------------------------------------------------

def agent_registry(host: Any, clock: Any) -> CollectorRegistry:
    """The agent's registry: mode, enforced vs requested, rejects by reason, lease age, apply latency."""

    def fill(f: _Families) -> None:
        now = clock.now_ns()
        modes: Counter[str] = Counter()
        total = Histogram(1.0, 60_000.0)
        for u in host.units:
            lab = {"unit": u.sender}
            modes[u.mode] += len(u.nodes)
            for mode in ("starting", "controlled", "fallback"):
                f.gauge("powerplane_agent_unit_mode", "1 for the mode a unit is in", float(u.mode == mode), mode=mode,
                        **lab)
            f.gauge("powerplane_agent_requested_watts", "caps the controller asked for, sum over a unit's GPUs",
                    float(np.nansum(u.requested)) if u.requested.size else math.nan, **lab)
            f.gauge("powerplane_agent_enforced_watts", "limits the GPUs enforce, sum over a unit's GPUs",
                    float(np.nansum(u.enforced)) if u.enforced.size else math.nan, **lab)
            f.gauge("powerplane_agent_gpus", "GPUs a unit caps", float(u.sel.size), **lab)
            f.gauge("powerplane_agent_lease_age_seconds", "site seconds since the last valid command",
                    (now - u.last_command_ns) / 1e9 if u.last_command_ns else math.nan, **lab)
            f.gauge("powerplane_agent_lease_remaining_seconds", "site seconds until the lease runs out (controlled)",
                    (u.lease_expires_ns - now) / 1e9 if u.mode == "controlled" else math.nan, **lab)
            f.gauge("powerplane_agent_epoch", "epoch of the last command obeyed", float(u.epoch), **lab)
            total.merge(u.stats.apply_hist)
            for reason, n in _copy(u.stats.rejected).items():
                f.counter("powerplane_agent_rejected", "commands refused, by reason", n, reason=str(reason), **lab)
        for mode in ("starting", "controlled", "fallback"):
            f.gauge("powerplane_agent_nodes", "nodes per mode", modes.get(mode, 0), mode=mode)
        units = host.units
        f.counter("powerplane_agent_commands_applied", "commands whose caps were applied",
                  sum(u.stats.applied for u in units))
        f.counter("powerplane_agent_commands_renewed", "valid commands whose caps were already in force",
                  sum(u.stats.renewed for u in units))
        f.counter("powerplane_agent_fallbacks", "lease fallbacks to the safe cap",
                  sum(u.stats.fallbacks for u in units))
        f.counter("powerplane_agent_apply_errors", "caps the backend failed to apply",
                  sum(u.stats.apply_errors for u in units))
        f.histogram("powerplane_agent_apply_seconds", "time to set the GPUs' limits", total, scale=1e-3)
        if host.link is not None:
            _mqtt(f, host.link)

    return registry_of(fill)


# ---- the collector -------------------------------------------------------------------------------

def collector_registry(pub: Any) -> CollectorRegistry:
    """``collect --publish``'s registry: per device up, poll latency and rejects; what was published."""

    def fill(f: _Families) -> None:
        for h in pub.collectors.health():
            lab = {"device": h.device, "protocol": h.protocol}
            f.gauge("powerplane_collector_device_up", "1 while the device answers", float(h.up), **lab)
            f.gauge("powerplane_collector_poll_seconds", "latency of the device's last poll", h.latency_s, **lab)
            f.counter("powerplane_collector_polls", "polls of the device", h.polls, **lab)
            f.counter("powerplane_collector_readings", "readings taken from the device", h.readings, **lab)
            f.gauge("powerplane_collector_consecutive_failures", "failed polls in a row", h.consecutive_failures,
                    **lab)
            f.counter("powerplane_collector_skipped_polls", "poll slots missed (the previous poll overran)",
                      h.skipped_slots, **lab)
            for reason, n in _copy(h.rejected).items():
                f.counter("powerplane_collector_rejected", "readings refused, by reason", n,
                          reason=getattr(reason, "name", str(reason)).lower(), **lab)
            f.counter("powerplane_collector_messages_bad", "MQTT payloads skipped as malformed", h.messages_bad, **lab)
        f.counter("powerplane_collector_published_messages", "reading batches published", pub.published_messages)
        f.counter("powerplane_collector_published_readings", "readings published", pub.published_readings)
        _mqtt(f, pub.link)

    return registry_of(fill)


# ---- health: liveness and readiness ------------------------------------------------------------

Check = Callable[[], tuple[bool, str]]
READY_MAX_STALE_SHARE = 0.5  # readiness: at most this share of GPUs without fresh telemetry / agent status


def controller_checks(plane: Any, *, epoch: int, period_wall_s: float, control: bool) -> tuple[Check, Check]:
    """Liveness (a period completed within 3 periods) and readiness (live, the authority epoch held,
    telemetry and the agents' statuses fresh for at least half of the GPUs / nodes)."""

    def live() -> tuple[bool, str]:
        last = plane.stats.last_period_wall
        if not last:
            return False, "no period completed yet (starting)"
        age = time.monotonic() - last
        if age > 3 * period_wall_s or not plane.running:
            return False, f"no period completed for {age:.1f} s (3 periods are {3 * period_wall_s:.1f} s)"
        return True, f"last period {age:.1f} s ago"

    def ready() -> tuple[bool, str]:
        ok, why = live()
        if not ok:
            return ok, why
        if not control:
            return (plane.stats.readings > 0, "collecting, control off" if plane.stats.readings else "no readings yet")
        if epoch <= 0:
            return False, "no authority epoch"
        plan = plane.last_plan
        if plan is None:
            return False, "no plan yet"
        n = plane.topo.n_gpus
        if plan.stale_gpus > READY_MAX_STALE_SHARE * n:
            return False, f"{plan.stale_gpus:,} of {n:,} GPUs without fresh telemetry"
        if plane.actuator is not None:
            modes = dict(plane.actuator.verifier.stats.modes)
            total = sum(modes.values())
            unknown = modes.get("unknown", 0)
            if total and unknown > READY_MAX_STALE_SHARE * total:
                return False, f"{unknown:,} of {total:,} nodes without a fresh agent status"
        return True, f"epoch {epoch}, plan {plan.plan_id}"

    return live, ready


def agent_checks(host: Any, *, stall_s: float = 5.0) -> tuple[Check, Check]:
    """Liveness (the lease watch ran within ``stall_s``) and readiness (GPUs opened, broker connected)."""

    def live() -> tuple[bool, str]:
        last = host.last_watch_wall
        if not last:
            return False, "starting"
        age = time.monotonic() - last
        return age <= stall_s, f"lease watch ran {age:.1f} s ago"

    def ready() -> tuple[bool, str]:
        ok, why = live()
        if not ok:
            return ok, why
        if not host.opened:
            return False, "GPUs not opened yet"
        if host.link is None or not host.link.connected.is_set():
            return False, "not connected to the broker"
        return True, ", ".join(f"{m} {n}" for m, n in sorted(host.modes().items()))

    return live, ready


def collector_checks(pub: Any, *, stall_s: float = 5.0) -> tuple[Check, Check]:
    """Liveness (publishing ran within ``stall_s``) and readiness (broker connected, a device up)."""

    def live() -> tuple[bool, str]:
        last = pub.last_flush_wall
        if not last:
            return False, "starting"
        age = time.monotonic() - last
        return age <= stall_s, f"published {age:.1f} s ago"

    def ready() -> tuple[bool, str]:
        ok, why = live()
        if not ok:
            return ok, why
        if not pub.link.connected.is_set():
            return False, "not connected to the broker"
        health = pub.collectors.health()
        up = sum(1 for h in health if h.up)
        return up > 0, f"{up}/{len(health)} devices up"

    return live, ready
