"""``powerplane collect``: poll devices, then print the readings — or publish them to the controller.

Without ``--publish`` it collects for ``--duration`` seconds and prints the latest readings
and device health (a commissioning tool). With ``--publish mqtt://...`` it is a collector
process of the plane: it runs until stopped and sends every batch to the controller
(``collectors.publish``), so polling runs on its own core and can be spread over hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from typing import Any

from rich.console import Console
from rich.table import Table

from models.errors import ConfigError
from powerplane.argtypes import MAX_RUN_S, finite_number
from powerplane.commands.common import clock_from, mqtt_address, run_until
from powerplane.exposition import COLLECTOR_DEFAULT, add_metrics_argument

PROTOCOLS = ("modbus", "snmp", "mqtt")
log = logging.getLogger("powerplane.collect")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``collect`` to the CLI."""
    c = sub.add_parser("collect", help="collect devices: print readings and health, or publish them (--publish)")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="collect.toml")
    src.add_argument("--endpoints", metavar="FILE", help="endpoints JSON written by `powerplane twin`")
    c.add_argument("--site", metavar="FILE", help="with --endpoints: the twin's site file (tap-offs become racks, "
                   "ratings set range checks, CDUs are polled every control period)")
    c.add_argument("--protocols", default=",".join(PROTOCOLS), metavar="P,Q",
                   help="collect only devices of these protocols (default all)")
    c.add_argument("--duration", type=finite_number(float, gt=0, le=MAX_RUN_S), default=None,
                   help="seconds to collect (default 5; with --publish: until stopped)")
    c.add_argument("--interval", type=finite_number(float, gt=0, le=86_400), default=1.0,
                   help="poll interval for --endpoints devices (default 1)")
    c.add_argument("--shard", default=None, metavar="I/N",
                   help="poll only shard I of N (0-based): a stable hash of each device name picks its shard, so N "
                        "collectors on any hosts split the devices without talking to each other")
    c.add_argument("--device", action="append", default=[], metavar="PATTERN",
                   help="poll only devices whose name matches (shell-style, repeatable): an explicit list per host")
    c.add_argument("--json", action="store_true", help="print one JSON document")
    c.add_argument("--publish", default=None, metavar="URL",
                   help="send reading batches to the controller over this broker (mqtt://[user@]host:port)")
    c.add_argument("--mqtt-password-file", default=None, metavar="FILE", help="the MQTT user's password")
    c.add_argument("--src", default=None,
                   help="this collector's name in topics (default: the MQTT user name, which the broker's ACL lets "
                        "write only its own readings topic; without one collect-<host>-<pid>)")
    c.add_argument("--summary-out", default=None, metavar="FILE", help="with --publish: device health as JSON at exit")
    c.add_argument("--clock", default=None, help=argparse.SUPPRESS)
    add_metrics_argument(c, COLLECTOR_DEFAULT)
    c.set_defaults(handler=cmd_collect)


def cmd_collect(args: argparse.Namespace, console: Console) -> int:
    """Collect devices (see the module docstring)."""
    if args.publish:
        return asyncio.run(_publish(args, console))
    return asyncio.run(_collect(args, console))


def _devices(args: argparse.Namespace) -> tuple[str, list[Any], dict[str, int], Any]:
    from collectors.config import devices_from_twin, load_collect_file, load_endpoints
    from collectors.registry import POLLER_FACTORIES

    stuck: dict[str, int] = {}
    site_cfg = None
    if args.config:
        cfg = load_collect_file(args.config)
        devices, stuck = cfg.devices, dict(cfg.stuck_polls)
        site = next((dict(d.tags).get("site", "") for d in devices if dict(d.tags).get("site")), "site")
    else:
        site, eps = load_endpoints(args.endpoints)
        topo = None
        period = None
        if args.site:
            from models.site import load_site
            from models.topology import build_topology

            site_cfg = load_site(args.site)
            topo = build_topology(site_cfg)
            period = site_cfg.controller.period_s
        devices = devices_from_twin(eps, site, topo=topo, interval_s=args.interval,
                                    timeout_s=min(1.0, args.interval), period_s=period)
    protocols = {p.strip() for p in args.protocols.split(",") if p.strip()}
    if protocols - set(PROTOCOLS):
        raise ConfigError("--protocols", [("", f"unknown {sorted(protocols - set(PROTOCOLS))}; known {PROTOCOLS}")])
    usable = [d for d in devices
              if d.protocol in protocols and (d.protocol == "mqtt" or d.protocol in POLLER_FACTORIES)]
    if not usable:
        raise ConfigError(args.config or args.endpoints, [("", "no device this build can collect")])
    if args.shard or args.device:
        from collectors.shard import parse_shard, select

        shard = parse_shard(args.shard) if args.shard else None
        usable = select(usable, shard, args.device)
        if not usable:
            where = args.config or args.endpoints
            raise ConfigError("--shard/--device", [("", f"no device of {where} falls in shard {shard or 'any'} "
                                                        f"matching {args.device or 'any name'}")])
    return site, usable, stuck, site_cfg


