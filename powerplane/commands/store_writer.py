"""``powerplane store-writer``: one member of the site's store writers (``store.writer``).

Run M of them (any hosts): each takes its share of the collectors' reading batches from an
MQTT shared subscription and writes them to the store, acknowledging a batch only once it
is durable. The controller then runs with ``--no-store-readings``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

from rich.console import Console

from powerplane.argtypes import MAX_RUN_S, finite_number
from powerplane.commands.common import add_mqtt_arguments, clock_from, mqtt_address, run_until

log = logging.getLogger("powerplane.store_writer")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store-writer`` to the CLI."""
    from store.config import add_store_arguments

    w = sub.add_parser("store-writer", help="write the collectors' reading batches to the store (one of M writers)")
    w.add_argument("--site", required=True, help="site file (its name and topic prefix)")
    add_mqtt_arguments(w)
    w.add_argument("--writer-id", default=None, metavar="NAME",
                   help="this writer's stable identity, its MQTT session (default: the MQTT user, else the host "
                        "name); a restarted writer with the same identity gets what it had not acknowledged")
    w.add_argument("--group", default="powerplane-store", metavar="NAME",
                   help="shared-subscription group of the site's writers (default: %(default)s)")
    w.add_argument("--in-flight", type=finite_number(int, ge=1, le=65_535), default=200, metavar="N",
                   help="unacknowledged batches the broker may hand this writer at once (MQTT 5 receive "
                        "maximum; default 200)")
    w.add_argument("--summary-out", default=None, metavar="FILE", help="keep a JSON summary here (every second)")
    w.add_argument("--duration", type=finite_number(float, gt=0, le=MAX_RUN_S), default=None, metavar="S",
                   help="stop after S seconds")
    w.add_argument("--clock", default=None, help=argparse.SUPPRESS)
    add_store_arguments(w)
    w.set_defaults(handler=cmd_store_writer)


def cmd_store_writer(args: argparse.Namespace, console: Console) -> int:
    """Write reading batches until stopped."""
    return asyncio.run(_store_writer(args, console))


async def _store_writer(args: argparse.Namespace, console: Console) -> int:
    import contextlib

    from bus.mqtt import AckInbox, MqttLink
    from models.files import write_json
    from models.site import load_site
    from models.wire import MAX_BATCH_BYTES
    from store.config import open_sink, store_config_from_args
    from store.writer import ReadingsWriter, shared_readings_topic

    site = load_site(args.site)
    sid, prefix = site.site.name, site.actuation.topic_prefix
    addr = mqtt_address(args)
    ident = args.writer_id or addr.username or socket.gethostname()
    clock = clock_from(args.clock)
    sink = open_sink(store_config_from_args(args, sid), clock=clock)
    link = MqttLink(addr, f"powerplane-store-{ident}", clean_session=False, receive_maximum=args.in_flight)
    topic = shared_readings_topic(args.group, prefix, sid)
    inbox = link.subscribe_acked(topic, AckInbox(max_bytes=MAX_BATCH_BYTES))
    writer = ReadingsWriter(sink, link, inbox, site=sid, clock=clock, max_messages=args.in_flight)
    console.print(f"powerplane store-writer · {ident} · {topic} via {addr.url()} · store {sink.name}",
                  highlight=False, markup=False)

    def tick() -> None:
        if args.summary_out:
            try:
                write_json(args.summary_out, {"writer": ident, **writer.summary()})
            except OSError as exc:
                log.error("cannot write the summary %s: %s", args.summary_out, exc)

    task = None
    try:
        link.start()
        task = asyncio.get_running_loop().create_task(writer.run(), name="store-writer")
        await run_until(args.duration, clock, tick, every_s=1.0)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # What is taken but not acknowledged stays with the broker: it resends it to this identity.
        link.stop()
        await asyncio.to_thread(sink.close)
        tick()
    s = writer.summary()
    console.print(f"store-writer: {s['readings']:,} readings from {s['acked']:,} batches written and acknowledged",
                  highlight=False, markup=False)
    return 0
