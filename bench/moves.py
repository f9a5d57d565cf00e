"""Move recommendations on a generated site: incremental load deltas vs a naive full re-evaluation.

``recommend`` checks every candidate destination with ``LoadState.delta``/``check``: the load
is linear in GPU watts, so only the ancestors of the GPUs that change are touched. The peer
is the same search with every check re-deriving the whole site with the plan's physics
(``planned_node_load_w`` + ``planned_loop_heat_w`` on the full GPU vector) — what a
per-candidate re-evaluation costs. Both must give the same recommendations.

    python bench/moves.py [--racks 1700] [--constraints 1] [--free 0.1]

Ends with one JSON line {"bench": "moves", "ours", "peer", "ratio", "unit", "agree"}; exits 1
when the two searches recommend different moves.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    """Run the benchmark and print its JSON line; 1 if ours and the peer recommend differently."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--racks", type=int, default=1700)
    ap.add_argument("--constraints", type=int, default=1, help="infeasible racks to relieve")
    ap.add_argument("--free", type=float, default=0.1, help="share of servers without a job")
    args = ap.parse_args()

    import dataclasses

    from controllers import moves
    from controllers.plan import CapPlan, Infeasible, planned_loop_heat_w, planned_node_load_w
    from controllers.problem import SiteProblem
    from models.generate import generate_site
    from models.physics import OverheadModel
    from models.site import load_site
    from models.topology import IDLE_PRIORITY, L_NODE, L_RACK, L_UPS, build_topology

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "site.toml"
        path.write_text(generate_site(args.racks))
        site = load_site(path)
    t = build_topology(site)
    rng = np.random.default_rng(1)
    free = np.repeat(rng.random(t.count(L_NODE)) < args.free, t.node_gpus)
    topo = dataclasses.replace(t, gpu_job=np.where(free, -1, t.gpu_job).astype(np.int32),
                               gpu_priority=np.where(free, IDLE_PRIORITY, t.gpu_priority).astype(np.int16))
    demand = np.where(free, topo.gpu_idle_w, np.repeat(rng.uniform(300, 700, t.count(L_NODE)), t.node_gpus))
    p = SiteProblem.build(topo)
    load = planned_node_load_w(topo, demand)
    racks = rng.choice(topo.count(L_RACK), args.constraints, replace=False)
    inf = [Infeasible(f"rack {topo.level_ids[L_RACK][int(r)]}", 60_000.0, ()) for r in racks]
    n = p.structure.n
    plan = CapPlan(
        plan_id=1, ts_ns=0, caps_w=demand, accounted_w=demand, demand_w=demand, consumer_caps_w=np.zeros(n),
        consumer_demand_w=np.zeros(n), budget_w=1e12, it_budget_w=float(load[topo.level_slice(L_UPS)].sum()) * 1.05,
        budget_reason="interconnect limit", bind=np.full(topo.n_gpus, -1, np.int32),
        constraint_names=p.constraint_names, constraint_limit_w=np.zeros(p.n_constraints),
        constraint_load_w=np.zeros(p.n_constraints), loop_capacity_w=planned_loop_heat_w(topo, load) * 1.3,
        infeasible=inf, solve_ms=0.0, rounds=0, stale_gpus=0, overdraw_gpus=0, overdraw_ids=(), stale_loops=(),
        margin=0.02, overhead=OverheadModel(0.0, 0.06, 0.04, 1e9), problem=p)

    checks = 0

    class Counting(moves.LoadState):
        def check(self, d: moves.Delta) -> moves.Fit:
            nonlocal checks
            checks += 1
            return super().check(d)

    class Naive(moves.LoadState):
        """Every check re-derives the whole site from the GPU vector."""

        def check(self, d: moves.Delta) -> moves.Fit:
            v = self.gpu_w.copy()
            v[d.gpus] = d.new_w
            node = planned_node_load_w(self.topo, v)
            heat = planned_loop_heat_w(self.topo, node)
            rising = node > self.node_w + 1e-9
            ok = bool(np.all(node[rising] <= self.node_limit_w[rising] * (1 + 1e-9)))
            ok = ok and bool(np.all(heat[heat > self.loop_w + 1e-9] <= self.loop_cap_w[heat > self.loop_w + 1e-9]
                                    * (1 + 1e-9) + 1e-6))
            it = float(node[self.topo.level_slice(L_UPS)].sum())
            ok = ok and (it <= self.it_w + 1e-6 or it <= self.it_budget_w * (1 + 1e-9))
            fast = super().check(d)  # ranking (tightest share) as ours; feasibility from the full re-derivation
            return moves.Fit(ok, fast.min_share, fast.binding, fast.remaining_w, fast.it_delta_w)

    orig = moves.LoadState
    try:
        moves.LoadState = Counting  # type: ignore[misc]
        t0 = time.perf_counter()
        ours = moves.recommend(topo, plan)
        ours_s = time.perf_counter() - t0
        moves.LoadState = Naive  # type: ignore[misc]
        t0 = time.perf_counter()
        peer = moves.recommend(topo, plan)
        peer_s = time.perf_counter() - t0
    finally:
        moves.LoadState = orig  # type: ignore[misc]
    same = [r.detail() for r in ours] == [r.detail() for r in peer]
    print(json.dumps({"racks": args.racks, "gpus": topo.n_gpus, "constraints": args.constraints, "checks": checks,
                      "recommendations": [(r.action, r.job, r.gpus, list(r.to_racks)) for r in ours],
                      "same": same}))
    print(json.dumps({"bench": "moves", "ours": round(ours_s, 3), "peer": round(peer_s, 3),
                      "ratio": round(peer_s / ours_s, 1), "unit": "s", "agree": same,
                      "recommendations": len(ours)}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
