"""The control plane under an authority it does not always hold, stepped by hand: a standby plans and
publishes nothing, a takeover starts a new epoch with a command for every rack, and authority that ends
while a period runs withholds the rest of its commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controllers.actuation.actuator import Actuator
from controllers.actuation.messages import SiteKey
from controllers.authority import AuthorityStatus
from models.clock import ManualClock
from models.site import SiteConfig
from models.topology import L_RACK, Topology
from models.twin.feed import TwinFeed
from models.twin.sim import TwinSim
from powerplane.runtime import ControlPlane
from store.embedded import EmbeddedStore


class Switch:
    """An authority whose epoch the test sets (the etcd campaign is tested against etcd); ``until`` calls
    of ``current()`` answer the epoch, then None (authority ending while a period runs)."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.until: int | None = None
        self.calls = 0

    def current(self) -> int | None:
        self.calls += 1
        if self.until is not None and self.calls > self.until:
            return None
        return self.epoch

    def status(self) -> AuthorityStatus:
        return AuthorityStatus(role="authority" if self.epoch else "standby", epoch=self.epoch or 0)


def rig(site: SiteConfig, topo: Topology, tmp_path: Path) -> tuple[ControlPlane, Switch, ManualClock, TwinSim,
                                                                      EmbeddedStore]:
    clock = ManualClock()
    sim = TwinSim(site, topo, start_ns=clock.now_ns(), seed=3)
    auth = Switch()
    act = Actuator(site, topo, SiteKey(b"a" * 32), None, gate=lambda ep: auth.current() == ep)
    store = EmbeddedStore(tmp_path)
    plane = ControlPlane(site, topo, clock, store, sources=[TwinFeed(sim, site.site.name).batch], actuator=act,
                         authority=auth, holder="ctl-test", threaded_store=False)
    return plane, auth, clock, sim, store


def step(plane: ControlPlane, clock: ManualClock, sim: TwinSim, n: int = 1) -> None:
    for _ in range(n):
        clock.advance(1.0)
        sim.advance_to(clock.now_ns())
        plane.step(clock.now_ns())


def test_standby_plans_warm_and_publishes_nothing_then_takes_over(demo_site: SiteConfig, demo_topo: Topology,
                                                                   tmp_path: Path) -> None:
    plane, auth, clock, sim, store = rig(demo_site, demo_topo, tmp_path)
    assert plane.actuator is not None
    pub = plane.actuator.publisher
    step(plane, clock, sim, 5)
    st = plane.stats
    assert (st.plans, st.standby_plans, st.epoch, pub.stats.commands) == (5, 5, 0, 0)
    assert store.stats().written_points == 0  # the authority stores; a standby does not
    # Takeover: epoch 7, seq from 1, every rack a command in the same period.
    before = plane.loop.enforced_w.copy() if plane.loop is not None else None
    auth.epoch = 7
    step(plane, clock, sim)
    racks = demo_topo.count(L_RACK)
    assert (st.epoch, pub.epoch, pub.stats.commands) == (7, 7, racks)
    assert pub.rack_order.max() >> 40 == 7 and (pub.rack_order & ((1 << 40) - 1)).max() == racks
    (take,) = st.takeovers
    assert take["epoch"] == 7 and take["first_plan_ns"] == take["acquired_ns"] and take["plans_before"] == 5
    assert before is not None and np.isfinite(before).all()  # it had planned all along (warm)
    assert store.stats().written_points > 0 and st.events["authority_acquired"] == 1
    # Losing it: standby again, nothing more sent.
    auth.epoch = None
    step(plane, clock, sim, 3)
    assert pub.stats.commands == racks and st.epoch == 0 and st.events["authority_lost"] == 1
    # Back under a new epoch: a whole new round of commands.
    auth.epoch = 9
    step(plane, clock, sim)
    assert pub.epoch == 9 and pub.stats.commands == 2 * racks and len(st.takeovers) == 2
    store.close()


def test_authority_that_ends_mid_period_withholds_the_rest(demo_site: SiteConfig, demo_topo: Topology,
                                                           tmp_path: Path) -> None:
    plane, auth, clock, sim, store = rig(demo_site, demo_topo, tmp_path)
    assert plane.actuator is not None
    pub = plane.actuator.publisher
    auth.epoch = 3
    auth.until = 4  # the period's own check, then three commands' worth
    step(plane, clock, sim)
    racks = demo_topo.count(L_RACK)
    assert pub.stats.commands == 3 and pub.stats.withheld == racks - 3
    assert plane.actuator.health()["withheld"] == racks - 3
    step(plane, clock, sim)
    assert plane.stats.epoch == 0 and pub.stats.commands == 3  # standby now: nothing more
    store.close()


def test_a_takeover_ramps_from_what_the_agents_enforce(demo_site: SiteConfig, demo_topo: Topology,
                                                       tmp_path: Path) -> None:
    plane, auth, clock, sim, store = rig(demo_site, demo_topo, tmp_path)
    assert plane.actuator is not None and plane.loop is not None
    step(plane, clock, sim, 3)
    # The agents report a lower cap than this standby planned (the old authority's): the ramp starts there.
    low = np.full(demo_topo.n_gpus, 400.0)
    plane.actuator.verifier.enforced_w[:] = low
    auth.epoch = 2
    step(plane, clock, sim)
    ramp = demo_site.controller.ramp_w_per_s * demo_site.controller.period_s
    assert plane.last_plan is not None
    assert (plane.last_plan.caps_w <= low + ramp + 1e-6).all()
    store.close()
