"""``powerplane controller``: the site's control loop in its own process.

It takes readings in (from collector processes over MQTT with ``--readings``, or from
devices it collects itself), plans caps every period, publishes signed per-rack commands,
verifies the agents, and hands everything to the store and the scheduler hooks off the
loop. With ``--authority etcd://...`` two or more controllers run and the one holding the
site's authority in etcd commands the agents; the others are warm standbys
(``controllers.authority``). numba compiles (or loads its cache) before the first period. With ``$NOTIFY_SOCKET``
(systemd ``Type=notify``) it reports READY and pets the watchdog after every period.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from models.errors import ConfigError
from models.files import private_dir
from powerplane.argtypes import MAX_RUN_S, finite_number
from powerplane.commands.common import (
    add_mqtt_arguments,
    clock_from,
    logging_off_the_loop,
    mqtt_address,
    next_epoch,
    read_epoch,
    run_until,
    write_epoch,
)
from powerplane.exposition import CONTROLLER_DEFAULT, add_metrics_argument

log = logging.getLogger("powerplane.controller")
SUMMARY_EVERY_WALL_S = 1.0
PROTOCOLS = ("modbus", "snmp", "mqtt")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``controller`` to the CLI."""
    from store.config import add_store_arguments

    c = sub.add_parser("controller", help="run the site's control loop: readings in, plan, caps out, verify")
    c.add_argument("--site", required=True, help="site file")
    add_mqtt_arguments(c)
    src = c.add_mutually_exclusive_group()
    src.add_argument("--collect", default=None, metavar="FILE", help="devices to collect in this process")
    src.add_argument("--endpoints", default=None, metavar="FILE",
                     help="a twin's endpoints.json (`powerplane twin --endpoints-out`)")
    c.add_argument("--protocols", default=",".join(PROTOCOLS), metavar="P,Q",
                   help="collect only devices of these protocols here (default all; the demo collects "
                        "MQTT here and polls Modbus/SNMP in `powerplane collect --publish` processes)")
    c.add_argument("--readings", action="store_true",
                   help="take in reading batches that `powerplane collect --publish` processes send")
    c.add_argument("--key-file", default=None, help="site HMAC key, mode 0600 (default: $POWERPLANE_SITE_KEY)")
    c.add_argument("--state-dir", default="powerplane-state", type=Path,
                   help="the authority epoch, kept across restarts (default: %(default)s)")
    c.add_argument("--no-control", action="store_true", help="collect and store only: no plans, no caps")
    ha = c.add_argument_group("several controllers (one holds authority, the others are warm standbys)")
    ha.add_argument("--authority", default=None, metavar="URL",
                    help="etcd endpoints, etcd://host:2379[,host:2379...] (https:// for TLS): this controller "
                         "commands the agents only while it holds the site's authority lease there, under the "
                         "epoch etcd raised for it")
    ha.add_argument("--authority-ttl", type=finite_number(int, ge=1, le=60), default=3, metavar="S",
                    help="the authority lease, whole seconds of wall time (default 3): a standby takes over this "
                         "long after the holder died; must leave the agents' lease room to spare")
    ha.add_argument("--controller-id", default=None, metavar="NAME",
                    help="this controller's name in etcd and events (default: the MQTT user, else host-pid)")
    ha.add_argument("--etcd-ca", default=None, metavar="FILE", help="CA bundle for https:// etcd endpoints")
    ha.add_argument("--etcd-cert", default=None, metavar="FILE", help="client certificate for etcd")
    ha.add_argument("--etcd-key", default=None, metavar="FILE", help="client certificate key for etcd")
    c.add_argument("--no-store-readings", action="store_true",
                   help="leave the collectors' reading batches to `powerplane store-writer`; keep writing plans, "
                        "events, derived totals and the agents' server power")
    c.add_argument("--collector-timeout", type=finite_number(float, gt=0, le=3600), default=25.0, metavar="S",
                   help="a collector process silent this long (site s) is down, and so are its devices "
                        "(default 25: collectors report their health every 10 s)")
    c.add_argument("--webhook", action="append", default=[], metavar="URL",
                   help="also send hook events to this URL (with --webhook-secret-file)")
    c.add_argument("--webhook-secret-file", default=None, metavar="FILE", help="HMAC secret of --webhook URLs")
    c.add_argument("--summary-out", default=None, metavar="FILE",
                   help="keep a JSON summary of the run here (rewritten every second and at exit)")
    c.add_argument("--duration", type=finite_number(float, gt=0, le=MAX_RUN_S), default=None,
                   metavar="S", help="stop after S seconds")
    c.add_argument("--clock", default=None, help=argparse.SUPPRESS)  # the demo's shared scaled clock
    add_metrics_argument(c, CONTROLLER_DEFAULT)
    jobs = c.add_argument_group("live jobs from the schedulers ([scheduler] rules in the site file)")
    jobs.add_argument("--jobs-spool", default=None, metavar="DIR",
                      help="read the Slurm prolog/epilog spool here (deploy/slurm; e.g. /var/spool/powerplane/jobs)")
    jobs.add_argument("--jobs-listen", default=None, metavar="HOST:PORT",
                      help="take job documents on POST /v1/jobs here (the prolog's $POWERPLANE_JOBS_URL); "
                           "needs --jobs-token-file")
    jobs.add_argument("--jobs-token-file", default=None, metavar="FILE",
                      help="the bearer token callers of --jobs-listen must send (mode 0600)")
    jobs.add_argument("--k8s-jobs", default=None, metavar="in-cluster|kubeconfig|URL",
                      help="watch pods labelled powerplane.io/job (needs the k8s extra)")
    jobs.add_argument("--k8s-namespace", default=None, metavar="NS", help="with --k8s-jobs: only this namespace")
    add_store_arguments(c)
    c.set_defaults(handler=cmd_controller)


