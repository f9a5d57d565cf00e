"""Ground truth: what the twin really drew and exceeded, at every simulation step from t=0.

``Truth`` observes ``TwinSim`` after each step (``sim.observers``), so nothing between
two samples of a view can hide an exceedance. It integrates nothing itself: energies are
the simulation's own integrals (``facility_energy_wh``, ``it_energy_wh``), which is what
reports and summaries are checked against.

Limits checked every step:

* the site's facility power against what it may draw (the interconnect limit, or the
  demand-response target while an event is active);
* every power node (feed, UPS, hall, row, rack, PDU, server with a limit) against its limit;
* every cooling loop's heat against its capacity.

During a DR event it also measures **stranded power**: target minus facility power, in the
steps where the GPUs' demand alone would have drawn more than the target.

It also keeps a **series**, one row per site second: the facility and IT energy since the
start (Wh, the simulation's integrals at the end of the second), the highest facility and
IT power of the second's steps, and at the end of the second each cooling loop's heat and
return temperature and the DR target in force (NaN without one). A report over any window,
with any gaps, is checked against the twin's energy over exactly the time the report covers
(``energy_over``, ``peak_over``); dashboards' panels against the loop and DR columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from models.clock import NS_PER_S
from models.physics import pue
from models.topology import LEVELS
from models.twin.sim import TwinSim


class Truth:
    """Exceedances, peaks, energies and DR behaviour of one run (see the module docstring)."""

    def __init__(self, sim: TwinSim) -> None:
        t = sim.topo
        self.sim = sim
        self.limit_w = t.node_limit_w
        self.finite = np.isfinite(self.limit_w)
        self.node_over_s = np.zeros(t.n_nodes)
        self.node_worst_w = np.zeros(t.n_nodes)
        self.loop_over_s = np.zeros(t.n_loops)
        self.loop_worst_w = np.zeros(t.n_loops)
        self.loop_max_return_c = np.full(t.n_loops, -np.inf)
        self.site_over_s = 0.0
        self.site_worst_w = 0.0
        self.peak_facility_w = 0.0
        self.peak_it_w = 0.0
        self.steps = 0
        self.dr_s = 0.0  # seconds a DR event was active
        self.dr_short_s = 0.0  # ... of which demand exceeded the target
        self.dr_stranded_ws = 0.0  # integral of (target - facility) over those seconds
        self.dr_stranded_max_w = 0.0
        self.dr_target_w = 0.0
        self.dr_over_s = 0.0
        self._start_t_s = sim.t_s
        self._e_fac0 = sim.facility_energy_wh
        self._e_it0 = sim.it_energy_wh
        self._second = int(sim.now_ns // NS_PER_S)
        self._sec_fac_max = 0.0
        self._sec_it_max = 0.0
        self.columns = series_columns(t.loop_ids)
        self.rows: list[tuple[float, ...]] = [
            (sim.now_ns, 0.0, 0.0, sim.facility_w, sim.it_w, *self._state(sim))]  # self.columns, not yet taken
        sim.observers.append(self.observe)

    def observe(self, sim: TwinSim) -> None:
        """Record the state after one step."""
        dt = sim.step_s
        self.steps += 1
        self._sec_fac_max = max(self._sec_fac_max, sim.facility_w)
        self._sec_it_max = max(self._sec_it_max, sim.it_w)
        second = int(sim.now_ns // NS_PER_S)
        if second != self._second:
            self._second = second
            self.rows.append((sim.now_ns, sim.facility_energy_wh - self._e_fac0, sim.it_energy_wh - self._e_it0,
                              self._sec_fac_max, self._sec_it_max, *self._state(sim)))
            self._sec_fac_max = self._sec_it_max = 0.0
        self.peak_facility_w = max(self.peak_facility_w, sim.facility_w)
        self.peak_it_w = max(self.peak_it_w, sim.it_w)
        excess = sim.node_power_w - self.limit_w
        over = np.flatnonzero(self.finite & (excess > 0))
        if over.size:
            self.node_over_s[over] += dt
            self.node_worst_w[over] = np.maximum(self.node_worst_w[over], excess[over])
        lx = sim.loop_heat_w - sim.loop_capacity_w
        lo = lx > 0
        if lo.any():
            self.loop_over_s[lo] += dt
            self.loop_worst_w[lo] = np.maximum(self.loop_worst_w[lo], lx[lo])
        np.maximum(self.loop_max_return_c, sim.loop_return_c, out=self.loop_max_return_c)
        now = sim.now_ns
        target = min((e.target_w for e in sim.dr_events if e.state(now) == "active"), default=None)
        limit = sim.limit_w if target is None else min(sim.limit_w, target)
        if sim.facility_w > limit:
            self.site_over_s += dt
            self.site_worst_w = max(self.site_worst_w, sim.facility_w - limit)
        if target is not None:
            self.dr_s += dt
            self.dr_target_w = target
            if sim.facility_w > target:
                self.dr_over_s += dt
            if sim.demand_facility_w() > target:
                stranded = max(0.0, target - sim.facility_w)
                self.dr_short_s += dt
                self.dr_stranded_ws += stranded * dt
                self.dr_stranded_max_w = max(self.dr_stranded_max_w, stranded)

    @staticmethod
    def _state(sim: TwinSim) -> list[float]:
        """Each loop's heat and return temperature, and the DR target in force (NaN without one)."""
        now = sim.now_ns
        target = min((e.target_w for e in sim.dr_events if e.state(now) == "active"), default=float("nan"))
        return [*sim.loop_heat_w.tolist(), *sim.loop_return_c.tolist(), target]

    # ---- results ----------------------------------------------------------------------------
    def exceeded(self) -> list[dict[str, Any]]:
        """Every limit exceeded: what, for how long, by how much at worst."""
        t = self.sim.topo
        out: list[dict[str, Any]] = []
        if self.site_over_s:
            out.append({"limit": "site: facility limit (interconnect or DR target)", "seconds": self.site_over_s,
                        "worst_over_w": self.site_worst_w})
        for n in np.flatnonzero(self.node_over_s).tolist():
            out.append({"limit": f"{LEVELS[int(t.node_level[n])]} {t.node_id(n)}",
                        "seconds": float(self.node_over_s[n]), "worst_over_w": float(self.node_worst_w[n])})
        for k in np.flatnonzero(self.loop_over_s).tolist():
            out.append({"limit": f"loop {t.loop_ids[k]}: heat over capacity", "seconds": float(self.loop_over_s[k]),
                        "worst_over_w": float(self.loop_worst_w[k])})
        return sorted(out, key=lambda d: -d["seconds"])

    def take_rows(self) -> list[tuple[float, ...]]:
        """The series rows since the last call."""
        rows, self.rows = self.rows, []
        return rows

    def summary(self) -> dict[str, Any]:
        """The run's truth as data (the demo's summary carries it)."""
        sim = self.sim
        fac_kwh = (sim.facility_energy_wh - self._e_fac0) / 1e3
        it_kwh = (sim.it_energy_wh - self._e_it0) / 1e3
        t = sim.topo
        stranded_mean = self.dr_stranded_ws / self.dr_short_s if self.dr_short_s else 0.0
        return {
            "t_s": sim.t_s - self._start_t_s, "steps": self.steps, "step_s": sim.step_s,
            "facility_energy_kwh": fac_kwh, "it_energy_kwh": it_kwh, "pue": pue(fac_kwh, it_kwh),
            "peak_facility_kw": self.peak_facility_w / 1e3, "peak_it_kw": self.peak_it_w / 1e3,
            "max_return_c": {lid: float(self.loop_max_return_c[k]) for k, lid in enumerate(t.loop_ids)},
            "loop_max_return_limit_c": {lid: float(t.loop_max_return_c[k]) for k, lid in enumerate(t.loop_ids)},
            "limits_exceeded": self.exceeded(),
            "dr": {"active_s": self.dr_s, "demand_over_target_s": self.dr_short_s, "target_kw": self.dr_target_w / 1e3,
                   "over_target_s": self.dr_over_s, "stranded_mean_kw": stranded_mean / 1e3,
                   "stranded_max_kw": self.dr_stranded_max_w / 1e3,
                   "stranded_mean_share": stranded_mean / self.dr_target_w if self.dr_target_w else 0.0},
        }



