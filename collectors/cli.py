"""``powerplane profiles list|show|check`` and ``powerplane collect``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from models.errors import ConfigError, ProfileError

log = logging.getLogger("powerplane.collectors")


# ---- profiles ---------------------------------------------------------------------------

def cmd_profiles_list(args: argparse.Namespace, console: Console) -> int:
    """List every profile found (shipped and POWERPLANE_PROFILE_PATH)."""
    from collectors.profiles import list_profiles

    infos = list_profiles()
    if args.json:
        print(json.dumps([{"name": i.name, "protocol": i.protocol, "vendor": i.vendor,
                           "description": i.description, "path": str(i.path)} for i in infos]))
        return 0
    tab = Table(title="device profiles")
    for col in ("name", "protocol", "vendor", "description"):
        tab.add_column(col)
    for i in infos:  # profile files are the operator's text: never rich markup
        tab.add_row(Text(i.name), Text(i.protocol), Text(i.vendor), Text(i.description))
    console.print(tab)
    return 0


def _load(name_or_file: str) -> Any:
    from collectors.profiles import find_profile, load_profile

    p = Path(name_or_file)
    if p.suffix == ".toml" or p.exists():
        return load_profile(p)
    return find_profile(name_or_file)


def cmd_profiles_show(args: argparse.Namespace, console: Console) -> int:
    """Print a profile's points: where each is read and which metric it feeds."""
    prof = _load(args.profile)
    rows = prof.describe()
    if args.json:
        print(json.dumps({"name": prof.name, "protocol": prof.protocol, "path": str(prof.path),
                          "points": [{"point": a, "metric": b, "detail": c} for a, b, c in rows]}))
        return 0
    tab = Table(title=Text(f"{prof.name} ({prof.protocol}) · {prof.path}"))
    for col in ("point", "metric", "read as"):
        tab.add_column(col)
    for row in rows:
        tab.add_row(*(Text(c) for c in row))
    console.print(tab)
    return 0


def cmd_profiles_check(args: argparse.Namespace, console: Console) -> int:
    """Validate one profile file, or every profile found; exit 2 naming file and key on a bad one."""
    from collectors.profiles import load_profile, profile_files

    files = [Path(f) for f in args.files] if args.files else list(profile_files())
    problems: list[ProfileError] = []
    for f in files:
        try:
            prof = load_profile(f)
        except ProfileError as err:
            problems.append(err)
            continue
        console.print(f"[green]ok[/green] {escape(str(f))}: {escape(prof.protocol)} profile {escape(prof.name)}, "
                      f"{len(prof.describe())} points", highlight=False)
    if problems:
        for bad in problems:
            console.print(bad.render(), highlight=False, markup=False)
        return 2
    return 0


# ---- collect ----------------------------------------------------------------------------

def cmd_collect(args: argparse.Namespace, console: Console) -> int:
    """Collect devices for a while and print the latest readings and device health."""
    return asyncio.run(_collect(args, console))


