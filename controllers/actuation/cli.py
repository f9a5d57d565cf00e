"""``powerplane agent`` (on each GPU node) and ``powerplane controller`` (one per site)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from models.errors import ConfigError

BACKEND_NAMES = ("sim", "nvml")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent`` and ``controller`` to the CLI."""
    from powerplane.store.config import add_store_arguments

    a = sub.add_parser("agent", help="apply the controller's caps to this node's GPUs, with lease fallback")
    a.add_argument("--node", action="append", required=True, metavar="NAME",
                   help="node id from the site file (repeat, or a glob such as 'r01/*' for the sim backend)")
    a.add_argument("--site", required=True, help="site file (site id, [actuation] settings, GPU ranges)")
    a.add_argument("--mqtt", required=True, metavar="URL", help="broker, mqtt://[user:password@]host:port")
    a.add_argument("--backend", choices=BACKEND_NAMES, default="nvml",
                   help="nvml: this machine's GPUs; sim: the twin's GPUs over MQTT (default nvml)")
    a.add_argument("--gpus", default=None, metavar="I,J", help="NVML GPU indices (default: all)")
    a.add_argument("--key-file", default=None, help="site HMAC key (default: $POWERPLANE_SITE_KEY)")
    a.add_argument("--state-dir", default=None, help="keeps the last applied seq across restarts")
    a.add_argument("--safe-cap-w", type=float, default=None,
                   help="per-GPU fallback cap (default: [actuation].safe_cap_w, else the GPU's minimum)")
    a.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    a.add_argument("--probe", action="store_true", help="show what NVML sees and exit")
    a.add_argument("--clock", default=None, help=argparse.SUPPRESS)  # the demo's shared scaled clock
    a.set_defaults(handler=cmd_agent)

    c = sub.add_parser("controller", help="run the site's control plane: collect, plan, publish caps, verify")
    c.add_argument("--site", required=True, help="site file")
    c.add_argument("--mqtt", required=True, metavar="URL", help="broker, mqtt://[user:password@]host:port")
    src = c.add_mutually_exclusive_group()
    src.add_argument("--collect", default=None, metavar="FILE", help="devices to collect (collect.toml)")
    src.add_argument("--endpoints", default=None, metavar="FILE",
                     help="a twin's endpoints.json (`powerplane twin --endpoints-out`)")
    c.add_argument("--key-file", default=None, help="site HMAC key (default: $POWERPLANE_SITE_KEY)")
    c.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    c.add_argument("--clock", default=None, help=argparse.SUPPRESS)
    add_store_arguments(c)
    c.set_defaults(handler=cmd_controller)


def _clock(anchor: str | None) -> Any:
    from models.clock import ScaledClock, SystemClock

    if anchor is None:
        return SystemClock()
    try:
        return ScaledClock.from_anchor(anchor)
    except ValueError as exc:
        raise ConfigError("--clock", [("", str(exc))]) from None


def _key(path: str | None) -> Any:
    from controllers.actuation.messages import SiteKey

    return SiteKey.load(path)


