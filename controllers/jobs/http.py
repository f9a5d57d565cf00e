"""The jobs endpoint: the Slurm prolog/epilog (or any scheduler glue) POSTs job documents here.

``POST /v1/jobs`` with ``Authorization: Bearer <token>`` and one document of the spool's format
(``controllers.jobs.slurm``; ``event`` start or end) answers

* 202 — taken in (it reaches the job table at the feed's next poll; whether the table accepts
  it — known nodes, not a duplicate — is counted there, as for the spool);
* 400 — not a valid document (counted as ``malformed``); 401 — no or a wrong token
  (counted, never logged with the token); 413 — over ``MAX_DOC_BYTES``; 503 — the inbox is full.

The token is compared in constant time. The endpoint keeps what it took in in a bounded inbox
that the job feed drains; it does no other work on the request thread.
"""

from __future__ import annotations

import collections
import hmac
import threading
from pathlib import Path

from bus.http import HttpServer, Request, Response
from controllers.jobs.slurm import MAX_DOC_BYTES, decode
from controllers.jobs.table import Refused, Update
from models.errors import ConfigError

PATH = "/v1/jobs"
MAX_TOKEN_BYTES = 4096
MIN_TOKEN_BYTES = 16


def load_token(path: str | Path) -> bytes:
    """The bearer token from a file (not group/world readable, at least 16 bytes)."""
    p = Path(path)
    try:
        st = p.stat()
        if st.st_mode & 0o077:
            raise ConfigError(str(p), [("", f"token file is readable by others (mode {st.st_mode & 0o777:o}); "
                                            "chmod 600 it")])
        raw = p.read_bytes()[: MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise ConfigError(str(p), [("", f"cannot read the token file: {exc.strerror or exc}")]) from None
    token = raw.strip()
    if not MIN_TOKEN_BYTES <= len(token) <= MAX_TOKEN_BYTES:
        raise ConfigError(str(p), [("", f"a token of {MIN_TOKEN_BYTES}..{MAX_TOKEN_BYTES} bytes is needed")])
    return token


class JobsEndpoint:
    """``POST /v1/jobs`` on ``host:port`` (see the module docstring)."""

    def __init__(self, host: str, port: int, token: bytes, *, maxlen: int = 10_000) -> None:
        self.token = token
        self.maxlen = maxlen
        self.accepted = 0
        self.refused: collections.Counter[str] = collections.Counter()
        self._q: collections.deque[Update] = collections.deque()
        self._lock = threading.Lock()
        self.server = HttpServer(host, port, {("POST", PATH): self._post}, max_body=MAX_DOC_BYTES, name="jobs-http")

    def start(self) -> JobsEndpoint:
        """Serve (an OSError reaches the caller)."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.stop()

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        return self.server.url + PATH

    def _post(self, req: Request) -> Response:
        auth = req.headers.get("Authorization") or ""
        given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
        if not hmac.compare_digest(given, self.token):
            self.refused["unauthorized"] += 1
            return Response(401, b"unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
        u = decode(req.body)
        if isinstance(u, Refused):
            with self._lock:
                self._q.append(u)  # counted by the table as the spool's refusals are
            self.refused["malformed"] += 1
            return Response(400, f"{u.detail[:200]}\n".encode())
        with self._lock:
            if len(self._q) >= self.maxlen:
                self.refused["inbox_full"] += 1
                return Response(503, b"inbox full\n", headers={"Retry-After": "5"})
            self._q.append(u)
        self.accepted += 1
        return Response(202, b"accepted\n")

    def drain(self) -> list[Update]:
        """Everything taken in since the last drain, in arrival order."""
        with self._lock:
            out = list(self._q)
            self._q.clear()
        return out
