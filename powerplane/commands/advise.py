"""``powerplane advise``: where a new job fits on the twin of a site, and the moves the plan calls for."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def cmd_advise(args: argparse.Namespace, console: Console) -> int:
    """Rank where a new job fits on the twin of a site, and list the moves the plan calls for."""
    from controllers import closedloop
    from controllers.advise import advise, by_hall
    from controllers.moves import dr_deficit, recommend
    from models.site import load_site
    from models.topology import build_topology

    site = load_site(args.site)  # the numbers were checked by their argparse types
    topo = build_topology(site)
    snap = closedloop.run(site, topo, at_s=args.at, seed=args.seed)
    plan, dr_events, t_s = snap.plan, snap.dr_events, snap.t_s
    ranked = advise(topo, plan, gpus=args.gpus, power_per_gpu_w=args.power_per_gpu, priority=args.priority,
                    top=args.top, source=str(args.site))
    moves = recommend(topo, plan, dr=dr_deficit(topo, plan, dr_events.values()))
    if args.json:
        print(json.dumps({"site": site.site.name, "t_s": round(t_s, 3), "budget_reason": plan.budget_reason,
                          "placements": [p.detail() for p in ranked], "moves": [m.detail() for m in moves]}))
        return 0 if ranked[0].fits else 1
    console.print(f"[bold]{escape(site.site.name)}[/bold] at t={t_s:,.0f} s ({escape(plan.budget_reason)}): "
                  f"{args.gpus:,} GPUs at {args.power_per_gpu:,.0f} W"
                  f"{f', priority {args.priority}' if args.priority is not None else ''}", highlight=False)
    tab = Table(title="placements (tightest constraint after placement)")
    for col in ("#", "where", "racks", "fits", "binding", "left kW", "left %", "+facility kW"):
        tab.add_column(col)
    for i, p in enumerate(ranked, 1):
        where = p.where if p.scope == "rack" else f"{p.scope} {p.where}"
        tab.add_row(str(i), Text(where), Text(", ".join(p.racks)), "yes" if p.fits else "[red]no[/red]",
                    Text(p.binding), f"{p.remaining_w / 1e3:,.1f}", f"{p.min_share:.1%}", f"{p.facility_w / 1e3:,.1f}")
    console.print(tab)
    halls = Table(title="best per hall")
    for col in ("hall", "where", "fits", "binding", "left kW"):
        halls.add_column(col)
    for hall, p in by_hall(ranked).items():
        halls.add_row(Text(hall), Text(p.where), "yes" if p.fits else "no", Text(p.binding),
                      f"{p.remaining_w / 1e3:,.1f}")
    console.print(halls)
    if not ranked[0].fits:
        console.print(f"[red]no placement fits[/red]: {escape(ranked[0].reason)}", highlight=False)
    for m in moves:
        console.print(f"[yellow]{escape(m.constraint)}[/yellow]: {escape(m.reason)}", highlight=False)
    return 0 if ranked[0].fits else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``advise`` to the CLI."""
    from models.site import MAX_GPUS, MAX_PRIORITY
    from powerplane.argtypes import MAX_SIM_S, SEED, finite_number

    p = sub.add_parser("advise", help="rank where a new job fits (power and cooling headroom after placement)")
    p.add_argument("--site", required=True, help="site file")
    p.add_argument("--gpus", type=finite_number(int, ge=1, le=MAX_GPUS), required=True, metavar="N",
                   help="GPUs the job needs")
    p.add_argument("--power-per-gpu", type=finite_number(float, gt=0, le=100_000), required=True, metavar="W",
                   help="expected draw per GPU, W")
    p.add_argument("--priority", type=finite_number(int, ge=0, le=MAX_PRIORITY), default=None, metavar="P",
                   help="job priority (0 highest); lower-priority work then counts at its floor")
    p.add_argument("--at", type=finite_number(float, ge=0, le=MAX_SIM_S), default=0.0, metavar="S",
                   help="run the twin under control for S simulated seconds first (default 0)")
    p.add_argument("--top", type=finite_number(int, ge=1, le=10_000), default=10, metavar="K",
                   help="placements to list (default 10)")
    p.add_argument("--seed", type=SEED, default=None, help="twin seed (default: the site's)")
    p.add_argument("--json", action="store_true", help="print placements and moves as JSON")
    p.set_defaults(handler=cmd_advise)
