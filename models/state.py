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

import collections
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.grid import DemandResponseEvent, GridSignals
from models.physics import pue
from models.readings import REGISTRY, Quality, ReadingBatch, SeriesRegistry
from models.topology import L_NODE, L_PDU, L_UPS, LEVELS, Topology

LOOP_FIELDS = ("supply_c", "return_c", "flow_lpm", "dp_kpa", "heat_w", "capacity_w", "pumps_running", "leak")
SITE_FIELDS = ("facility_w", "it_w", "pue", "facility_wh")  # facility_wh: the site meter's energy register
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


class PueWindow:
    """PUE over the last ``window_s``: the facility energy the site meter's register counted
    over IT energy (the IT power of every period, integrated) over the same time.

    The ratio of two instantaneous readings is not a PUE an operator can use: the meter is read
    every 2 s, the servers every second, and GPUs that swing at 0.5 Hz make facility / IT jump
    between 1.0 and 1.9 from one period to the next. Energies over a minute do not alias.
    None until the register has covered half a window, and after a gap in IT power longer than
    ``max_gap_s`` (the IT integral restarts).
    """

    def __init__(self, window_s: float = 60.0, max_gap_s: float = 10.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self.max_gap_ns = int(max_gap_s * 1e9)
        self._it: collections.deque[tuple[int, float]] = collections.deque()  # (t, IT Wh since start)
        self._it_wh = 0.0
        self._last_it: tuple[int, float] | None = None
        self._reg: collections.deque[tuple[int, float]] = collections.deque()  # (t, register Wh)

    def add_it(self, now_ns: int, it_w: float | None) -> None:
        """IT power at a period (None when unknown: the integral restarts at the next known one)."""
        if it_w is None or not math.isfinite(it_w):
            self._last_it = None
            return
        if self._last_it is not None and now_ns > self._last_it[0]:
            t0, w0 = self._last_it
            if now_ns - t0 > self.max_gap_ns:
                self._it.clear()
                self._reg.clear()
            else:
                self._it_wh += 0.5 * (w0 + it_w) * (now_ns - t0) / 3.6e12
        self._last_it = (now_ns, it_w)
        self._it.append((now_ns, self._it_wh))
        while len(self._it) > 2 and self._it[1][0] <= now_ns - 2 * self.window_ns:
            self._it.popleft()

    def add_register(self, ts_ns: int, wh: float) -> None:
        """A reading of the site meter's energy register (Wh); a reset starts over."""
        if not math.isfinite(wh) or (self._reg and ts_ns <= self._reg[-1][0]):
            return
        if self._reg and wh < self._reg[-1][1]:
            self._reg.clear()
        self._reg.append((ts_ns, wh))
        while len(self._reg) > 2 and self._reg[1][0] <= ts_ns - self.window_ns:
            self._reg.popleft()

    def value(self) -> float | None:
        """Facility Wh / IT Wh over the register's readings of the last window, or None."""
        if len(self._reg) < 2 or len(self._it) < 2:
            return None
        (a, wa), (b, wb) = self._reg[0], self._reg[-1]
        t0, t1 = self._it[0][0], self._it[-1][0]
        if b - a < self.window_ns // 2 or a < t0 or b > t1:
            return None
        ts = np.fromiter((t for t, _ in self._it), np.float64, len(self._it))
        wh = np.fromiter((e for _, e in self._it), np.float64, len(self._it))
        return pue(wb - wa, float(np.interp(b, ts, wh) - np.interp(a, ts, wh)))


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
        if measurement == "power" and field == "energy_wh" and not extra and set(tags) <= {"site", "device"}:
            return self._site_off + SITE_FIELDS.index("facility_wh")  # the site meter's total register
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