async def _collect(args: argparse.Namespace, console: Console) -> int:
    from collectors.config import devices_from_twin, load_collect_file, load_endpoints
    from collectors.registry import POLLER_FACTORIES
    from collectors.runtime import CollectorSet
    from models.clock import SystemClock
    from models.readings import REGISTRY, ReadingBatch

    stuck: dict[str, int] = {}
    if args.config:
        cfg = load_collect_file(args.config)
        devices, stuck = cfg.devices, dict(cfg.stuck_polls)
        site = next((dict(d.tags).get("site", "") for d in devices if dict(d.tags).get("site")), "site")
    else:
        site, eps = load_endpoints(args.endpoints)
        topo = None
        if args.site:
            from models.site import load_site
            from models.topology import build_topology

            topo = build_topology(load_site(args.site))
        devices = devices_from_twin(eps, site, topo=topo, interval_s=args.interval,
                                    timeout_s=min(1.0, args.interval))
    usable = [d for d in devices if d.protocol == "mqtt" or d.protocol in POLLER_FACTORIES]
    for d in devices:
        if d not in usable:
            console.print(f"[yellow]skipped[/yellow] {escape(d.name)}: no {escape(d.protocol)} poller in this build",
                          highlight=False)
    if not usable:
        raise ConfigError(args.config or args.endpoints, [("", "no device this build can collect")])
    latest: dict[int, tuple[int, float, int]] = {}

    def on_batch(b: ReadingBatch) -> None:
        for t, s, v, q in zip(b.ts_ns.tolist(), b.series.tolist(), b.value.tolist(), b.quality.tolist(),
                              strict=True):
            old = latest.get(s)
            if old is None or t >= old[0]:
                latest[s] = (t, v, q)

    clock = SystemClock()
    cs = CollectorSet(usable, clock=clock, registry=REGISTRY, on_batch=on_batch, stuck_polls=stuck)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await cs.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    finally:
        await cs.stop()
    health = cs.health()
    reg = REGISTRY
    readings = sorted(((reg.key(s).metric, reg.key(s).tags, v, t, q) for s, (t, v, q) in latest.items()),
                      key=lambda r: (r[0], r[1]))
    if args.json:
        print(json.dumps({
            "site": site,
            "readings": [{"metric": m, "tags": dict(tags), "value": v, "ts_ns": t, "quality": q}
                         for m, tags, v, t, q in readings],
            "health": [{"device": h.device, "protocol": h.protocol, "up": h.up, "polls": h.polls,
                        "consecutive_failures": h.consecutive_failures, "latency_s": round(h.latency_s, 6),
                        "readings": h.readings, "rejected": {r.name: n for r, n in h.rejected.items()},
                        "messages_bad": h.messages_bad, "last_error": h.last_error} for h in health],
        }))
        return 0 if any(h.up for h in health) else 1
    tab = Table(title=f"latest readings ({len(readings)} series)")
    for col in ("metric", "tags", "value"):
        tab.add_column(col)
    for m, tags, v, _, q in readings:
        tab.add_row(Text(m), Text(",".join(f"{k}={x}" for k, x in tags)), f"{v:,.3f}" + (f" (q={q})" if q else ""))
    console.print(tab)
    ht = Table(title="device health")
    for col in ("device", "protocol", "up", "polls", "failures", "latency ms", "readings", "rejected", "last error"):
        ht.add_column(col)
    for h in health:
        ht.add_row(Text(h.device), Text(h.protocol), "yes" if h.up else "[red]no[/red]", str(h.polls),
                   str(h.consecutive_failures), f"{h.latency_s * 1e3:.1f}", str(h.readings),
                   str(h.rejected_total + h.messages_bad), Text(h.last_error))
    console.print(ht)
    return 0 if any(h.up for h in health) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``profiles`` and ``collect`` to the powerplane CLI."""
    from powerplane.argtypes import MAX_RUN_S, finite_number

    p = sub.add_parser("profiles", help="device profiles (Modbus, SNMP, MQTT)")
    psub = p.add_subparsers(dest="profiles_command", required=True, metavar="ACTION")
    pl = psub.add_parser("list", help="list shipped and user profiles")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(handler=cmd_profiles_list)
    ps = psub.add_parser("show", help="print a profile's points")
    ps.add_argument("profile", help="profile name or .toml file")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(handler=cmd_profiles_show)
    pc = psub.add_parser("check", help="validate profile files (default: every profile found)")
    pc.add_argument("files", nargs="*", metavar="FILE")
    pc.set_defaults(handler=cmd_profiles_check)

    c = sub.add_parser("collect", help="collect devices and print readings and device health")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="collect.toml")
    src.add_argument("--endpoints", metavar="FILE", help="endpoints JSON written by `powerplane twin`")
    c.add_argument("--site", metavar="FILE", help="with --endpoints: the twin's site file (tap-offs become racks, "
                   "ratings set range checks)")
    c.add_argument("--duration", type=finite_number(float, gt=0, le=MAX_RUN_S), default=5.0,
                   help="seconds to collect (default 5)")
    c.add_argument("--interval", type=finite_number(float, gt=0, le=3600), default=1.0,
                   help="poll interval for --endpoints devices (default 1)")
    c.add_argument("--json", action="store_true", help="print one JSON document")
    c.set_defaults(handler=cmd_collect)