def cmd_controller(args: argparse.Namespace, console: Console) -> int:
    """Run the site's control plane until stopped."""
    return asyncio.run(_controller(args, console))


def _site_with_webhooks(site: Any, args: argparse.Namespace, state_dir: Path) -> Any:
    from models.site import Webhook

    hooks = site.hooks
    update: dict[str, Any] = {}
    if args.webhook:
        if not args.webhook_secret_file:
            raise ConfigError("--webhook", [("", "needs --webhook-secret-file")])
        update["webhooks"] = [*hooks.webhooks, *(Webhook(url=u, secret_file=args.webhook_secret_file)
                                                 for u in args.webhook)]
    if hooks.dead_letter == type(hooks)().dead_letter:
        update["dead_letter"] = str(state_dir / "hooks-dead-letter.jsonl")
    return site.model_copy(update={"hooks": hooks.model_copy(update=update)}) if update else site


def warm_up(site: Any, topo: Any) -> float:
    """Compile (or load from numba's cache) every kernel the period uses, with the site's own
    shapes and dtypes, by planning once on a throwaway state; return the seconds it took."""
    from controllers.loop import ControlLoop
    from models.state import SiteState

    t0 = time.perf_counter()
    ControlLoop(site, topo, SiteState(topo)).step(time.time_ns())
    return time.perf_counter() - t0


