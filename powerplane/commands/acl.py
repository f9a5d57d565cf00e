"""``powerplane acl``: the broker's topic ACL for a site, written from the site file.

Who may publish what is a property of the site (its racks, nodes, collectors), so the
mosquitto ``acl_file`` is generated, never edited by hand. Every account gets an explicit
``user`` block and there is no ``pattern`` line: a pattern applies to *every* user, which is
how the operator and collector accounts once could write agent statuses (issue 13, finding
1). Mosquitto denies whatever no line grants, so an account the file does not name (and an
anonymous client) can do nothing. Per site ``S`` and topic prefix ``P``:

==============  =================================================  ==============================================
account         reads                                              writes
==============  =================================================  ==============================================
controller      ``P/S/status/+``, ``P/S/readings/+``, grid, BMS    ``P/S/caps/+``, ``P/S/events/+``,
                                                                   ``P/S/controller/state``
collector ``c`` grid and BMS, if it collects MQTT devices          ``P/S/readings/c``
store writer    ``P/S/readings/+`` (as the shared subscription     nothing
                ``$share/<group>/P/S/readings/+``)
operator        everything (``#``)                                 nothing
rack ``r``      ``P/S/caps/r``                                     ``P/S/status/r``
node ``r@n``    ``P/S/caps/r`` (its rack's command)                ``P/S/status/r@n``
==============  =================================================  ==============================================

With ``--twin`` (the demo's simulated backend only) agents also drive the twin's GPU
boards: write ``twin/S/gpu/set``, read ``twin/S/gpu/state/#``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console

from models.errors import ConfigError
from models.site import SiteConfig

AgentMode = Literal["rack", "node"]
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
GRID = "grid/{site}/#"
BMS = "BMS/v1/PUB/Value/#"


@dataclass(frozen=True)
class Accounts:
    """The site's MQTT accounts other than its agents (whose names come from the site file)."""

    controllers: tuple[str, ...] = ("controller",)
    collectors: tuple[str, ...] = ("collector-0",)
    mqtt_collectors: tuple[str, ...] = ()  # accounts that collect MQTT devices: they read grid and BMS
    operators: tuple[str, ...] = ("operator",)
    writers: tuple[str, ...] = ()  # store writers: they read every collector's batches (shared subscription)


def agent_accounts(site: SiteConfig, mode: AgentMode) -> list[tuple[str, str]]:
    """``(account, rack)`` of every agent: one per rack (its id), or one per node (``<rack>@<node>``)."""
    from controllers.actuation.layout import Layouts
    from controllers.actuation.messages import topic_node
    from models.topology import build_topology

    layouts = Layouts(build_topology(site))
    out: list[tuple[str, str]] = []
    for rack in layouts.order:
        if mode == "rack":
            out.append((rack, rack))
        else:
            out += [(topic_node(n), rack) for n in layouts[rack].nodes]
    return out


def acl_text(site: SiteConfig, accounts: Accounts = Accounts(), *, agents: AgentMode = "rack",
             twin: bool = False) -> str:
    """The mosquitto ``acl_file`` of ``site`` (see the module docstring); ConfigError on a bad account name."""
    sid, prefix = site.site.name, site.actuation.topic_prefix
    base = f"{prefix}/{sid}"
    agent_list = agent_accounts(site, agents)
    _check_names(accounts, {a for a, _ in agent_list})
    grid = GRID.format(site=sid)
    cmd = (f"powerplane acl --site SITE --agents {agents} --controllers {','.join(accounts.controllers)} "
           f"--collectors {','.join(accounts.collectors)} --operators {','.join(accounts.operators)}"
           + (f" --mqtt-collectors {','.join(accounts.mqtt_collectors)}" if accounts.mqtt_collectors else "")
           + (f" --writers {','.join(accounts.writers)}" if accounts.writers else "")
           + (" --twin" if twin else ""))
    out = [f"# Topic ACL of the authenticated listener for site {sid} (mosquitto acl_file).",
           f"# Generated from the site file by: {cmd}",
           "# Do not edit: regenerate it when racks, nodes or accounts change. One block per account and no",
           "# pattern lines (a pattern applies to every user); whatever no line grants is denied.",
           ""]

    def block(user: str, read: Sequence[str], write: Sequence[str]) -> None:
        out.append(f"user {user}")
        out.extend(f"topic read {t}" for t in read)
        out.extend(f"topic write {t}" for t in write)
        out.append("")

    if accounts.controllers:
        out.append("# Controllers: agent statuses, reading batches and grid/BMS signals in; rack commands, hook events")
        out.append("# and the controller state out.")
    for c in accounts.controllers:
        block(c, [f"{base}/status/+", f"{base}/readings/+", grid, BMS],
              [f"{base}/caps/+", f"{base}/events/+", f"{base}/controller/state"])
    collectors = list(dict.fromkeys([*accounts.collectors, *accounts.mqtt_collectors]))
    if collectors:
        out.append("# Collectors: each writes only its own reading batches; those that collect MQTT devices read")
        out.append("# the grid and BMS signals.")
    for c in collectors:
        block(c, [grid, BMS] if c in accounts.mqtt_collectors else [],
              [f"{base}/readings/{c}"] if c in accounts.collectors else [])
    if accounts.writers:
        out.append("# Store writers: each reads the collectors' reading batches (its share of them, through the shared")
        out.append("# subscription $share/<group>/...; mosquitto checks the topic without the $share prefix) and")
        out.append("# writes nothing.")
    for w in accounts.writers:
        block(w, [f"{base}/readings/+"], [])
    if accounts.operators:
        out.append("# Operators: read everything, write nothing.")
    for o in accounts.operators:
        block(o, ["#"], [])
    out.append(f"# {'Rack' if agents == 'rack' else 'Node'} agents: each reads only its rack's commands and writes "
               "only its own status.")
    if twin:
        out.append("# --twin (demo only): they also drive the twin's simulated GPU boards.")
    twin_read = [f"twin/{sid}/gpu/state/#"] if twin else []
    twin_write = [f"twin/{sid}/gpu/set"] if twin else []
    for account, rack in agent_list:
        block(account, [f"{base}/caps/{rack}", *twin_read], [f"{base}/status/{account}", *twin_write])
    return "\n".join(out).rstrip("\n") + "\n"


