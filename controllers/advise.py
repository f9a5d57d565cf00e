"""Placement advisor: where a new job of N GPUs at W per GPU fits best, and why.

A placement needs N free GPUs (``gpu_job == -1``) — on one rack, or spread over the racks
of one row (or hall) when no rack of it is big enough — and room for N·W after placement at
every level up the power tree, in every loop it lands on and in the site's IT budget,
checked with the plan's physics on the demand basis (``controllers.moves.LoadState``).
With ``priority`` given, lower-priority work (a larger number) is counted at its floor:
the controller cuts it first, so its power above the floor is available to the new job.

Placements rank by the smallest remaining headroom share after placement (the tightest
constraint), then by the facility power the job adds (PUE impact: conversion losses
differ by rack type and UPS), then by fewer racks. ``powerplane advise`` runs the twin of a
site under control for ``--at`` seconds (as ``powerplane plan`` does) and advises on the
last plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from controllers.moves import LoadState, demand_basis_w, free_gpus_by_rack, take_free
from controllers.plan import CapPlan
from models.errors import ConfigError
from models.topology import L_HALL, L_RACK, L_ROW, Topology

Scope = Literal["rack", "row", "hall"]


@dataclass(frozen=True, slots=True)
class Placement:
    """One way to place the job: where, whether it fits, and the constraint that binds."""

    scope: Scope  # one rack, or spread over the racks of a row / hall
    where: str  # rack, row or hall id
    hall: str
    racks: tuple[str, ...]
    gpus: int
    fits: bool
    min_share: float  # remaining headroom / limit of the tightest constraint after placement
    binding: str
    remaining_w: float  # that constraint's remaining headroom, own watts
    it_w: float  # IT power the job adds
    facility_w: float  # facility power it adds (IT + overhead)

    @property
    def reason(self) -> str:
        """One sentence: where, and what binds after placement."""
        spread = f" spread over {len(self.racks)} racks of {self.scope} {self.where}" if self.scope != "rack" else ""
        verdict = "fits" if self.fits else "does not fit"
        return (f"{self.gpus} GPUs on {', '.join(self.racks)}{spread} {verdict}: tightest after placement is "
                f"{self.binding} with {self.remaining_w / 1e3:,.1f} kW ({self.min_share:.1%}) left; "
                f"adds {self.facility_w / 1e3:,.1f} kW facility")

    def detail(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"scope": self.scope, "where": self.where, "hall": self.hall, "racks": list(self.racks),
                "gpus": self.gpus, "fits": self.fits, "min_share": self.min_share, "binding": self.binding,
                "remaining_w": self.remaining_w, "it_w": self.it_w, "facility_w": self.facility_w,
                "reason": self.reason}


def _load_for(topo: Topology, plan: CapPlan, priority: int | None) -> LoadState:
    """Demand-basis loads; lower-priority work than ``priority`` at its floor (it is cut first)."""
    gpu_w = demand_basis_w(topo, plan)
    if priority is not None:
        lower = (topo.gpu_job >= 0) & (topo.gpu_priority > priority)
        gpu_w = np.where(lower, np.minimum(gpu_w, topo.gpu_min_w), gpu_w)
    return LoadState(topo, plan, gpu_w)


def advise(topo: Topology, plan: CapPlan | LoadState, *, gpus: int, power_per_gpu_w: float,
           priority: int | None = None, top: int = 10, source: str = "advise") -> list[Placement]:
    """The ``top`` best placements of a job (fitting ones first); ConfigError if it cannot be placed at all."""
    load = plan if isinstance(plan, LoadState) else _load_for(topo, plan, priority)
    free = load.free
    n_free = int(free.sum())
    problems: list[tuple[str, str]] = []
    if gpus < 1:
        problems.append(("gpus", f"must be >= 1, got {gpus}"))
    elif gpus > n_free:
        problems.append(("gpus", f"{gpus:,} GPUs requested but the site has only {n_free:,} free"))
    tdp = float(topo.gpu_max_w.max()) if topo.n_gpus else 0.0
    if not 0 < power_per_gpu_w <= tdp:
        problems.append(("power_per_gpu", f"must be in (0, {tdp:,.0f}] W (the largest GPU TDP), "
                                          f"got {power_per_gpu_w:g}"))
    if top < 1:
        problems.append(("top", f"must be >= 1, got {top}"))
    if problems:
        raise ConfigError(source, problems)

    free_rack = free_gpus_by_rack(topo, free)
    rack_ids = topo.level_ids[L_RACK]
    rack_row = topo.node_parent[topo.level_slice(L_RACK)] - topo.level_offset[L_ROW]
    row_hall = topo.node_parent[topo.level_slice(L_ROW)] - topo.level_offset[L_HALL]
    halls = topo.level_ids[L_HALL]
    overhead = plan.overhead if isinstance(plan, CapPlan) else None
    out: list[Placement] = []

    def place(scope: Scope, where: str, racks: list[int], hall: int) -> None:
        chunks, left = [], gpus
        for r in racks:
            g = take_free(topo, free, r, left)
            chunks.append(g)
            left -= g.size
            if left <= 0:
                break
        dest = np.concatenate(chunks)
        watts = np.minimum(power_per_gpu_w, topo.gpu_max_w[dest])
        fit = load.check(load.delta(dest, watts))
        fac = (overhead.facility_w(load.it_w + fit.it_delta_w) - overhead.facility_w(load.it_w)
               if overhead is not None else fit.it_delta_w)
        used = tuple(rack_ids[r] for r, c in zip(racks, chunks, strict=False) if c.size)
        out.append(Placement(scope, where, halls[hall], used, gpus, fit.ok, fit.min_share, fit.binding,
                             fit.remaining_w, fit.it_delta_w, fac))

    for r in np.flatnonzero(free_rack >= gpus):
        place("rack", rack_ids[r], [int(r)], int(row_hall[rack_row[r]]))
    # Spread only where no single rack of the group is big enough: fewest racks, most free first.
    for scope, level, group_of_rack in (("row", L_ROW, rack_row), ("hall", L_HALL, row_hall[rack_row])):
        ids = topo.level_ids[level]
        for k in range(len(ids)):
            members = np.flatnonzero(group_of_rack == k)
            if not members.size or int(free_rack[members].sum()) < gpus or int(free_rack[members].max()) >= gpus:
                continue
            if scope == "hall" and any(int(free_rack[rack_row == rw].sum()) >= gpus
                                       for rw in np.flatnonzero(row_hall == k)):
                continue  # a row of this hall holds it: that spread is already listed
            members = members[np.argsort(-free_rack[members], kind="stable")]
            hall = k if scope == "hall" else int(row_hall[k])
            place(scope, ids[k], [int(r) for r in members if free_rack[r] > 0], hall)  # type: ignore[arg-type]
    if not out:
        raise ConfigError(source, [("gpus", f"no rack, row or hall has {gpus:,} free GPUs (the site has "
                                            f"{n_free:,} free, at most {int(free_rack.max()):,} on one rack)")])
    out.sort(key=lambda p: (not p.fits, -p.min_share, round(p.facility_w, 3), len(p.racks), p.racks))
    return out[:top]


def by_hall(placements: list[Placement]) -> dict[str, Placement]:
    """The best placement in every hall (placements are already ranked)."""
    best: dict[str, Placement] = {}
    for p in placements:
        best.setdefault(p.hall, p)
    return best