async def _controller(args: argparse.Namespace, console: Console) -> int:
    from bus.mqtt import Inbox, MqttLink
    from collectors.config import devices_from_twin, load_collect_config, load_endpoints
    from collectors.publish import readings_topic
    from controllers.actuation.actuator import Actuator
    from controllers.actuation.messages import SiteKey
    from controllers.hooks.build import build_hooks
    from controllers.moves import MoveAdvisor
    from models.files import jsonable
    from models.site import load_site
    from models.topology import L_NODE, L_RACK, build_topology
    from models.wire import MAX_BATCH_BYTES
    from powerplane.exposition import serve
    from powerplane.metrics import controller_checks, controller_registry
    from powerplane.runtime import ControlPlane
    from powerplane.sdnotify import Notifier
    from store.config import open_sink, store_config_from_args

    site = load_site(args.site)
    topo = build_topology(site)
    addr = mqtt_address(args)
    control = not args.no_control
    key = SiteKey.load(args.key_file) if control else None
    clock = clock_from(args.clock)
    protocols = {p.strip() for p in args.protocols.split(",") if p.strip()}
    if protocols - set(PROTOCOLS):
        raise ConfigError("--protocols", [("", f"unknown {sorted(protocols - set(PROTOCOLS))}; known {PROTOCOLS}")])
    devices = []
    if args.collect:
        devices = load_collect_config(args.collect)
    elif args.endpoints:
        _site_id, eps = load_endpoints(args.endpoints)
        devices = devices_from_twin(eps, site.site.name, topo=topo, period_s=site.controller.period_s)
    devices = [d for d in devices if d.protocol in protocols]
    state_dir = private_dir(args.state_dir)
    site = _site_with_webhooks(site, args, state_dir)
    holder = args.controller_id or addr.username or f"{socket.gethostname()}-{os.getpid()}"
    authority = _authority(args, site, clock, holder, state_dir) if control and args.authority else None
    if authority is not None:
        devices = [_own_session(d, holder) for d in devices]
    epoch = (0 if authority is not None else next_epoch(state_dir)) if control else 0
    logging_off_the_loop()
    compile_s = warm_up(site, topo) if control else 0.0

    store_cfg = store_config_from_args(args, site.site.name)
    planes: list[Any] = []  # the sink's own alerts (spool filling, writes refused) become the plane's events
    sink = open_sink(store_cfg, clock=clock, on_event=lambda ev: planes[0].event(ev) if planes else None)
    prefix = site.actuation.topic_prefix
    # One connection for everything (with authentication the client id is the user name, so
    # every controller of a site has its own account). Storing the collectors' readings itself,
    # its session is persistent: while it restarts the broker queues their batches (QoS 1,
    # up to mosquitto's max_queued_messages) and none is lost.
    stores_readings = bool(args.readings) and not args.no_store_readings
    link = MqttLink(addr, f"powerplane-controller-{site.site.name}" + (f"-{holder}" if authority else ""),
                    clean_session=not stores_readings)
    gate = None
    if authority is not None:
        auth = authority

        def gate(ep: int) -> bool:
            return bool(auth.current() == ep)
    actuator = Actuator(site, topo, key, addr, epoch=epoch, link=link, gate=gate) if key is not None else None
    hooks = build_hooks(site, addr, topo, link=link) if control else None
    readings = None
    if args.readings:
        readings = link.subscribe(readings_topic(prefix, site.site.name, "+"), qos=1,
                                  inbox=Inbox(maxlen=100_000, max_bytes=MAX_BATCH_BYTES))
    state_topic = f"{prefix}/{site.site.name}/controller/state"

    def publish_state(doc: dict[str, Any]) -> None:
        link.publish(state_topic, json.dumps(jsonable(doc)).encode(), qos=0, retain=True)

    feed, job_servers = job_feed(args, site, topo, clock) if control else (None, [])
    plane = ControlPlane(site, topo, clock, sink, devices=devices, actuator=actuator, hooks=hooks,
                         advisors=[MoveAdvisor(topo, site.site.name)] if control else [], readings=readings,
                         control=control, publish_state=publish_state, jobs=feed, authority=authority,
                         holder=holder, store_readings=not args.no_store_readings,
                         source_timeout_s=args.collector_timeout)
    planes.append(plane)
    if authority is not None:
        # Never campaign for an epoch the agents would refuse: above what they report applying.
        authority.floor = lambda: max(read_epoch(state_dir), plane.max_epoch_seen)
    notifier = Notifier()
    period_wall_s = site.controller.period_s / clock.speed
    live, ready = controller_checks(plane, epoch=epoch, period_wall_s=period_wall_s, control=control)
    metrics = serve(args, controller_registry(plane, epoch=epoch, link=link, period_wall_s=period_wall_s), live,
                    ready, "controller")
    console.print(f"powerplane controller · site {site.site.name} · {topo.count(L_RACK):,} racks, "
                  f"{topo.count(L_NODE):,} nodes, {topo.n_gpus:,} GPUs · {len(devices)} devices here"
                  f"{' + reading batches' if readings is not None else ''} · MQTT {addr.url()} · "
                  + ((f"authority {args.authority} as {holder} (lease {args.authority_ttl} s)" if authority
                      else f"epoch {epoch}")
                     + f" · key {key.kid} · lease {site.actuation.lease_s:g} s · kernels ready in "
                     f"{compile_s:.1f} s" if key is not None else "control off"), highlight=False, markup=False)
    if metrics is not None or job_servers:
        console.print(" · ".join([*([f"metrics {metrics.url}/metrics"] if metrics is not None else []),
                                  *(f"jobs {srv.url}" for srv in job_servers)]), highlight=False, markup=False)
    summary = _Summary(args.summary_out, plane, epoch, compile_s, link)
    summary.metrics_url = metrics.url if metrics is not None else None
    watchdog = _Watchdog(plane, period_wall_s, notifier)

    def tick() -> None:
        summary.write()

    try:
        link.start()
        if hooks is not None:
            hooks.start()
        await plane.start()
        if authority is not None:
            authority.start()
        notifier.ready(f"epoch {epoch}" if authority is None else f"authority via {args.authority}")
        watchdog.start()
        why = await run_until(args.duration, clock, tick, every_s=SUMMARY_EVERY_WALL_S)
        log.info("controller stopping (%s)", why)
    finally:
        if authority is not None:
            # Stop publishing, then give the lease back: a standby takes over at once.
            await asyncio.to_thread(authority.stop, True)
        watchdog.stop()
        for srv in job_servers:
            srv.stop()
        await plane.stop()
        if hooks is not None:
            await asyncio.to_thread(hooks.close, 5.0)
        link.stop()
        sink.close()
        summary.write(final=True)
        if metrics is not None:
            metrics.stop()
    st = plane.stats
    console.print(f"controller: {st.plans:,} plans in {st.periods:,} periods ({st.missed_periods} missed), "
                  f"{st.control_errors} failed; {st.plans_with_violations} plans granted over a limit",
                  highlight=False, markup=False)
    return 1 if st.plans_with_violations else 0


