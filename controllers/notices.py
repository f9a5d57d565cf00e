"""Scheduler-facing events from the plans: caps changed per job, headroom low, DR start/end.

The plan's own events (``CapPlan.events``) explain every period's decision for the store;
these are the few a scheduler acts on, raised on *changes* only, so that a webhook is not
called every period for a cap that did not move:

* ``cap_changed``: a job's per-GPU cap moved by at least ``CAP_STEP_W`` (or was released), and
  where each job stands the first time a controller plans it (after a restart too);
* ``headroom_low``: a limit's headroom fell below ``[hooks].headroom_low_share`` of it
  (once, until it recovers above twice that share);
* ``dr_start`` / ``dr_end``: a demand-response event became active / ended.
"""

from __future__ import annotations

import numpy as np

from controllers.plan import CapPlan
from models.events import EV_CAP_CHANGED, EV_DR_END, EV_DR_START, EV_HEADROOM_LOW, Event
from models.site import SiteConfig
from models.state import SiteState
from models.topology import Topology

CAP_STEP_W = 25.0


class Notices:
    """Remembers what was last said per job, constraint and DR event."""

    def __init__(self, site: SiteConfig, topo: Topology) -> None:
        self.site_id = site.site.name
        self.topo = topo
        self.low_share = site.hooks.headroom_low_share
        self.job_cap_w: dict[str, float] = {}  # by job id: live jobs come and go
        self._ids = topo.job_ids
        self.low: set[str] = set()
        self.dr_state: dict[str, str] = {}

    def events(self, plan: CapPlan, state: SiteState, now_ns: int) -> list[Event]:
        """The changes worth telling a scheduler about, at ``now_ns``."""
        out = self._jobs(plan) + self._headroom(plan) + self._dr(state, now_ns)
        return out

    def _jobs(self, plan: CapPlan) -> list[Event]:
        p = plan.problem
        topo = p.topo
        out: list[Event] = []
        if not topo.job_ids:
            return out
        j = p.job
        has = j >= 0
        n = len(topo.job_ids)
        gpus = np.bincount(j[has], p.count[has], minlength=n)
        cap = np.bincount(j[has], (plan.consumer_caps_w * p.count)[has], minlength=n) / np.maximum(gpus, 1)
        ceiling = np.bincount(j[has], (p.ceiling_w * p.count)[has], minlength=n) / np.maximum(gpus, 1)
        for k, job in enumerate(topo.job_ids):
            if gpus[k] == 0:
                continue
            prev = self.job_cap_w.get(job, np.nan)
            released = cap[k] >= ceiling[k] - 1e-6
            # A job seen for the first time is told where it stands, released too: after a
            # controller restart the last thing it heard may be a cap the new plan has lifted.
            moved = np.isnan(prev) or abs(cap[k] - prev) >= CAP_STEP_W or (released and prev < ceiling[k] - 1e-6)
            if not moved:
                continue
            self.job_cap_w[job] = float(cap[k])
            what = "released to its ceiling" if released else f"capped at {cap[k]:.0f} W per GPU"
            out.append(Event(plan.ts_ns, EV_CAP_CHANGED, "info", "controller",
                             f"job {job} (priority {int(topo.job_priority[k])}, {int(gpus[k])} GPUs) {what}",
                             job, {"value": float(cap[k]), "priority": float(topo.job_priority[k]),
                                   "gpus": float(gpus[k])}))
        if topo.job_ids is not self._ids:  # the job table changed: forget ended jobs
            self._ids = topo.job_ids
            live = set(topo.job_ids)
            self.job_cap_w = {k: v for k, v in self.job_cap_w.items() if k in live}
        return out

    def _headroom(self, plan: CapPlan) -> list[Event]:
        out: list[Event] = []
        lim, load = plan.constraint_limit_w, plan.constraint_load_w
        for c, name in enumerate(plan.constraint_names):
            if not np.isfinite(lim[c]) or lim[c] <= 0:
                continue
            room = float(lim[c] - load[c])
            if room < self.low_share * lim[c] and name not in self.low:
                self.low.add(name)
                out.append(Event(plan.ts_ns, EV_HEADROOM_LOW, "warning", "controller",
                                 f"{name}: {room / 1e3:,.1f} kW headroom left of {lim[c] / 1e3:,.1f} kW", name,
                                 {"value": room, "limit_w": float(lim[c])}))
            elif room >= 2 * self.low_share * lim[c]:
                self.low.discard(name)
        return out

    def _dr(self, state: SiteState, now_ns: int) -> list[Event]:
        out: list[Event] = []
        for ev_id, e in state.dr_events.items():
            s = e.state(now_ns) or "none"
            was = self.dr_state.get(ev_id)
            self.dr_state[ev_id] = s
            if s == "active" and was != "active":
                out.append(Event(now_ns, EV_DR_START, "warning", "grid",
                                 f"demand response {ev_id}: site must stay under {e.target_w / 1e3:,.0f} kW",
                                 ev_id, {"value": e.target_w}))
            elif was == "active" and s != "active":
                out.append(Event(now_ns, EV_DR_END, "info", "grid", f"demand response {ev_id} ended", ev_id,
                                 {"value": e.target_w}))
        return out
