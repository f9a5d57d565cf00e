"""``powerplane plan``: solve a cap plan on the twin of a site and print why it caps."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from powerplane.argtypes import MAX_SIM_S, SEED, finite_number


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    """Run the twin of a site (with the controller closed around it) and print the last plan."""
    from controllers import closedloop
    from models.site import load_site
    from models.topology import build_topology

    site = load_site(args.site)
    topo = build_topology(site)
    snap = closedloop.run(site, topo, at_s=args.at, seed=args.seed)
    plan, violations = snap.plan, snap.violations_in_run
    sim_t_s = snap.t_s
    summary: dict[str, Any] = plan.summary().to_json()
    summary.update(site=site.site.name, t_s=round(sim_t_s, 3), violations=plan.violations(topo),
                   violations_in_run=violations, gpus=topo.n_gpus)
    if args.caps_out:
        write_caps(plan, topo, args.caps_out)
    if args.json:
        print(json.dumps(summary))
        return 0
    console.print(f"[bold]{escape(site.site.name)}[/bold] at t={sim_t_s:,.0f} s: plan {plan.plan_id}, "
                  f"solved in {plan.solve_ms:.2f} ms ({plan.rounds} rounds)", highlight=False)
    console.print(f"budget: {plan.budget_w / 1e3:,.1f} kW facility ({plan.budget_reason}), "
                  f"IT {plan.it_budget_w / 1e3:,.1f} kW; {plan.gpus_capped:,} of {topo.n_gpus:,} GPUs "
                  f"capped below demand", highlight=False, markup=False)
    tab = Table(title="binding constraints")
    for col in ("constraint", "GPUs held", "planned kW", "limit kW"):
        tab.add_column(col)
    for c, n in sorted(plan.binding_constraints().items(), key=lambda kv: -kv[1]):
        tab.add_row(Text(plan.constraint_names[c]), f"{n:,}", f"{plan.constraint_load_w[c] / 1e3:,.1f}",
                    f"{plan.constraint_limit_w[c] / 1e3:,.1f}")
    console.print(tab)
    if plan.infeasible:
        for inf in plan.infeasible:
            console.print(f"[red]infeasible[/red] {escape(inf.constraint)}: floors over by "
                          f"{inf.deficit_w / 1e3:,.1f} kW; move {escape(', '.join(inf.jobs) or 'nothing movable')}",
                          highlight=False)
    else:
        console.print("no infeasible constraint")
    console.print(f"independent check: {len(summary['violations'])} violations in this plan, "
                  f"{violations} over the run", highlight=False)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plan`` to the CLI."""
    p = sub.add_parser("plan", help="solve a power-cap plan on the twin of a site")
    p.add_argument("--site", required=True, help="site file")
    p.add_argument("--at", type=finite_number(float, ge=0, le=MAX_SIM_S), default=0.0, metavar="S",
                   help="run the twin under control for S simulated seconds first (default 0)")
    p.add_argument("--seed", type=SEED, default=None, help="twin seed (default: the site's)")
    p.add_argument("--json", action="store_true", help="print the plan summary as JSON")
    p.add_argument("--caps-out", default=None, metavar="FILE",
                   help="write every node's per-GPU caps and predicted demand as JSON (to reproduce the plan)")
    p.set_defaults(handler=cmd_plan)


def write_caps(plan: Any, topo: Any, path: str) -> None:
    """Every node's per-GPU caps, accounted load and predicted demand, with the binding constraint."""
    from controllers.plan import BIND_RAMP, RAMP
    from models.files import write_json
    from models.topology import L_NODE

    first = topo.node_first_gpu
    nodes = topo.ids(L_NODE)
    rows = []
    for k, n in enumerate(nodes):
        a, b = int(first[k]), int(first[k] + topo.node_gpus[k])
        bind = int(plan.bind[a])
        rows.append({"node": n, "caps_w": [round(float(x), 3) for x in plan.caps_w[a:b]],
                     "demand_w": [round(float(x), 3) for x in plan.demand_w[a:b]],
                     "accounted_w": [round(float(x), 3) for x in plan.accounted_w[a:b]],
                     "binding": plan.constraint_names[bind] if bind >= 0 else (RAMP if bind == BIND_RAMP else None)})
    write_json(path, {"plan_id": plan.plan_id, "ts_ns": plan.ts_ns, "budget_w": plan.budget_w,
                      "it_budget_w": plan.it_budget_w, "nodes": rows})
