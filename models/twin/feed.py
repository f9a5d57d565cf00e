"""The twin's state as reading batches, in the SiteState tag convention.

The collectors read the twin's devices over the real protocols; this in-process feed is
the other source: server-level (``node``) power, which on a real site comes from BMCs or
the GPU nodes' own agents, and whole-site snapshots for tests, benchmarks and seeding a
store. One ``TwinFeed`` per (sim, registry) interns its series once; ``batch()`` is then
pure array work.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from models.physics import pue
from models.readings import REGISTRY, ReadingBatch, SeriesRegistry
from models.topology import L_NODE, LEVELS
from models.twin.sim import TwinSim

# Which parts of the site a feed emits.
POWER = "power"
COOLING = "cooling"
SITE = "site"
GRID = "grid"
ALL_PARTS = (POWER, COOLING, SITE, GRID)


class TwinFeed:
    """Snapshot the twin's entity series into one batch per call."""

    def __init__(self, sim: TwinSim, site_id: str, *, registry: SeriesRegistry = REGISTRY,
                 levels: tuple[int, ...] = tuple(range(len(LEVELS))),
                 parts: tuple[str, ...] = ALL_PARTS) -> None:
        self.sim = sim
        self.registry = registry
        self.parts = parts
        topo = sim.topo
        reg = registry
        node_ix: list[int] = []
        node_sid: list[int] = []
        if POWER in parts:
            for lv in levels:
                sl = topo.level_slice(lv)
                limits = topo.node_limit_w[sl]
                for j, ident in enumerate(topo.ids(lv)):
                    node_ix.append(sl.start + j)
                    node_sid.append(reg.id("power.power_w", float(limits[j]), site=site_id,
                                           level=LEVELS[lv], id=ident))
        self._node_ix = np.asarray(node_ix, np.intp)
        self._node_sid = np.asarray(node_sid, np.int32)
        loops = topo.loop_ids
        self._loop_sid = {
            f: np.asarray([reg.id(f"cooling.{f}", site=site_id, loop=lid) for lid in loops], np.int32)
            for f in ("supply_c", "return_c", "flow_lpm", "dp_kpa", "heat_w", "capacity_w", "pumps_running")
        } if COOLING in parts else {}
        self._site_sid = np.asarray([reg.id(f"site.{f}", site=site_id) for f in ("facility_w", "it_w", "pue")],
                                    np.int32)
        self._grid_sid = np.asarray([reg.id(f"grid.{f}", site=site_id)
                                     for f in ("limit_w", "dr_target_w", "dr_active", "frequency_hz",
                                               "price_per_mwh", "carbon_g_per_kwh")], np.int32)

    @classmethod
    def nodes(cls, sim: TwinSim, site_id: str, registry: SeriesRegistry = REGISTRY) -> TwinFeed:
        """Server-level power only: what node agents/BMCs report and the collectors do not."""
        return cls(sim, site_id, registry=registry, levels=(L_NODE,), parts=(POWER,))

    def batch(self) -> ReadingBatch:
        """The twin's current values, stamped with its current time."""
        sim = self.sim
        series: list[NDArray[np.int32]] = []
        values: list[NDArray[np.float64]] = []
        if POWER in self.parts:
            series.append(self._node_sid)
            values.append(sim.node_power_w[self._node_ix])
        if COOLING in self.parts:
            src = {"supply_c": sim.loop_supply_c, "return_c": sim.loop_return_c, "flow_lpm": sim.loop_flow_lpm,
                   "dp_kpa": sim.loop_dp_kpa, "heat_w": sim.loop_heat_w, "capacity_w": sim.loop_capacity_w,
                   "pumps_running": sim.loop_pumps_running}
            for f, sids in self._loop_sid.items():
                series.append(sids)
                values.append(np.asarray(src[f], np.float64))
        if SITE in self.parts:
            p = pue(sim.facility_w, sim.it_w)
            series.append(self._site_sid)
            values.append(np.array([sim.facility_w, sim.it_w, 1.0 if p is None else p]))
        if GRID in self.parts:
            g = sim.grid()
            now = sim.now_ns
            active = [e for e in g.events if e.start_ns <= now < e.end_ns]
            target = min((e.target_w for e in active), default=0.0)
            series.append(self._grid_sid)
            values.append(np.array([g.limit_w, target, float(bool(active)), g.frequency_hz,
                                    g.price_per_mwh, g.carbon_g_per_kwh]))
        if not series:
            return ReadingBatch.empty(self.registry)
        s = np.concatenate(series)
        return ReadingBatch.of(sim.now_ns, s, np.concatenate(values), 0, self.registry)