def job_feed(args: argparse.Namespace, site: Any, topo: Any, clock: Any) -> tuple[Any, list[Any]]:
    """The job feed of ``--jobs-spool``/``--jobs-listen``/``--k8s-jobs`` (None without any), and the
    servers it started (to stop at exit)."""
    from controllers.jobs.feed import JobFeed

    sources: list[Any] = []
    health: dict[str, Any] = {}
    servers: list[Any] = []
    if args.jobs_spool:
        from controllers.jobs.slurm import SpoolReader

        reader = SpoolReader(args.jobs_spool)
        sources.append(reader.scan)
        health["slurm-spool"] = reader.path.is_dir
    if args.jobs_listen:
        from bus.http import parse_addr
        from controllers.jobs.http import JobsEndpoint, load_token

        if not args.jobs_token_file:
            raise ConfigError("--jobs-listen", [("", "needs --jobs-token-file (the callers' bearer token)")])
        host, port = parse_addr(args.jobs_listen, "--jobs-listen")
        endpoint = JobsEndpoint(host, port, load_token(args.jobs_token_file))
        try:
            endpoint.start()
        except OSError as exc:
            raise ConfigError("--jobs-listen", [("", f"cannot serve on {args.jobs_listen}: {exc.strerror or exc}")]
                              ) from None
        sources.append(endpoint.drain)
        servers.append(endpoint)
        health["slurm-http"] = lambda: True
    if args.k8s_jobs:
        try:
            from controllers.jobs.kubernetes import PodWatch, api_client

            watch = PodWatch(api_client(args.k8s_jobs), namespace=args.k8s_namespace)
        except ImportError:
            raise ConfigError("--k8s-jobs", [("", "needs the kubernetes client: pip install 'powerplane[k8s]'")]
                              ) from None
        except Exception as exc:  # the client's own configuration errors (no kubeconfig, not in a pod)
            raise ConfigError("--k8s-jobs", [("", f"{type(exc).__name__}: {exc}")]) from None
        watch.start()
        sources.append(watch.drain)
        servers.append(_Stoppable(watch))
        health["kubernetes"] = watch.synced.is_set
    if not sources:
        return None, servers
    return JobFeed(site, topo, clock, sources, health=health), servers


