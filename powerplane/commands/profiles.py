"""``powerplane profiles list|show|check``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from models.errors import ProfileError

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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``profiles`` to the powerplane CLI."""
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
