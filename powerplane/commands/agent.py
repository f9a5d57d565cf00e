"""``powerplane agent``: apply the controller's rack commands to GPUs, with lease fallback.

One process serves units (``controllers.actuation.agent.CapUnit``): on a GPU node, that
node through NVML (``--node`` or ``--node-from-hostname``); for the twin or a rack-level
management controller, whole racks (``--rack``) through one backend per rack, reporting
one status per rack.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import logging
import os
import socket
from typing import Any

from rich.console import Console
from rich.table import Table

from models.errors import ConfigError
from models.files import private_dir
from powerplane.argtypes import MAX_RUN_S, finite_number
from powerplane.commands.common import add_mqtt_arguments, clock_from, mqtt_address, run_until
from powerplane.exposition import add_metrics_argument

BACKEND_NAMES = ("sim", "nvml")
log = logging.getLogger("powerplane.agent")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent`` to the CLI."""
    a = sub.add_parser("agent", help="apply the controller's caps to GPUs, with lease fallback")
    who = a.add_argument_group("what this agent serves (one of)")
    who.add_argument("--node", action="append", default=[], metavar="NAME",
                     help="node id from the site file (repeat, or a glob such as 'r01/*' for the sim backend)")
    who.add_argument("--rack", action="append", default=[], metavar="RACK",
                     help="every node of this rack (repeat or glob; sim backend)")
    who.add_argument("--node-from-hostname", action="store_true",
                     help="the node whose host name ([actuation].hostname_template) is this host's (or --hostname)")
    a.add_argument("--hostname", default=None, metavar="NAME",
                   help="with --node-from-hostname: use this host name, e.g. a Kubernetes node name "
                        "(default: this machine's)")
    a.add_argument("--site", required=True, help="site file (site id, [actuation] settings, GPU ranges)")
    add_mqtt_arguments(a)
    a.add_argument("--backend", choices=BACKEND_NAMES, default="nvml",
                   help="nvml: this machine's GPUs; sim: the twin's GPUs over MQTT (default nvml)")
    a.add_argument("--gpus", default=None, metavar="I,J", help="NVML GPU indices (default: all)")
    a.add_argument("--key-file", default=None, help="site HMAC key, mode 0600 (default: $POWERPLANE_SITE_KEY)")
    a.add_argument("--state-dir", default=None, help="keeps the last applied (epoch, seq) across restarts")
    a.add_argument("--safe-cap-w", type=finite_number(float, ge=1.0, le=1e5), default=None,
                   help="per-GPU fallback cap (default: [actuation].safe_cap_w, else the GPU's minimum)")
    a.add_argument("--duration", type=finite_number(float, gt=0, le=MAX_RUN_S), default=None,
                   metavar="S", help="stop after S seconds")
    a.add_argument("--summary-out", default=None, metavar="FILE", help="write what the agent did as JSON at exit")
    a.add_argument("--probe", action="store_true", help="show what NVML sees and exit")
    a.add_argument("--clock", default=None, help=argparse.SUPPRESS)  # the demo's shared scaled clock
    add_metrics_argument(a, None)
    a.set_defaults(handler=cmd_agent)


def cmd_agent(args: argparse.Namespace, console: Console) -> int:
    """Run capping units until stopped."""
    if args.probe:
        from controllers.actuation.nvml import probe

        console.print(probe(_gpu_indices(args.gpus)), highlight=False, markup=False)
        return 0
    return asyncio.run(_agent(args, console))


