"""The ``powerplane`` command line.

Every command is a ``(configure, run)`` pair in ``COMMANDS``; ``main`` turns every
``PowerplaneError`` into a clear message and its exit status (2 for configuration errors),
so no traceback reaches an operator unless ``--debug`` asks for one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from models.errors import ConfigError, PowerplaneError
from powerplane.argtypes import MAX_RUN_S, MAX_SPEED, SEED, finite_number

Handler = Callable[[argparse.Namespace, Console], int]


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


# ---- demo -------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Run the whole control plane against the twin."""
    from powerplane.demo import DemoOptions, run_demo
    from powerplane.store.config import store_config_from_args

    opts = DemoOptions(site=Path(args.site), duration_s=args.duration, speed=args.speed, seed=args.seed,
                       mqtt_url=args.mqtt, mqtt_password_file=args.mqtt_password_file,
                       live=False if args.no_live else None, control=not args.no_control,
                       collect_interval_s=args.collect_interval, store=store_config_from_args(args),
                       agent_procs=args.agent_procs, outage=args.outage,
                       summary_json=Path(args.summary_json) if args.summary_json else None)
    return asyncio.run(run_demo(opts, console))


def _outage(text: str) -> tuple[float, float] | None:
    """``AT:DOWN`` simulated seconds, or ``off``."""
    if text == "off":
        return None
    try:
        at, down = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AT:DOWN seconds (e.g. 380:30) or off, got {text[:40]!r}") from None
    if not (0 <= at <= MAX_RUN_S and 0 < down <= MAX_RUN_S):  # also false for NaN
        raise argparse.ArgumentTypeError(f"AT must be in 0..{MAX_RUN_S:g} and DOWN in (0, {MAX_RUN_S:g}], "
                                         f"got {text[:40]!r}")
    return at, down


# ---- parser -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    from models.site import MAX_RACKS
    from powerplane.demo import DEFAULT_SITE
    from powerplane.store.config import add_store_arguments

    p = argparse.ArgumentParser(prog="powerplane", description="Power and cooling control plane for AI datacenters.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run the control plane against the digital twin")
    d.add_argument("--site", default=str(DEFAULT_SITE), help="site file (default: the demo hall)")
    d.add_argument("--duration", type=finite_number(float, gt=0, le=MAX_RUN_S), default=780.0,
                   help="simulated seconds (default 780)")
    d.add_argument("--speed", type=finite_number(float, gt=0, le=MAX_SPEED), default=10.0,
                   help="simulated seconds per second (default 10)")
    d.add_argument("--seed", type=SEED, default=None, help="twin seed (default: the site's)")
    d.add_argument("--mqtt", default=None, metavar="URL",
                   help="use this MQTT broker (mqtt://[user@]host:port; password: --mqtt-password-file or "
                        "$POWERPLANE_MQTT_PASSWORD)")
    d.add_argument("--mqtt-password-file", default=None, metavar="FILE", help="the MQTT user's password")
    d.add_argument("--summary-json", default=None, metavar="FILE", help="write the run's summary as JSON")
    d.add_argument("--no-live", action="store_true", help="print log lines instead of the live view")
    d.add_argument("--no-control", action="store_true",
                   help="leave the GPUs uncapped (to see which limits the controller keeps)")
    d.add_argument("--collect-interval", type=finite_number(float, gt=0, le=3600), default=2.0, metavar="S",
                   help="simulated seconds between polls of each device (default 2)")
    d.add_argument("--agent-procs", type=finite_number(int, ge=1, le=256), default=2, metavar="N",
                   help="node agent processes the twin's nodes are split over (default 2)")
    d.add_argument("--outage", type=_outage, default=(730.0, 20.0), metavar="AT:DOWN",
                   help="kill the controller at AT for DOWN simulated seconds and check that every agent "
                        "falls back within one lease (default 730:20, after the last scenario event; off: no drill; "
                        "skipped when the run is too short to see the fallback and the return)")
    add_store_arguments(d)
    d.set_defaults(handler=cmd_demo)

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

    for register in command_registrars():
        register(sub)
    return p


Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def command_registrars() -> tuple[Registrar, ...]:
    """Commands contributed by other packages: each module's ``register(subparsers)``.

    Explicit on purpose (no plugin discovery by import side effects): add one line here.
    """
    from collectors.cli import register as profiles
    from controllers.advise import register as advise
    from controllers.cli import register as controllers
    from controllers.hooks.cli import register as hooks
    from dashboards.cli import register as dashboards
    from powerplane.commands import acl, agent, collect, controller, twin
    from powerplane.store.cli import register as store

    return (twin.register, profiles, collect.register, store, controllers, controller.register, agent.register,
            acl.register, advise, hooks, dashboards)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``powerplane`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # soft_wrap: never break an operator's message (a path, a key) across lines.
    console = Console(stderr=False, soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    try:
        return int(args.handler(args, console))
    except ConfigError as exc:
        # Paths, keys and values in the message are the operator's text: never rich markup.
        err.print(f"[bold red]configuration error[/bold red]\n{escape(exc.render())}", highlight=False)
        return exc.exit_code
    except PowerplaneError as exc:
        if args.debug:
            raise
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        err.print(f"[bold red]internal error:[/bold red] {type(exc).__name__}: {escape(str(exc))} "
                  "(run with --debug for the traceback)", highlight=False)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