class _Stoppable:
    """A pod watch among the servers to stop at exit."""

    def __init__(self, watch: Any) -> None:
        self.watch = watch
        self.url = f"kubernetes pod watch ({watch.namespace or 'all namespaces'})"

    def stop(self) -> None:
        self.watch.stop()


def _own_session(device: Any, holder: str) -> Any:
    """An MQTT device this controller collects, under a session of its own: every controller of a site
    takes in the same grid and BMS signals (a standby stays warm), and two clients with one client
    id would throw each other off the broker. An explicit client id or user name is kept."""
    from dataclasses import replace
    from types import MappingProxyType

    if device.protocol != "mqtt" or device.option("client_id") or device.option("username"):
        return device
    return replace(device, options=MappingProxyType({**device.options,
                                                     "client_id": f"powerplane-{device.name}-{holder}"[:128]}))


def _authority(args: argparse.Namespace, site: Any, clock: Any, holder: str, state_dir: Path) -> Any:
    """The etcd campaign of ``--authority``, after checking that a takeover fits inside the agents' lease."""
    from controllers.authority.etcd import EtcdAuthority, EtcdTls, parse_endpoints

    endpoints = parse_endpoints(args.authority)
    act, period = site.actuation, site.controller.period_s
    # A takeover takes at most the authority lease (wall s: site s at the clock's speed), a poll and
    # two periods; the agents' lease has at least lease - renew left when the holder dies.
    poll_s = min(0.25, args.authority_ttl / 8)
    takeover_s = (args.authority_ttl + poll_s) * clock.speed + 2 * period
    room_s = act.lease_s - act.renew_every_s
    if takeover_s >= room_s:
        raise ConfigError("--authority-ttl", [("", f"a takeover can take {takeover_s:.1f} s of site time (lease "
                                                   f"{args.authority_ttl} s x speed {clock.speed:g} + poll + 2 "
                                                   f"periods) but the agents' lease leaves only {room_s:g} s "
                                                   f"(lease_s {act.lease_s:g} - renew {act.renew_every_s:g}): "
                                                   "they would fall back first; shorten --authority-ttl or "
                                                   "lengthen [actuation].lease_s")])
    tls = EtcdTls(args.etcd_ca, args.etcd_cert, args.etcd_key)

    def persist(epoch: int) -> None:
        try:
            write_epoch(state_dir, epoch)
        except OSError as exc:
            log.error("cannot keep epoch %d in %s: %s", epoch, state_dir, exc)

    return EtcdAuthority(endpoints, site.site.name, holder, ttl_s=args.authority_ttl,
                         prefix=site.actuation.topic_prefix, on_epoch=persist, poll_s=poll_s, tls=tls)


class _Watchdog:
    """Pets systemd's watchdog after every period, and says so when the loop stops completing them."""

    def __init__(self, plane: Any, period_wall_s: float, notifier: Any) -> None:
        self.plane = plane
        self.period_wall_s = period_wall_s
        self.notifier = notifier
        self.stalls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        stalled = False
        while not self._stop.wait(self.period_wall_s):
            last = self.plane.stats.last_period_wall
            age = time.monotonic() - last if last else 0.0
            if age <= 3 * self.period_wall_s and self.plane.running:
                self.notifier.watchdog()
                stalled = False
            elif not stalled:
                stalled = True
                self.stalls += 1
                log.critical("control loop stalled: no period completed for %.1f s (3 periods are %.1f s)", age,
                             3 * self.period_wall_s)


