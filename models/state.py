"""The latest known state of a site, fed by reading batches: what the controller reads.

Readings reach the state through their series tags, by this convention (collectors emit
it, the store keeps it, the controller relies on it):

    power.<field>   tags level=<feed|ups|hall|row|rack|pdu|node>, id=<topology id>
    cooling.<field> tag  loop=<loop id>
    site.<field>    (no entity tag)        grid.<field>   (no entity tag)

Series with further tags (``phase``, ``outlet``, ``device`` sub-points...) are details, not
entity totals, and are ignored here. Every slot keeps its value and the timestamp of the
reading, so a consumer can tell fresh from stale; an older reading never overwrites a
newer one. Demand-response events are structured, not scalar, and arrive through
``add_dr_event``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.grid import DemandResponseEvent, GridSignals
from models.physics import pue
from models.readings import REGISTRY, Quality, ReadingBatch, SeriesRegistry
from models.topology import L_NODE, L_PDU, L_UPS, LEVELS, Topology

LOOP_FIELDS = ("supply_c", "return_c", "flow_lpm", "dp_kpa", "heat_w", "capacity_w", "pumps_running", "leak")
SITE_FIELDS = ("facility_w", "it_w", "pue")
GRID_FIELDS = ("limit_w", "dr_target_w", "dr_active", "frequency_hz", "price_per_mwh", "carbon_g_per_kwh")

_UNRESOLVED = -2
_IGNORED = -1
# Readings flagged with these bits are kept in the store but must not drive control.
_UNUSABLE = Quality.UNCERTAIN | Quality.STALE


@dataclass(frozen=True, slots=True)
class SiteTotals:
    """Site totals derived from the latest readings (None where they cannot be)."""

    it_w: float | None  # sum of the UPS outputs, when every UPS has a reading within max_age
    it_age_s: float  # age of the oldest UPS reading used (inf when none)
    facility_w: float | None  # the site meter, when within max_age
    pue: float | None
    dr_active: bool
    dr_target_w: float  # the lowest target of the DR events in force, 0 when none


class SiteState:
    """Latest value and timestamp of every entity series of one site."""

    def __init__(self, topo: Topology, registry: SeriesRegistry = REGISTRY) -> None:
        self.topo = topo
        self.registry = registry
        n, k = topo.n_nodes, topo.n_loops
        self._loop_off = n
        self._site_off = n + k * len(LOOP_FIELDS)
        self._grid_off = self._site_off + len(SITE_FIELDS)
        size = self._grid_off + len(GRID_FIELDS)
        self.values = np.full(size, np.nan)
        self.ts_ns = np.zeros(size, np.int64)
        self._route = np.full(0, _UNRESOLVED, np.int64)
        self._node_ix: dict[tuple[str, str], int] = {
            (LEVELS[lv], ident): int(topo.level_offset[lv]) + i
            for lv in range(L_PDU) for i, ident in enumerate(topo.level_ids[lv])
        }
        self._deep_levels_indexed: set[int] = set()
        self._loop_ix = {lid: i for i, lid in enumerate(topo.loop_ids)}
        self.dr_events: dict[str, DemandResponseEvent] = {}
        self.ingested = 0
        self.ignored = 0

    # ---- views (zero-copy) -----------------------------------------------------------------
    @property
    def node_power_w(self) -> NDArray[np.float64]:
        """Measured power of every power node (NaN where never measured)."""
        return self.values[: self.topo.n_nodes]

    @property
    def node_power_ts_ns(self) -> NDArray[np.int64]:
        """Timestamp of each node's latest power reading (0 where never measured)."""
        return self.ts_ns[: self.topo.n_nodes]

    def loop(self, field: str) -> NDArray[np.float64]:
        """Latest ``cooling.<field>`` of every loop."""
        f = LOOP_FIELDS.index(field)
        k = self.topo.n_loops
        return self.values[self._loop_off + f * k: self._loop_off + (f + 1) * k]

    def loop_ts_ns(self, field: str) -> NDArray[np.int64]:
        """Timestamps of ``loop(field)``."""
        f = LOOP_FIELDS.index(field)
        k = self.topo.n_loops
        return self.ts_ns[self._loop_off + f * k: self._loop_off + (f + 1) * k]

    def site(self, field: str) -> tuple[float, int]:
        """Latest ``site.<field>`` and its timestamp."""
        i = self._site_off + SITE_FIELDS.index(field)
        return float(self.values[i]), int(self.ts_ns[i])

    def grid(self, field: str) -> tuple[float, int]:
        """Latest ``grid.<field>`` and its timestamp."""
        i = self._grid_off + GRID_FIELDS.index(field)
        return float(self.values[i]), int(self.ts_ns[i])

    # ---- ingest --------------------------------------------------------------------------------
    def _resolve(self, sid: int) -> int:
        key = self.registry.key(sid)
        tags = dict(key.tags)
        measurement, _, field = key.metric.partition(".")
        extra = set(tags) - {"site", "level", "id", "loop", "device"}
        if extra:
            return _IGNORED
        if measurement == "power" and field == "power_w" and "level" in tags and "id" in tags:
            level = tags["level"]
            if level not in LEVELS:
                return _IGNORED
            lv = LEVELS.index(level)
            if lv >= L_PDU and lv not in self._deep_levels_indexed:
                # PDU and server ids are derived names; index them only if such series appear.
                sl = self.topo.level_slice(lv)
                for j, ident in enumerate(self.topo.ids(lv)):
                    self._node_ix[(level, ident)] = sl.start + j
                self._deep_levels_indexed.add(lv)
            return self._node_ix.get((level, tags["id"]), _IGNORED)
        if measurement == "cooling" and field in LOOP_FIELDS and "loop" in tags:
            k = self._loop_ix.get(tags["loop"])
            if k is None:
                return _IGNORED
            return self._loop_off + LOOP_FIELDS.index(field) * self.topo.n_loops + k
        if measurement == "site" and field in SITE_FIELDS:
            return self._site_off + SITE_FIELDS.index(field)
        if measurement == "grid" and field in GRID_FIELDS:
            return self._grid_off + GRID_FIELDS.index(field)
        return _IGNORED

    def ingest(self, batch: ReadingBatch) -> int:
        """Apply a batch (newest reading per slot wins); return how many readings were used."""
        if batch.registry is not self.registry:
            raise ValueError("batch comes from another series registry")
        if not len(batch):
            return 0
        top = int(batch.series.max()) + 1
        if top > self._route.shape[0]:
            grown = np.full(max(top, 2 * self._route.shape[0]), _UNRESOLVED, np.int64)
            grown[: self._route.shape[0]] = self._route
            self._route = grown
        for sid in np.unique(batch.series[self._route[batch.series] == _UNRESOLVED]):
            self._route[sid] = self._resolve(int(sid))
        slot = self._route[batch.series]
        usable = (slot >= 0) & np.isfinite(batch.value) & ((batch.quality & _UNUSABLE) == 0)
        self.ignored += int((~usable).sum())
        if not usable.any():
            return 0
        slot, ts, val = slot[usable], batch.ts_ns[usable], batch.value[usable]
        # Newest per slot: sort by (slot, ts) and keep the last of each slot.
        order = np.lexsort((ts, slot))
        slot, ts, val = slot[order], ts[order], val[order]
        last = np.ones(slot.shape[0], bool)
        last[:-1] = slot[1:] != slot[:-1]
        slot, ts, val = slot[last], ts[last], val[last]
        newer = ts >= self.ts_ns[slot]
        self.values[slot[newer]] = val[newer]
        self.ts_ns[slot[newer]] = ts[newer]
        used = int(usable.sum())
        self.ingested += used
        return used

    def add_dr_event(self, event: DemandResponseEvent) -> None:
        """Record (or update) a demand-response event."""
        self.dr_events[event.id] = event

    # ---- derived -----------------------------------------------------------------------------
    def grid_signals(self, now_ns: int) -> GridSignals:
        """The grid as last heard: limit, frequency, price, carbon and every DR event."""
        limit, _ = self.grid("limit_w")
        return GridSignals(
            ts_ns=now_ns,
            limit_w=limit if math.isfinite(limit) else math.inf,
            frequency_hz=self.grid("frequency_hz")[0],
            price_per_mwh=self.grid("price_per_mwh")[0],
            carbon_g_per_kwh=self.grid("carbon_g_per_kwh")[0],
            events=tuple(e for e in self.dr_events.values() if e.end_ns > now_ns),
        )

    def totals(self, now_ns: int, max_age_s: float, servers_fresh_s: float = 3.0) -> SiteTotals:
        """IT power, facility power, PUE and DR state at ``now_ns``.

        IT power is every server's measured power (the agents report it every second) plus
        each rack's fixed overhead (switches, shelves, fans: ``rack_overhead_w``) when every
        server was measured within ``servers_fresh_s``; otherwise the sum of the UPS outputs,
        each the latest reading at most ``max_age_s`` old (UPSes are polled every 10-60 s).
        Its age (the oldest input) goes with it.
        """
        t = self.topo
        srv = t.level_slice(L_NODE)
        s_w, s_ts = self.node_power_w[srv], self.node_power_ts_ns[srv]
        s_age = float((now_ns - int(s_ts.min())) / 1e9) if s_w.size else float("inf")
        if s_w.size and (s_ts > 0).all() and np.isfinite(s_w).all() and s_age <= servers_fresh_s:
            it_w: float | None = float(s_w.sum() + t.rack_overhead_w.sum())
            age = s_age
        else:
            sl = t.level_slice(L_UPS)
            ups, ts = self.node_power_w[sl], self.node_power_ts_ns[sl]
            age = float((now_ns - int(ts.min())) / 1e9) if ups.size else float("inf")
            it_w = float(ups.sum()) if ups.size and np.isfinite(ups).all() and (ts > 0).all() and \
                age <= max_age_s else None
        fac, fac_ts = self.site("facility_w")
        facility = fac if np.isfinite(fac) and fac_ts > 0 and (now_ns - fac_ts) / 1e9 <= max_age_s else None
        p = pue(facility, it_w) if facility is not None and it_w is not None else None
        active = [e for e in self.dr_events.values() if e.state(now_ns) == "active"]
        return SiteTotals(it_w, age if it_w is not None else float("inf"), facility, p, bool(active),
                          min((e.target_w for e in active), default=0.0))

    def age_s(self, ts_ns: NDArray[np.int64], now_ns: int) -> NDArray[np.float64]:
        """Age in seconds of readings stamped ``ts_ns`` (inf for never seen)."""
        age = (now_ns - ts_ns.astype(np.float64)) / 1e9
        return np.where(ts_ns > 0, age, np.inf)

    def server_power_known(self) -> bool:
        """True when any server-level (node) power has been measured."""
        return bool(np.isfinite(self.node_power_w[self.topo.level_slice(L_NODE)]).any())
