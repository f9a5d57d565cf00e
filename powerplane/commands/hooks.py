"""``powerplane hooks receive|test|replay``: the reference receiver, a signed test event, a replay."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from controllers.hooks.payloads import HookEvent, build_payload
from controllers.hooks.receiver import WebhookReceiver
from controllers.hooks.webhook import (
    Endpoint,
    deliver,
    load_secret,
    read_secret_file,
    redact_url,
    replay_to,
    webhook_backoff,
    write_dead_letter,
)
from models.errors import ConfigError
from models.events import (
    EV_CAP_CHANGED,
    EV_DR_END,
    EV_DR_START,
    EV_HEADROOM_LOW,
    EV_INFEASIBLE,
    EV_LEASE_FALLBACK,
    EV_MOVE,
    EV_NON_COMPLIANT,
    EVENT_KINDS,
    Event,
)


def sample_event(kind: str, ts_ns: int) -> HookEvent:
    """A plausible event of ``kind`` for ``hooks test`` (marked as a test in its message)."""
    samples: dict[str, tuple[str | None, dict[str, float], str, dict[str, Any]]] = {
        EV_MOVE: ("job-7", {"value": 12_500.0, "gpus": 16.0}, "move job-7 from r01 to r03 (frees 12.5 kW)",
                  {"action": "move", "from_racks": ["r01"], "from_nodes": ["r01/node-000", "r01/node-001"],
                   "to_racks": ["r03"], "gpus": 16}),
        EV_CAP_CHANGED: ("job-7", {"value": 550.0, "priority": 2.0, "gpus": 16.0}, "job-7 capped at 550 W/GPU", {}),
        EV_INFEASIBLE: ("row-a1", {"value": 4_000.0}, "row-a1: floors exceed the limit by 4.0 kW", {}),
        EV_NON_COMPLIANT: ("r01/node-000", {"value": 120.0}, "r01/node-000 draws 120 W above its cap", {}),
        EV_LEASE_FALLBACK: ("r01/node-000", {"value": 400.0}, "r01/node-000 fell back to its safe cap", {}),
        EV_HEADROOM_LOW: ("feed-a", {"value": 30_000.0}, "feed-a headroom 30 kW", {}),
        EV_DR_START: ("dr-1", {"value": 3_900_000.0}, "demand response: site target 3.9 MW", {}),
        EV_DR_END: ("dr-1", {}, "demand response over", {}),
    }
    entity, fields, message, detail = samples[kind]
    return HookEvent(Event(ts_ns, kind, "info", "hooks-test", f"[test] {message}", entity, fields), detail)


def _secret(args: argparse.Namespace) -> bytes:
    return read_secret_file(args.secret_file)


def _line(p: dict[str, Any]) -> str:
    value = "" if p.get("value") is None else f" value={p['value']:g}"
    return f"{p.get('ts')} {p.get('site')} {p.get('kind')} {p.get('entity') or '-'}{value}: {p.get('message')}"


def cmd_receive(args: argparse.Namespace, console: Console) -> int:
    """Run the reference receiver; print each verified event on one line."""
    rx = WebhookReceiver(_secret(args), host=args.host, port=args.port)
    rx.start()
    console.print(f"receiving on {rx.url} (Ctrl-C to stop)", highlight=False, markup=False)
    deadline = time.monotonic() + args.timeout if args.timeout else float("inf")
    printed = 0
    try:
        # Print from this thread, not the server's: the console belongs to the caller.
        while (not args.count or printed < args.count) and time.monotonic() < deadline:
            rx.wait_for(printed + 1, timeout_s=min(0.5, max(0.0, deadline - time.monotonic())))
            for p in rx.received[printed:]:
                console.print(_line(p), highlight=False, markup=False)
                printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        rx.stop()
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(rx.rejected.items())) or "none"
    console.print(f"{len(rx.received)} events accepted, {rx.duplicates} duplicates, rejected: {rejected}",
                  highlight=False)
    return 0 if not args.count or len(rx.received) >= args.count else 1


def cmd_test(args: argparse.Namespace, console: Console) -> int:
    """Send one signed sample event and report what the endpoint said."""
    payload = build_payload(args.site, sample_event(args.kind, time.time_ns()))
    res = deliver(args.url, _secret(args), payload, max_tries=args.tries, timeout_s=args.timeout,
                  backoff=webhook_backoff(max_s=5.0))
    where = escape(redact_url(args.url))
    if res.ok:
        console.print(f"delivered {args.kind} {payload['id']} to {where} ({res.tries} tries)", highlight=False)
        return 0
    console.print(f"[red]not delivered[/red] to {where} after {res.tries} tries ({res.reason}): "
                  f"{escape(res.error)}", highlight=False)
    return 1


def _endpoints(args: argparse.Namespace) -> list[Endpoint]:
    """Where a replay sends: ``--url`` with ``--secret-file``, or every webhook of ``--site``."""
    if args.site:
        from models.site import load_site

        hooks = load_site(args.site).hooks.webhooks
        if not hooks:
            raise ConfigError(args.site, [("hooks.webhooks", "the site has no webhook to replay to")])
        return [Endpoint(h.url, load_secret(h, f"hooks.webhooks[{i}]", str(args.site))) for i, h in enumerate(hooks)]
    if not args.url or not args.secret_file:
        raise ConfigError("powerplane hooks replay", [("", "give --site FILE, or --url with --secret-file")])
    return [Endpoint(args.url, _secret(args))]


def cmd_replay(args: argparse.Namespace, console: Console) -> int:
    """Re-send a dead-letter file; events that fail again go to ``--failed-out``.

    A record's ``url`` is redacted (no userinfo, no query values): it is matched with the
    real URL by comparing redacted forms, and sent to the real one.
    """
    res = replay_to(args.dead_letter, _endpoints(args), any_url=args.any_url, max_tries=args.tries,
                    timeout_s=args.timeout, backoff=webhook_backoff(max_s=5.0))
    console.print(f"replayed {args.dead_letter}: {res.delivered} delivered, {len(res.failed)} failed, "
                  f"{res.skipped} for other URLs skipped" + (" (--any-url sends them too)" if res.skipped else ""),
                  highlight=False, markup=False)
    if res.failed:
        out = Path(args.failed_out or f"{args.dead_letter}.failed")
        write_dead_letter(out, res.failed)
        console.print(f"[red]{len(res.failed)} events failed again[/red]: written to {escape(str(out))}",
                      highlight=False)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hooks receive|test|replay`` to the CLI."""
    from powerplane.argtypes import PORT, finite_number

    hooks = sub.add_parser("hooks", help="scheduler hooks: reference receiver, test event, dead-letter replay")
    hsub = hooks.add_subparsers(dest="hooks_command", required=True, metavar="{receive,test,replay}")

    r = hsub.add_parser("receive", help="run a reference webhook receiver and print each verified event")
    r.add_argument("--port", type=PORT, default=8787, help="port to listen on (default 8787; 0: any free port)")
    r.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    r.add_argument("--secret-file", required=True, help="file holding the webhook's HMAC secret")
    r.add_argument("--count", type=finite_number(int, ge=0, le=10**9), default=0,
                   help="exit after this many events (default: run until Ctrl-C)")
    r.add_argument("--timeout", type=finite_number(float, ge=0, le=10**9), default=0.0,
                   help="with --count: give up after this many seconds")
    r.set_defaults(handler=cmd_receive)

    def sender(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--url", required=required, help="webhook URL")
        p.add_argument("--secret-file", required=required, help="file holding the webhook's HMAC secret")
        p.add_argument("--tries", type=finite_number(int, ge=1, le=100), default=3,
                       help="attempts per event (default 3)")
        p.add_argument("--timeout", type=finite_number(float, gt=0, le=3600), default=5.0,
                       help="seconds per attempt (default 5)")

    t = hsub.add_parser("test", help="send one signed sample event to a webhook")
    sender(t)
    t.add_argument("--kind", default=EV_MOVE, choices=EVENT_KINDS, help=f"event kind (default {EV_MOVE})")
    t.add_argument("--site", default="test", help="site name in the payload (default: test)")
    t.set_defaults(handler=cmd_test)

    p = hsub.add_parser("replay", help="re-send the events of a dead-letter file")
    sender(p, required=False)
    p.add_argument("--site", default=None, metavar="FILE",
                   help="take the URLs and secrets from the site's [[hooks.webhooks]] instead of --url/--secret-file "
                        "(no secret on the command line)")
    p.add_argument("--dead-letter", required=True, help="dead-letter file (JSON lines)")
    p.add_argument("--any-url", action="store_true", help="also send records that were meant for another URL")
    p.add_argument("--failed-out", default=None, help="where events that fail again go (default: FILE.failed)")
    p.set_defaults(handler=cmd_replay)