class _Summary:
    """The controller's run as data, rewritten atomically so that a SIGKILL loses at most a second."""

    def __init__(self, path: str | None, plane: Any, epoch: int, compile_s: float, link: Any = None) -> None:
        self.path = path
        self.plane = plane
        self.link = link
        self.epoch = epoch
        self.compile_s = compile_s
        self.started_ns = plane.clock.now_ns()
        self.metrics_url: str | None = None

    def doc(self) -> dict[str, Any]:
        p = self.plane
        st = p.stats
        store = p.store_stats()
        out: dict[str, Any] = {
            "epoch": self.epoch, "started_ns": self.started_ns, "ts_ns": p.clock.now_ns(), "compile_s": self.compile_s,
            "periods": st.periods, "plans": st.plans, "missed_periods": st.missed_periods,
            "control_errors": st.control_errors, "last_error": st.last_error,
            "late_ms": st.late_ms.to_json(), "period_ms": st.period_ms.to_json(),
            "stage_worst_ms": st.stage_worst_ms, "plans_with_violations": st.plans_with_violations,
            "violations": st.violations, "infeasible_plans": st.infeasible_plans,
            "periods_at_risk": st.periods_at_risk, "worst_solve_ms": st.worst_solve_ms,
            "readings_in": st.readings, "batches_rejected": dict(st.batches_rejected),
            "readings_rejected": dict(st.readings_rejected), "events": dict(st.events),
            "dr_stranded_max_w": st.dr_stranded_max_w,
            "devices": [{"device": h.device, "protocol": h.protocol, "up": h.up, "polls": h.polls,
                         "readings": h.readings, "last_error": h.last_error} for h in p.collectors.health()],
            "store": {"written_points": store.written_points, "written_events": store.written_events,
                      "overwritten_points": store.overwritten_points, "spooled_points": store.spooled_points,
                      "rejected_points": store.rejected_points, "dropped_points": store.dropped_points,
                      "last_error": store.last_error},
        }
        out["metrics"] = self.metrics_url
        last = p.last_plan
        out["jobs"] = p.job_rows(last.summary() if last is not None else None)
        out["jobs_version"] = p.jobs_version
        out["plan_id"] = last.plan_id if last is not None else 0
        if p.jobs is not None:
            fs = p.jobs.stats()
            out["job_feed"] = {"polls": fs.polls, "rebuilds": fs.rebuilds, "last_build_ms": fs.last_build_ms,
                               "worst_build_ms": fs.worst_build_ms, "live": dict(fs.live),
                               "started": dict(fs.started), "ended": dict(fs.ended),
                               "rejected": {f"{src}/{why}": n for (src, why), n in fs.rejected.items()},
                               "nodes_taken": fs.nodes_taken, "sources": p.jobs.health()}
        if p.authority is not None:
            a = p.authority.status()
            out["epoch"] = st.epoch
            out["authority"] = {
                "holder": p.holder, "role": a.role, "epoch": a.epoch, "seen_holder": a.holder,
                "acquisitions": a.acquisitions, "losses": a.losses, "errors": a.errors, "last_error": a.last_error,
                "transitions": [{"kind": t.kind, "epoch": t.epoch, "wall_ns": t.wall_ns, "reason": t.reason}
                                for t in a.transitions[-50:]],
                "takeovers": st.takeovers[-50:], "standby_plans": st.standby_plans}
        out["collectors"] = p.sources.summary()
        out["devices_down"] = p.sources.down_devices()
        plan = p.last_plan
        if plan is not None:
            # What the last plan relied on for cooling, and which of it is stale (planned at worst case).
            out["plan"] = {"plan_id": plan.plan_id, "ts_ns": plan.ts_ns, "stale_loops": list(plan.stale_loops),
                           "stale_gpus": plan.stale_gpus,
                           "loop_capacity_w": {lid: float(w) for lid, w in zip(p.topo.loop_ids,
                                                                               plan.loop_capacity_w.tolist(),
                                                                               strict=True)}}
        if self.link is not None:
            # A session taken over by another client (same client id) shows as a disconnect here.
            out["mqtt"] = {"connected": self.link.connected.is_set(), "connects": self.link.connects,
                           "disconnects": self.link.disconnects}
        a = p.actuator
        if a is not None:
            v = a.verifier.stats
            out["actuation"] = {**a.health(), "settle": v.settle.to_json(), "modes": v.modes,
                                "statuses_rejected": dict(a.rejected)}
        if p.hooks is not None:
            hs = p.hooks.stats()
            out["hooks"] = {"events": hs.hook_events, "coalesced": hs.coalesced,
                            "sinks": {k: vars(s) for k, s in hs.sinks.items()}}
        return out

    def write(self, final: bool = False) -> None:
        if not self.path:
            return
        from models.files import write_json

        try:
            d = self.doc()
            d["final"] = final
            write_json(self.path, d)
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("cannot write the summary %s: %s", self.path, exc)
