"""``powerplane demo``: the whole plane against the digital twin (``powerplane.demo``)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rich.console import Console

from powerplane.argtypes import MAX_RUN_S, MAX_SPEED, SEED, finite_number

# ---- demo -------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Run the whole control plane against the twin."""
    from powerplane.demo import DemoOptions, run_demo
    from store.config import store_config_from_args

    # Every controller plans every period (a standby stays warm): two of them at x10 are more than a
    # shared 2-core machine keeps up with, beside the twin, the collector and the agents.
    speed = args.speed if args.speed is not None else (10.0 if args.controllers == 1 else 5.0)
    opts = DemoOptions(site=Path(args.site), duration_s=args.duration, speed=speed, seed=args.seed,
                       mqtt_url=args.mqtt, mqtt_password_file=args.mqtt_password_file,
                       live=False if args.no_live else None, control=not args.no_control,
                       collect_interval_s=args.collect_interval, store=store_config_from_args(args),
                       agent_procs=args.agent_procs, outage=args.outage, controllers=args.controllers,
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the CLI."""
    from powerplane.paths import DEMO_SITE
    from store.config import add_store_arguments

    d = sub.add_parser("demo", help="run the control plane against the digital twin")
    d.add_argument("--site", default=str(DEMO_SITE), help="site file (default: the demo hall)")
    d.add_argument("--duration", type=finite_number(float, gt=0, le=MAX_RUN_S), default=780.0,
                   help="simulated seconds (default 780)")
    d.add_argument("--speed", type=finite_number(float, gt=0, le=MAX_SPEED), default=None,
                   help="simulated seconds per second (default 10; 5 with --controllers 2 or 3)")
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
    d.add_argument("--controllers", type=finite_number(int, ge=1, le=3), default=1, metavar="N",
                   help="controller processes (default 1); 2 or 3: they hold authority through a private etcd, one "
                        "commands and the others are warm standbys, and the drill kills the one in authority: the "
                        "summary shows the takeover, and no agent may fall back")
    d.add_argument("--outage", type=_outage, default=(730.0, 20.0), metavar="AT:DOWN",
                   help="kill the controller at AT for DOWN simulated seconds and check that every agent "
                        "falls back within one lease (default 730:20, after the last scenario event; off: no drill; "
                        "skipped when the run is too short to see the fallback and the return)")
    add_store_arguments(d)
    d.set_defaults(handler=cmd_demo)