async def _run_until(duration_s: float | None, clock: Any, tick: Callable[[], None] | None = None,
                     every_s: float = 10.0) -> None:
    """Wait for SIGINT/SIGTERM or ``duration_s`` of (site) time, calling ``tick`` every ``every_s``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    end = None if duration_s is None else clock.now_ns() + int(duration_s * 1e9)
    while not stop.is_set() and (end is None or clock.now_ns() < end):
        with contextlib.suppress(TimeoutError):
            left = every_s if end is None else min(every_s, (end - clock.now_ns()) / 1e9)
            await asyncio.wait_for(stop.wait(), max(0.01, left / getattr(clock, "speed", 1.0)))
        if tick is not None:
            tick()


# ---- agent ------------------------------------------------------------------------------------
def cmd_agent(args: argparse.Namespace, console: Console) -> int:
    """Run node agents until stopped."""
    if args.probe:
        from controllers.actuation.nvml import probe

        console.print(probe(_gpu_indices(args.gpus)), highlight=False)
        return 0
    return asyncio.run(_agent(args, console))


def _gpu_indices(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("--gpus", [("", f"expected GPU indices like 0,1,2, got {text!r}")]) from None


def _nodes(patterns: list[str], known: list[str]) -> list[str]:
    out: list[str] = []
    for pat in patterns:
        hit = [n for n in known if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ConfigError("--node", [("", f"{pat!r} matches no node of the site (e.g. {known[0]!r})")])
        out += [n for n in hit if n not in out]
    return out


async def _agent(args: argparse.Namespace, console: Console) -> int:
    from controllers.actuation.agent import AgentHost, NodeAgent
    from controllers.actuation.backends import GpuBackend
    from controllers.actuation.link import MqttAddress
    from controllers.actuation.simbackend import SimBackend, SimBoards
    from models.site import load_site
    from models.topology import L_NODE, build_topology

    site = load_site(args.site)
    topo = build_topology(site)
    nodes = _nodes(args.node, topo.ids(L_NODE))
    addr = MqttAddress.parse(args.mqtt)
    key = _key(args.key_file)
    clock = _clock(args.clock)
    cfg = site.actuation
    safe = args.safe_cap_w if args.safe_cap_w is not None else cfg.safe_cap_w
    boards: SimBoards | None = None
    if args.backend == "sim":
        boards = SimBoards(addr, site.site.name, f"powerplane-agent-boards-{os.getpid()}")
        await boards.start()
    elif len(nodes) > 1:
        raise ConfigError("--node", [("", "the nvml backend caps this machine's GPUs: give exactly one node")])
    agents = []
    for n in nodes:
        backend: GpuBackend
        if boards is not None:
            backend = SimBackend(boards, topo, n)
        else:
            from controllers.actuation.nvml import NvmlBackend

            backend = NvmlBackend(_gpu_indices(args.gpus))
        agents.append(NodeAgent(site.site.name, n, key, backend, clock, prefix=cfg.topic_prefix,
                                safe_cap_w=safe, status_every_s=cfg.status_every_s, state_dir=args.state_dir))
    cid = f"powerplane-agent-{nodes[0].replace('/', '@')}" if len(nodes) == 1 else \
        f"powerplane-agents-{socket.gethostname()}-{os.getpid()}"
    host = AgentHost(agents, addr, clock, client_id=cid)
    logging.getLogger("powerplane.agent").setLevel(logging.INFO)
    console.print(f"powerplane agent · site {site.site.name} · {len(nodes)} node(s) · backend {args.backend} · "
                  f"MQTT {addr.url()} · lease {cfg.lease_s:g} s · key {key.kid}", highlight=False)
    try:
        await host.start()
        await _run_until(args.duration, clock)
    finally:
        await host.stop()
        if boards is not None:
            await boards.stop()
    console.print(agent_table(host), highlight=False)
    return 0


def agent_table(host: Any) -> Table:
    """Summary of an agent host's nodes."""
    import numpy as np

    agents = list(host.agents.values())
    tab = Table(title="agent", show_header=False)
    rej: dict[str, int] = {}
    for a in agents:
        for k, v in a.stats.rejected.items():
            rej[k] = rej.get(k, 0) + v
    ms = np.asarray([m for a in agents for m in a.stats.apply_ms]) if agents else np.zeros(0)
    tab.add_row("nodes", f"{len(agents)}: " + ", ".join(f"{m} {n}" for m, n in host.modes().items()))
    tab.add_row("commands applied", str(sum(a.stats.applied for a in agents)))
    tab.add_row("leases renewed", str(sum(a.stats.renewed for a in agents)))
    tab.add_row("lease fallbacks", str(sum(a.stats.fallbacks for a in agents)))
    tab.add_row("rejected", ", ".join(f"{k} {v}" for k, v in sorted(rej.items())) or "0")
    if ms.size:
        tab.add_row("apply latency", f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms")
    return tab


# ---- controller ---------------------------------------------------------------------------------
def cmd_controller(args: argparse.Namespace, console: Console) -> int:
    """Run the site's control plane until stopped."""
    return asyncio.run(_controller(args, console))


async def _controller(args: argparse.Namespace, console: Console) -> int:
    from collectors.config import devices_from_twin, load_collect_config, load_endpoints
    from controllers.actuation.actuator import Actuator
    from controllers.actuation.link import MqttAddress
    from models.site import load_site
    from models.topology import L_NODE, build_topology
    from powerplane.runtime import ControlPlane
    from powerplane.store.config import open_sink, store_config_from_args

    site = load_site(args.site)
    topo = build_topology(site)
    addr = MqttAddress.parse(args.mqtt)
    key = _key(args.key_file)
    clock = _clock(args.clock)
    devices = []
    if args.collect:
        devices = load_collect_config(args.collect)
    elif args.endpoints:
        _site_id, eps = load_endpoints(args.endpoints)
        devices = devices_from_twin(eps, site.site.name, topo=topo, interval_s=2.0, timeout_s=1.0)
    store_cfg = store_config_from_args(args, site.site.name)
    sink = open_sink(store_cfg)
    actuator = Actuator(site, topo, key, addr)
    hooks = build_hooks(site, addr, topo)
    plane = ControlPlane(site, topo, clock, sink, devices=devices, actuator=actuator, hooks=hooks,
                         advisors=build_advisors(site, topo))
    console.print(f"powerplane controller · site {site.site.name} · {topo.count(L_NODE):,} nodes, "
                  f"{topo.n_gpus:,} GPUs · {len(devices)} devices · MQTT {addr.url()} · key {key.kid} · "
                  f"lease {site.actuation.lease_s:g} s",
                  highlight=False)

    def line() -> None:
        p = plane.last_plan
        v = actuator.verifier.stats
        console.print(f"plan {p.plan_id if p else '-'} budget {p.budget_w / 1e3 if p else 0:,.0f} kW, "
                      f"{p.gpus_capped if p else 0} GPUs capped · commands {actuator.publisher.stats.commands} · "
                      f"nodes {v.modes} · non-compliant {v.noncompliant_now}", highlight=False)

    try:
        if hooks is not None:
            hooks.start()
        await plane.start()
        await _run_until(args.duration, clock, line)
    finally:
        await plane.stop()
        if hooks is not None:
            hooks.close()
        sink.close()
    return 1 if plane.stats.plans_with_violations else 0


def build_hooks(site: Any, addr: Any, topo: Any = None, secrets: list[bytes] | None = None) -> Any:
    """The scheduler hooks of ``site`` ([hooks]): webhooks, MQTT event topics, Slurm, Kubernetes."""
    from controllers.hooks.dispatch import HookDispatcher
    from models.topology import L_NODE, L_RACK

    h = site.hooks
    if not (h.webhooks or h.mqtt_events or h.slurm != "off" or h.kubernetes != "off"):
        return None
    rack_nodes: dict[str, list[str]] | None = None
    if topo is not None:
        rack_nodes = {r: [] for r in topo.ids(L_RACK)}
        for n in topo.ids(L_NODE):
            rack_nodes.setdefault(n.split("/", 1)[0], []).append(n)
    return HookDispatcher(h, site.site.name, mqtt=addr, topic_prefix=site.actuation.topic_prefix,
                          rack_nodes=rack_nodes, secrets=secrets)


def build_advisors(site: Any, topo: Any) -> list[Any]:
    """Per-period advisors for ``site``: move/preempt recommendations."""
    from controllers.moves import MoveAdvisor

    return [MoveAdvisor(topo, site.site.name)]
