"""``powerplane config check`` and ``powerplane site generate|show``: site files."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from models.errors import ConfigError
from powerplane.argtypes import SEED, finite_number

# ---- config check -----------------------------------------------------------------------

def cmd_config_check(args: argparse.Namespace, console: Console) -> int:
    """Validate a site file and print what it describes."""
    from models.site import load_site
    from models.topology import build_topology

    t0 = time.perf_counter()
    site = load_site(args.file)
    topo = build_topology(site)
    ms = (time.perf_counter() - t0) * 1e3
    s = topo.summary()
    console.print(f"[green]ok[/green] {escape(str(args.file))}: site {escape(site.site.name)}: {s['feeds']} feeds, "
                  f"{s['ups']} UPS, {s['halls']} halls, {s['rows']} rows, {s['racks']} racks "
                  f"({s['rack_limit_mw']:,.1f} MW), {s['gpus']:,} GPUs, {s['loops']} loops, {s['jobs']} jobs "
                  f"(loaded in {ms:,.0f} ms)",
                  highlight=False)
    return 0


# ---- site generate / show ---------------------------------------------------------------

def cmd_site_generate(args: argparse.Namespace, console: Console) -> int:
    """Write a large valid site file."""
    from models.generate import generate_site
    from models.site import load_site

    text = generate_site(args.racks, name=args.name, seed=args.seed)
    out = Path(args.out)
    try:
        out.write_text(text)
    except OSError as exc:
        raise ConfigError(out, [("", f"cannot write: {exc.strerror}")]) from None
    load_site(out)  # what we write must load
    console.print(f"wrote {out}: {args.racks} racks, {args.racks * 576:,} GPUs", highlight=False, markup=False)
    return 0


def cmd_site_show(args: argparse.Namespace, console: Console) -> int:
    """Print the topology of a site and how long its arrays take to build."""
    from models.configfile import read_toml
    from models.site import load_site
    from models.topology import LEVELS, build_topology

    t0 = time.perf_counter()
    raw = read_toml(args.file)
    t1 = time.perf_counter()
    site = load_site(args.file, data=raw)
    t2 = time.perf_counter()
    topo = build_topology(site)
    t3 = time.perf_counter()
    info = {"site": site.site.name, **topo.summary(),
            "parse_ms": round((t1 - t0) * 1e3, 1), "validate_ms": round((t2 - t1) * 1e3, 1),
            "topology_ms": round((t3 - t2) * 1e3, 1)}
    if args.json:
        print(json.dumps(info))
        return 0
    for k, v in info.items():
        console.print(f"{k:>14}: {v:,}" if isinstance(v, int | float) else f"{k:>14}: {v}", highlight=False,
                      markup=False)
    for lv, name in enumerate(LEVELS):
        lim = topo.node_limit_w[topo.level_slice(lv)]
        finite = lim[lim < float("inf")]
        total = f"{finite.sum() / 1e6:,.1f} MW of limits" if finite.size else "no limits"
        console.print(f"{name:>14}: {topo.count(lv):,} ({total})", highlight=False)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config`` and ``site`` to the CLI."""
    from models.site import MAX_RACKS

    c = sub.add_parser("config", help="configuration files")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cc = csub.add_parser("check", help="validate a site file")
    cc.add_argument("file")
    cc.set_defaults(handler=cmd_config_check)

    s = sub.add_parser("site", help="site files")
    ssub = s.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    sg = ssub.add_parser("generate", help="write a large valid site (benchmarks, soak runs)")
    sg.add_argument("--racks", type=finite_number(int, ge=1, le=MAX_RACKS), required=True,
                    help=f"racks to generate (1..{MAX_RACKS:,}, the most a site file may hold)")
    sg.add_argument("--out", required=True, metavar="FILE")
    sg.add_argument("--name", default="generated")
    sg.add_argument("--seed", type=SEED, default=1)
    sg.set_defaults(handler=cmd_site_generate)
    ss = ssub.add_parser("show", help="print a site's topology and build time")
    ss.add_argument("file")
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(handler=cmd_site_show)