def _check_names(accounts: Accounts, agents: set[str]) -> None:
    seen: dict[str, str] = {a: "an agent (rack or node) of the site" for a in agents}
    problems: list[tuple[str, str]] = []
    for role, names in (("--controllers", accounts.controllers), ("--collectors", accounts.collectors),
                        ("--operators", accounts.operators), ("--writers", accounts.writers)):
        for n in names:
            if not ACCOUNT_RE.match(n):
                problems.append((role, f"{n[:80]!r} is not an account name (letters, digits, '.', '_', '-'; "
                                       "at most 64)"))
            elif n in seen:
                problems.append((role, f"{n!r} is already {seen[n]}: one account, one role"))
            else:
                seen[n] = role
    for n in accounts.mqtt_collectors:
        if not ACCOUNT_RE.match(n):
            problems.append(("--mqtt-collectors", f"{n[:80]!r} is not an account name"))
        elif seen.get(n, "--collectors") != "--collectors":
            problems.append(("--mqtt-collectors", f"{n!r} is already {seen[n]}: one account, one role"))
    if problems:
        raise ConfigError("powerplane acl", problems)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``acl`` to the CLI."""
    a = sub.add_parser("acl", help="write the broker's topic ACL (mosquitto acl_file) for a site")
    a.add_argument("--site", required=True, help="site file")
    a.add_argument("--agents", choices=("rack", "node"), default="rack",
                   help="one agent account per rack (its id) or per node (<rack>@<node>) (default rack)")
    a.add_argument("--controllers", default="controller", metavar="NAMES", help="controller accounts (comma list)")
    a.add_argument("--collectors", default="collector-0", metavar="NAMES",
                   help="collector accounts: each writes <prefix>/<site>/readings/<name> (comma list)")
    a.add_argument("--mqtt-collectors", default="", metavar="NAMES",
                   help="accounts that collect MQTT devices: they read the grid and BMS topics (comma list)")
    a.add_argument("--operators", default="operator", metavar="NAMES", help="read-only accounts (comma list)")
    a.add_argument("--writers", default="", metavar="NAMES",
                   help="store writer accounts: each reads every collector's batches (comma list)")
    a.add_argument("--twin", action="store_true",
                   help="demo only: agents may drive the twin's simulated GPU boards (twin/<site>/gpu/...)")
    a.add_argument("--out", default=None, metavar="FILE", help="write here (default: standard output)")
    a.set_defaults(handler=cmd_acl)


def cmd_acl(args: argparse.Namespace, console: Console) -> int:
    """Write the ACL of a site."""
    from models.site import load_site

    site = load_site(args.site)
    text = acl_text(site, Accounts(_names(args.controllers), _names(args.collectors), _names(args.mqtt_collectors),
                                   _names(args.operators), _names(args.writers)), agents=args.agents, twin=args.twin)
    if args.out is None:
        print(text, end="")
        return 0
    out = Path(args.out)
    try:
        out.write_text(text)
    except OSError as exc:
        raise ConfigError(out, [("", f"cannot write: {exc.strerror}")]) from None
    users = text.count("\nuser ")
    console.print(f"wrote {out}: {users} accounts", highlight=False, markup=False)
    return 0
