"""``/metrics``, ``/healthz`` and ``/readyz`` of one process (``--metrics HOST:PORT``).

``/metrics`` is the process's own registry (``powerplane.metrics``) in the Prometheus text
format, or OpenMetrics when the scraper asks for it. ``/healthz`` answers 200 while the
process's loop runs (liveness: restart it otherwise) and ``/readyz`` 200 while it can do its
job (readiness); both answer 503 with the reason otherwise, one line of text.

Defaults: the controller and ``collect --publish`` serve on loopback (127.0.0.1:9740 and
127.0.0.1:9741), the agent not at all (a node runs many; give it ``--metrics`` to serve, e.g.
127.0.0.1:9742). A default address that is taken is logged and the process runs without
metrics; an address given on the command line that cannot be bound is a configuration error.
``--metrics off`` turns it off. Serve on 0.0.0.0 only where a network policy or firewall
keeps the endpoint to Prometheus and the kubelet: it is unauthenticated, and read-only.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from bus.http import HttpServer, Request, Response, parse_addr
from models.errors import ConfigError

log = logging.getLogger("powerplane.metrics")

Check = Callable[[], tuple[bool, str]]
CONTROLLER_DEFAULT = "127.0.0.1:9740"
COLLECTOR_DEFAULT = "127.0.0.1:9741"
AGENT_SUGGESTED = "127.0.0.1:9742"


def add_metrics_argument(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--metrics HOST:PORT|off``."""
    p.add_argument("--metrics", default=None, metavar="HOST:PORT",
                   help="serve /metrics, /healthz and /readyz here; 'off' for none; port 0 picks a free one "
                        + (f"(default {default})" if default else f"(default off; e.g. {AGENT_SUGGESTED})"))
    p.set_defaults(metrics_default=default)


def serve(args: argparse.Namespace, registry: Any, live: Check, ready: Check, name: str) -> HttpServer | None:
    """Start the endpoint that ``--metrics`` (or the default) names; None when off (or the default is taken)."""
    text = args.metrics if args.metrics is not None else args.metrics_default
    if text is None or text == "off":
        return None
    host, port = parse_addr(text)
    server = HttpServer(host, port, routes(registry, live, ready), name=f"{name}-metrics")
    try:
        return server.start()
    except OSError as exc:
        if args.metrics is None:
            log.error("%s: cannot serve metrics on the default %s (%s): running without; pass --metrics", name, text,
                      exc.strerror or exc)
            return None
        raise ConfigError("--metrics", [("", f"cannot serve on {text}: {exc.strerror or exc}")]) from None


def routes(registry: Any, live: Check, ready: Check) -> dict[tuple[str, str], Callable[[Request], Response]]:
    """The three endpoints over ``registry`` and the two checks."""
    from prometheus_client.exposition import choose_encoder

    def metrics(req: Request) -> Response:
        encoder, content_type = choose_encoder(req.headers.get("Accept") or "")
        return Response(200, encoder(registry), content_type)

    def check(fn: Check) -> Callable[[Request], Response]:
        def handle(_req: Request) -> Response:
            ok, why = fn()
            return Response(200 if ok else 503, f"{'ok' if ok else 'not ok'}: {why}\n".encode())
        return handle

    return {("GET", "/metrics"): metrics, ("GET", "/healthz"): check(live), ("GET", "/readyz"): check(ready)}
