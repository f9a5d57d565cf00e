"""``powerplane twin``: the digital twin of a site, served over Modbus, SNMP and MQTT until stopped.

In the demo it runs in its own process (its physics and its device servers take a core of
their own). ``--truth-out`` keeps the run's ground truth — energy, peaks and every limit
exceeded, checked at every simulation step (``models.twin.truth``) — rewritten every second
and at exit; ``twin/<site>/view`` carries its state for a live view.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from powerplane.argtypes import MAX_RUN_S, MAX_SPEED, PORT, SEED, finite_number
from powerplane.commands.common import clock_from, run_until

TRUTH_EVERY_WALL_S = 1.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``twin`` to the CLI."""
    t = sub.add_parser("twin", help="run the digital twin and serve it over Modbus, SNMP and MQTT")
    t.add_argument("--site", required=True, help="site file")
    t.add_argument("--speed", type=finite_number(float, gt=0, le=MAX_SPEED), default=1.0)
    t.add_argument("--seed", type=SEED, default=None)
    t.add_argument("--host", default="127.0.0.1", help="address to listen on")
    t.add_argument("--snmp-port", type=PORT, default=0,
                   help="UDP port of the SNMP agent (default: free port)")
    t.add_argument("--mqtt", default=None, metavar="URL", help="publish to this broker (default: start one)")
    t.add_argument("--mqtt-password-file", default=None, metavar="FILE", help="the MQTT user's password")
    t.add_argument("--no-mqtt", action="store_true", help="do not publish MQTT")
    t.add_argument("--duration", type=finite_number(float, gt=0, le=MAX_RUN_S), default=None,
                   help="stop after this many simulated s")
    t.add_argument("--endpoints-out", default=None, metavar="FILE", help="write the endpoints as JSON")
    t.add_argument("--truth-out", default=None, metavar="FILE",
                   help="keep the run's ground truth here (JSON; its per-second energy series beside it, "
                        "<name>.series.csv)")
    t.add_argument("--start-capped", action="store_true",
                   help="GPUs start at the agents' safe cap, as on a site whose control plane is starting")
    t.add_argument("--clock", default=None, help=argparse.SUPPRESS)  # the demo's shared scaled clock
    t.set_defaults(handler=cmd_twin)


def cmd_twin(args: argparse.Namespace, console: Console) -> int:
    """Run the digital twin and print where each endpoint listens."""
    return asyncio.run(_twin(args, console))


async def _twin(args: argparse.Namespace, console: Console) -> int:
    from models.clock import NS_PER_S, ScaledClock
    from models.files import write_json
    from models.site import load_site
    from models.twin.truth import append_series, series_path
    from powerplane.broker import start_broker
    from twin.runner import Twin

    site = load_site(args.site)
    if args.clock:
        clock = clock_from(args.clock)
    else:
        start_ns = int(site.twin.start.timestamp() * NS_PER_S) if site.twin.start else None
        clock = ScaledClock(args.speed, start_ns)
    broker = await start_broker(args.mqtt, password_file=args.mqtt_password_file) if not args.no_mqtt else None
    twin = Twin(site, clock, host=args.host, mqtt=broker.addr if broker else None, seed=args.seed,
                snmp_port=args.snmp_port, start_capped=args.start_capped)
    last_truth = [0.0]
    if args.truth_out:
        series_path(args.truth_out).unlink(missing_ok=True)  # this run's series only

    def keep_truth(final: bool = False) -> None:
        if args.truth_out and (final or time.monotonic() - last_truth[0] >= TRUTH_EVERY_WALL_S):
            last_truth[0] = time.monotonic()
            append_series(series_path(args.truth_out), twin.truth.take_rows(), twin.truth.columns)
            write_json(args.truth_out, {**twin.truth.summary(), "series": series_path(args.truth_out).name,
                                        "final": final})

    try:
        await twin.start()
        if args.endpoints_out:
            twin.write_endpoints(args.endpoints_out)
        twin.run_in_background()
        title = f"powerplane twin · {site.site.name} · x{clock.speed:g} · seed {twin.sim.seed}"
        rows = [(e.device, e.protocol, e.model, f"{e.level} {e.entity}", e.url()) for e in twin.endpoints()]
        if console.is_terminal:
            tab = Table(title=title)
            for col in ("device", "protocol", "model", "measures", "endpoint"):
                tab.add_column(col)
            for row in rows:
                tab.add_row(*row)
            console.print(tab)
        else:  # piped: one endpoint per line, whole URLs, easy to grep and parse
            console.print(title, highlight=False, markup=False)
            for row in rows:
                console.print("\t".join(row), highlight=False, markup=False)
        if broker is not None:
            console.print(f"MQTT: {broker.describe()}", highlight=False, markup=False)
        console.print("SNMP v2c: community = device name; v3: user powerplane, SHA/AES, "
                      "keys powerplane-auth/powerplane-priv, context = device name", highlight=False)
        if args.endpoints_out:
            console.print(f"endpoints written to {args.endpoints_out}", highlight=False, markup=False)
        await run_until(args.duration, clock, keep_truth, every_s=TRUTH_EVERY_WALL_S / 2)
    finally:
        await twin.stop()
        keep_truth(final=True)
        if broker is not None:
            await broker.stop()
    return 0
