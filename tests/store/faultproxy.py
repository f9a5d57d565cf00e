"""A fault-injecting HTTP proxy in front of a real server: answers some write requests
itself (429 with Retry-After, 413, 400, 401...) and forwards the rest unchanged.

The server behind it is real; the proxy only adds the failures a loaded or misconfigured
InfluxDB produces and VictoriaMetrics cannot be made to produce on demand.
"""

from __future__ import annotations

import gzip
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (request number from 1, lines of the request) -> (status, headers, body), or None to forward
Rule = Callable[[int, list[bytes]], tuple[int, dict[str, str], bytes] | None]


@dataclass
class Seen:
    """One write request as the proxy saw it."""

    t_s: float
    status: int
    lines: list[bytes] = field(default_factory=list)


class FaultProxy:
    """Forward to ``upstream`` except where ``rule`` answers."""

    def __init__(self, upstream: str, rule: Rule) -> None:
        self.upstream = upstream.rstrip("/")
        self.rule = rule
        self.seen: list[Seen] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = body.splitlines()
                n = len(proxy.seen) + 1
                answer = proxy.rule(n, lines)
                if answer is None:
                    req = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST")
                    try:
                        with urllib.request.urlopen(req, timeout=30) as r:
                            answer = (r.status, {}, r.read())
                    except urllib.error.HTTPError as exc:
                        answer = (exc.code, {}, exc.read())
                status, headers, text = answer
                proxy.seen.append(Seen(time.monotonic(), status, lines))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