async def _publish(args: argparse.Namespace, console: Console) -> int:
    import os
    import socket

    from collectors.publish import BatchPublisher, readings_topic
    from models.files import write_json

    site, devices, stuck, site_cfg = _devices(args)
    addr = mqtt_address(argparse.Namespace(mqtt=args.publish, mqtt_password_file=args.mqtt_password_file))
    clock = clock_from(args.clock)
    src = args.src or addr.username or f"collect-{socket.gethostname()}-{os.getpid()}"
    prefix = site_cfg.actuation.topic_prefix if site_cfg is not None else "powerplane"
    if addr.username and src != addr.username:
        log.warning("collect: publishing as --src %s with MQTT user %s: the broker's ACL (powerplane acl) lets "
                    "user %s write only %s", src, addr.username, addr.username,
                    readings_topic(prefix, site, addr.username))
    pub = BatchPublisher(devices, site=site, src=src, addr=addr, clock=clock, prefix=prefix, stuck_polls=stuck)
    from powerplane.exposition import serve
    from powerplane.metrics import collector_checks, collector_registry

    live, ready = collector_checks(pub)
    metrics = serve(args, collector_registry(pub), live, ready, "collect")
    console.print(f"powerplane collect · {len(devices)} devices"
                  + (f" (shard {args.shard})" if args.shard else "") + f" · publishing to {addr.url()} as {src}"
                  + (f" · metrics {metrics.url}/metrics" if metrics is not None else ""),
                  highlight=False, markup=False)
    try:
        await pub.start()
        await run_until(args.duration, clock, every_s=1.0)
    finally:
        await pub.stop()
        if args.summary_out:
            write_json(args.summary_out, {**pub.summary(), "metrics": metrics.url if metrics is not None else None,
                                          "shard": args.shard, "device_patterns": args.device})
        if metrics is not None:
            metrics.stop()
    s = pub.summary()
    up = sum(1 for d in s["devices"] if d["up"])
    console.print(f"collect: {s['readings']:,} readings in {s['messages']:,} messages; {up}/{len(devices)} devices up",
                  highlight=False, markup=False)
    return 0 if up else 1


async def _collect(args: argparse.Namespace, console: Console) -> int:
    from collectors.runtime import CollectorSet
    from models.clock import SystemClock
    from models.readings import REGISTRY, ReadingBatch

    site, usable, stuck, _ = _devices(args)
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
            await asyncio.wait_for(stop.wait(), args.duration if args.duration is not None else 5.0)
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
        tab.add_row(m, ",".join(f"{k}={x}" for k, x in tags), f"{v:,.3f}" + (f" (q={q})" if q else ""))
    console.print(tab)
    ht = Table(title="device health")
    for col in ("device", "protocol", "up", "polls", "failures", "latency ms", "readings", "rejected", "last error"):
        ht.add_column(col)
    for h in health:
        ht.add_row(h.device, h.protocol, "yes" if h.up else "no", str(h.polls),
                   str(h.consecutive_failures), f"{h.latency_s * 1e3:.1f}", str(h.readings),
                   str(h.rejected_total + h.messages_bad), h.last_error)
    console.print(ht)
    return 0 if any(h.up for h in health) else 1