def _gpu_indices(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        idx = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("--gpus", [("", f"expected GPU indices like 0,1,2, got {text[:40]!r}")]) from None
    if not idx or any(not 0 <= i < 1024 for i in idx):
        raise ConfigError("--gpus", [("", "GPU indices must be 0..1023")])
    return idx


def _match(patterns: list[str], known: list[str], flag: str) -> list[str]:
    out: list[str] = []
    for pat in patterns:
        hit = [n for n in known if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ConfigError(flag, [("", f"{pat[:80]!r} matches nothing in the site file (e.g. {known[0]!r})")])
        out += [n for n in hit if n not in out]
    return out


def units_wanted(args: argparse.Namespace, layouts: Any, site: Any) -> list[tuple[str, list[int]]]:
    """``(rack, rack-local node indices)`` per unit: a whole rack where every node of it is served
    (with the sim backend), else one unit per node."""
    from controllers.actuation.hostnames import node_of_host

    nodes = [n for lay in layouts.racks.values() for n in lay.nodes]
    chosen: dict[str, list[int]] = {}
    for r in _match(args.rack, list(layouts.racks), "--rack") if args.rack else []:
        chosen[r] = list(range(layouts[r].n_nodes))
    picked = _match(args.node, nodes, "--node") if args.node else []
    if args.node_from_hostname:
        picked.append(node_of_host(site, args.hostname or socket.gethostname()))
    for n in picked:
        r = layouts.rack_of_node[n]
        k = layouts[r].node_local(n)
        if k not in chosen.setdefault(r, []):
            chosen[r].append(k)
    if not chosen:
        raise ConfigError("--node", [("", "name what this agent serves: --node, --rack or --node-from-hostname")])
    out: list[tuple[str, list[int]]] = []
    for r, ks in chosen.items():
        if len(ks) == layouts[r].n_nodes and args.backend == "sim":
            out.append((r, sorted(ks)))
        else:
            out += [(r, [k]) for k in sorted(ks)]
    if args.backend == "nvml" and len(out) != 1:
        raise ConfigError("--node", [("", "the nvml backend caps this machine's GPUs: serve exactly one node")])
    return out


def account(wanted: list[tuple[str, list[int]]], layouts: Any) -> str | None:
    """The MQTT account of an agent that serves one unit: its rack id when it serves the whole rack,
    else ``<rack>@<node>`` (the status topic level; ``powerplane acl`` names accounts so). None for
    several units: they need a URL that names the user."""
    from controllers.actuation.messages import topic_node

    if len(wanted) != 1:
        return None
    rack, nodes = wanted[0]
    lay = layouts[rack]
    return rack if len(nodes) == lay.n_nodes else topic_node(lay.nodes[nodes[0]])


async def _agent(args: argparse.Namespace, console: Console) -> int:
    from bus.mqtt import MqttLink
    from controllers.actuation.agent import AgentHost, CapUnit
    from controllers.actuation.backends import GpuBackend
    from controllers.actuation.layout import Layouts
    from controllers.actuation.messages import SiteKey
    from controllers.actuation.simbackend import SimBackend, SimBoards
    from models.files import write_json
    from models.site import load_site
    from models.topology import build_topology

    site = load_site(args.site)
    topo = build_topology(site)
    layouts = Layouts(topo)
    wanted = units_wanted(args, layouts, site)
    addr = mqtt_address(args, default_user=account(wanted, layouts))
    key = SiteKey.load(args.key_file)
    clock = clock_from(args.clock)
    cfg = site.actuation
    safe = args.safe_cap_w if args.safe_cap_w is not None else cfg.safe_cap_w
    state_dir = private_dir(args.state_dir) if args.state_dir else None
    cid = f"powerplane-agent-{socket.gethostname()}-{os.getpid()}"
    link = MqttLink(addr, cid, clean_session=False)
    boards: SimBoards | None = None
    if args.backend == "sim":
        boards = SimBoards(link, site.site.name)
        await boards.start()
    units = []
    for rack, nodes in wanted:
        lay = layouts[rack]
        backend: GpuBackend
        if boards is not None:
            backend = SimBackend(boards, lay, nodes)
        else:
            from controllers.actuation.nvml import NvmlBackend

            backend = NvmlBackend(_gpu_indices(args.gpus))
        units.append(CapUnit(site.site.name, lay, nodes, key, backend, clock, prefix=cfg.topic_prefix,
                             lease_s=cfg.lease_s, safe_cap_w=safe, status_every_s=cfg.status_every_s,
                             state_dir=state_dir))
    host = AgentHost(units, addr, clock, client_id=cid, link=link)
    logging.getLogger("powerplane.agent").setLevel(logging.INFO)
    n_nodes = sum(len(u.nodes) for u in units)
    console.print(f"powerplane agent · site {site.site.name} · {len(units)} unit(s), {n_nodes} node(s) · "
                  f"backend {args.backend} · MQTT {addr.url()} · lease {cfg.lease_s:g} s · key {key.kid}",
                  highlight=False, markup=False)
    from powerplane.exposition import serve
    from powerplane.metrics import agent_checks, agent_registry

    live, ready = agent_checks(host, stall_s=max(5.0, 20 * host.check_every_s / clock.speed))
    metrics = serve(args, agent_registry(host, clock), live, ready, "agent")
    if metrics is not None:
        console.print(f"metrics {metrics.url}/metrics", highlight=False, markup=False)
    mqtt: dict[str, int] = {}
    try:
        await host.start()
        await run_until(args.duration, clock)
    finally:
        # Before the stop's own disconnect: a session taken over by another client shows here.
        mqtt = {"connects": link.connects, "disconnects": link.disconnects}
        await host.stop()
        if boards is not None:
            await boards.stop()
        if args.summary_out:
            write_json(args.summary_out, {**host.summary(), "mqtt": mqtt,
                                          "metrics": metrics.url if metrics is not None else None})
        if metrics is not None:
            metrics.stop()
    console.print(agent_table(host))
    return 0


def agent_table(host: Any) -> Table:
    """Summary of an agent host's units."""
    import numpy as np

    s = host.summary()
    tab = Table(title="agent", show_header=False)
    ms = np.asarray([m for u in host.units for m in u.stats.apply_ms]) if host.units else np.zeros(0)
    tab.add_row("nodes", f"{s['nodes']}: " + ", ".join(f"{m} {n}" for m, n in s["modes"].items()))
    tab.add_row("commands applied", str(s["applied"]))
    tab.add_row("leases renewed", str(s["renewed"]))
    tab.add_row("lease fallbacks", str(s["fallbacks"]))
    tab.add_row("rejected", ", ".join(f"{k} {v}" for k, v in sorted(s["rejected"].items())) or "0")
    if ms.size:
        tab.add_row("apply latency", f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms")
    return tab