SERIES_COLUMNS = ("t_ns", "facility_wh", "it_wh", "facility_max_w", "it_max_w")


def series_columns(loop_ids: Iterable[str]) -> tuple[str, ...]:
    """The series' columns for a site's loops: ``SERIES_COLUMNS``, ``heat_w LOOP`` and
    ``return_c LOOP`` per loop, ``dr_target_w``."""
    loops = list(loop_ids)
    return (*SERIES_COLUMNS, *(f"heat_w {k}" for k in loops), *(f"return_c {k}" for k in loops), "dr_target_w")


def append_series(path: str | Path, rows: list[tuple[float, ...]], columns: tuple[str, ...]) -> None:
    """Append ``rows`` (``Truth.take_rows``, in ``Truth.columns``) to a CSV file, with the header if the file is new."""
    p = Path(path)
    new = not p.exists()
    with p.open("a", encoding="ascii") as f:
        if new:
            f.write(",".join(columns) + "\n")
        f.writelines(f"{int(r[0])}," + ",".join(repr(float(v)) for v in r[1:]) + "\n" for r in rows)


def read_series(path: str | Path) -> np.ndarray:
    """The series file as a structured array (columns as its header names them)."""
    with Path(path).open(encoding="ascii") as f:
        columns = f.readline().strip().split(",")
        lines = [ln.split(",") for ln in f if ln.strip()]
    out = np.zeros(len(lines), dtype=[(c, "i8" if c == "t_ns" else "f8") for c in columns])
    for i, c in enumerate(columns):
        out[c] = [int(ln[i]) if c == "t_ns" else float(ln[i]) for ln in lines]
    return out


def energy_over(series: np.ndarray, spans: Iterable[tuple[int, int]], column: str = "facility_wh") -> float:
    """The twin's energy (kWh) over ``spans`` (``[start_ns, end_ns)`` pairs): the cumulative
    integral, interpolated within its one-second rows, at each span's ends."""
    t = series["t_ns"].astype(np.float64)
    e = series[column]
    total = 0.0
    for a, b in spans:
        total += float(np.interp(b, t, e) - np.interp(a, t, e))
    return total / 1e3


def peak_over(series: np.ndarray, spans: Iterable[tuple[int, int]], column: str = "facility_max_w") -> float:
    """The highest power (W) of any twin step in the seconds that overlap ``spans``."""
    t = series["t_ns"]
    best = float("nan")
    for a, b in spans:
        # row k holds the maximum of the steps in (t[k-1], t[k]]
        lo = int(np.searchsorted(t, a, side="right"))
        hi = int(np.searchsorted(t, b, side="left")) + 1
        sel = series[column][lo:hi]
        if sel.size:
            best = float(np.nanmax([best, float(sel.max())]))
    return best


def series_path(truth_path: str | Path) -> Path:
    """Where the series of a ``--truth-out`` file goes: beside it, ``<name>.series.csv``."""
    p = Path(truth_path)
    return p.with_name(p.stem + ".series.csv")
