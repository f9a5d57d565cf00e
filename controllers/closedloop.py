"""The controller closed around the twin, in process: what ``plan`` and ``advise`` look at.

The twin's server power feeds the state each period, the plan's caps go straight to the
twin's GPUs (no agents, no broker): the controller's decisions on a site, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass

from controllers.loop import ControlLoop
from controllers.plan import CapPlan
from models.grid import DemandResponseEvent
from models.readings import SeriesRegistry
from models.site import SiteConfig
from models.state import SiteState
from models.topology import Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim


@dataclass(frozen=True)
class Snapshot:
    """The last plan after running the closed loop, and what happened on the way."""

    plan: CapPlan
    dr_events: dict[str, DemandResponseEvent]
    t_s: float
    violations_in_run: int  # limits the accounted plans would have exceeded, summed over the run


def run(site: SiteConfig, topo: Topology, *, at_s: float, seed: int | None = None) -> Snapshot:
    """Run the twin under control for ``at_s`` simulated seconds; the plan at ``at_s``."""
    reg = SeriesRegistry()
    sim = TwinSim(site, topo, seed=seed)
    feed = TwinFeed(sim, site.site.name, registry=reg)
    state = SiteState(topo, reg)
    loop = ControlLoop(site, topo, state, registry=reg)
    per = max(1, round(site.controller.period_s / sim.step_s))
    violations = 0
    while True:
        state.ingest(feed.batch())
        for ev in sim.grid().events:
            state.add_dr_event(ev)
        plan = loop.step(sim.now_ns)
        violations += len(plan.violations(topo))
        if sim.t_s >= at_s:
            return Snapshot(plan, dict(state.dr_events), sim.t_s, violations)
        sim.set_caps(plan.caps_w)
        sim.step(per)
