"""Authority through etcd (v3 HTTP gateway, ``etcd3gw``): campaign, keep the lease alive, step down.

See ``controllers.authority`` for the keys and the fencing argument. Everything that talks to
etcd runs on one daemon thread; the control loop only calls ``current()``, which reads the
local deadline under a lock and never waits for the network. etcd errors are counted and
logged (the first at ERROR, repeats at DEBUG until a request succeeds) and never raised into
the loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from controllers.authority.lease import AuthorityStatus, LocalLease, Transition
from models.errors import ConfigError

log = logging.getLogger("powerplane.authority")
MAX_EPOCH = 2**22 - 1  # the wire's epoch field (controllers.actuation.messages.Epoch)
MIN_TTL_S = 1


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Client TLS for etcd (``https://`` endpoints): CA bundle, and a client certificate if etcd asks."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def parse_endpoints(text: str, where: str = "--authority") -> list[tuple[str, str, int]]:
    """``etcd://h1:2379,h2:2379`` (or ``http://``/``https://``, comma-separated) → ``[(scheme, host, port)]``."""
    out: list[tuple[str, str, int]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "://" not in part:
            part = "etcd://" + part
        try:
            u = urlparse(part)
            port = u.port or 2379
        except ValueError as exc:
            raise ConfigError(where, [("", f"bad etcd endpoint {part[:80]!r}: {exc}")]) from None
        if u.scheme not in ("etcd", "http", "https") or not u.hostname or u.username or u.password:
            raise ConfigError(where, [("", f"expected etcd://host:port[,host:port...] (https:// for TLS), got "
                                           f"{part[:80]!r}")])
        out.append(("https" if u.scheme == "https" else "http", u.hostname, port))
    if not out:
        raise ConfigError(where, [("", "no etcd endpoint")])
    return out


def _b64(text: str) -> str:
    return b64encode(text.encode()).decode()


class EtcdAuthority:
    """One controller's campaign for its site's authority (see ``controllers.authority``)."""

    def __init__(self, endpoints: Sequence[tuple[str, str, int]], site: str, holder: str, *, ttl_s: int = 3,
                 prefix: str = "powerplane", floor: Callable[[], int] = lambda: 0,
                 on_epoch: Callable[[int], None] | None = None, poll_s: float | None = None,
                 timeout_s: float | None = None, tls: EtcdTls | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if ttl_s < MIN_TTL_S:
            raise ConfigError("--authority-ttl", [("", f"etcd leases are whole seconds, at least {MIN_TTL_S}")])
        self.endpoints = list(endpoints)
        self.site, self.holder, self.ttl_s = site, holder, int(ttl_s)
        self.leader_key = f"/{prefix}/{site}/authority/leader"
        self.epoch_key = f"/{prefix}/{site}/authority/epoch"
        self.floor = floor
        self.on_epoch = on_epoch
        self.poll_s = poll_s if poll_s is not None else min(0.25, self.ttl_s / 8)
        self.timeout_s = timeout_s if timeout_s is not None else min(1.0, max(0.2, self.ttl_s / 4))
        self.tls = tls or EtcdTls()
        self.mono = monotonic
        self.lease = LocalLease()
        self._lock = threading.Lock()
        self._status = AuthorityStatus()
        self._lease_id: int | None = None
        self._renew_at = 0.0
        self._stale_leases: list[int] = []  # ours, no longer trusted: revoked as soon as etcd answers
        self._clients: list[Any] = []
        self._at = 0
        self._errors_in_row = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="authority-etcd", daemon=True)

    # ---- what the loop asks ---------------------------------------------------------------
    def current(self) -> int | None:
        """The epoch held now, or None (a clock read under a lock; never waits for etcd)."""
        now = self.mono()
        with self._lock:
            ep = self.lease.current(now)
            if ep is None and self.lease.epoch:
                self._lost_locked(now, "the lease ran out before etcd renewed it")
            return ep

    def status(self) -> AuthorityStatus:
        """A copy of the counters and transitions."""
        with self._lock:
            s = self._status
            return AuthorityStatus(s.role, s.epoch, s.holder, s.acquisitions, s.losses, s.errors, s.last_error,
                                   list(s.transitions))

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start campaigning (the thread)."""
        import etcd3gw

        for scheme, host, port in self.endpoints:
            self._clients.append(etcd3gw.client(host=host, port=port, protocol=scheme, ca_cert=self.tls.ca_file,
                                                cert_key=self.tls.key_file, cert_cert=self.tls.cert_file,
                                                timeout=self.timeout_s, api_path="/v3/"))
        self._thread.start()

    def stop(self, resign: bool = True) -> None:
        """Stop; with ``resign`` give authority up at once (stop publishing, then revoke the lease)
        so a standby takes over without waiting for the TTL."""
        self._stop.set()
        self._thread.join(5.0)
        with self._lock:
            held = self._lease_id if self.lease.epoch else None
            if self.lease.epoch:
                self._lost_locked(self.mono(), "stopped")
        if resign and held is not None:
            try:
                self._post("/kv/lease/revoke", {"ID": held})
            except Exception as exc:  # etcd gone: the lease ends on its own within the TTL
                log.warning("authority: could not resign (the lease ends within %d s): %s", self.ttl_s, exc)

    # ---- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._stale_leases:
                    self._revoke_stale()
                if self.current() is not None:
                    wait = self._renew_at - self.mono()
                    if wait > 0:
                        self._stop.wait(min(wait, self.poll_s))
                        continue
                    self._renew()
                else:
                    self._campaign()
                self._errors_in_row = 0
            except Exception as exc:
                self._error(exc)
                self._stop.wait(self.poll_s)

    def _renew(self) -> None:
        lease_id = self._lease_id
        assert lease_id is not None
        sent = self.mono()
        r = self._post("/lease/keepalive", {"ID": lease_id})
        ttl = int((r.get("result") or {}).get("TTL", -1))
        if ttl <= 0:
            self._lose("etcd says the lease expired")
            return
        holder = self._leader()
        if holder is None or holder[0] != self.holder or holder[2] != lease_id:
            self._lose(f"the leader key is {'gone' if holder is None else 'held by ' + holder[0]}")
            return
        with self._lock:
            if not self.lease.epoch:
                return  # lost meanwhile (the deadline passed while the request ran): stay lost
            self.lease.renewed(sent, ttl)
        self._renew_at = sent + ttl / 3.0

    def _campaign(self) -> None:
        holder = self._leader()
        if holder is not None:
            with self._lock:
                self._status.holder = holder[0]
            if holder[0] == self.holder:
                # Our own old lease (authority already given up here, or this controller restarted
                # under the same id): end it now rather than waiting out its TTL, then campaign
                # afresh with a new epoch. Controller ids are unique per site (each is also its
                # MQTT account), so the key cannot be another live controller's.
                self._stale_leases.append(holder[2])
                self._revoke_stale()
            else:
                self._stop.wait(self.poll_s)
            return
        sent = self.mono()
        g = self._post("/lease/grant", {"TTL": self.ttl_s, "ID": 0})
        lease_id, ttl = int(g["ID"]), int(g.get("TTL", self.ttl_s))
        kvs = self._range(self.epoch_key)
        counter, mod = (int(kvs[0][0] or b"0"), int(kvs[0][1]["mod_revision"])) if kvs else (0, 0)
        epoch = max(counter, int(self.floor())) + 1
        if epoch > MAX_EPOCH:
            log.critical("authority: epoch %d exceeds the wire's %d: an operator must reset %s and the agents' "
                         "state", epoch, MAX_EPOCH, self.epoch_key)
            self._stale_leases.append(lease_id)
            self._stop.wait(5.0)
            return
        value = json.dumps({"holder": self.holder, "epoch": epoch})
        epoch_cmp = ({"key": _b64(self.epoch_key), "result": "EQUAL", "target": "MOD", "mod_revision": mod} if mod
                     else {"key": _b64(self.epoch_key), "result": "EQUAL", "target": "CREATE", "create_revision": 0})
        txn = {"compare": [{"key": _b64(self.leader_key), "result": "EQUAL", "target": "CREATE",
                            "create_revision": 0}, epoch_cmp],
               "success": [{"request_put": {"key": _b64(self.leader_key), "value": _b64(value), "lease": lease_id}},
                           {"request_put": {"key": _b64(self.epoch_key), "value": _b64(str(epoch))}}],
               "failure": []}
        r = self._post("/kv/txn", txn)
        now = self.mono()
        if not r.get("succeeded"):
            self._stale_leases.append(lease_id)
            return  # another controller was faster: the next round sees its key
        with self._lock:
            self.lease.granted(epoch, sent, ttl)
            if self.lease.current(now) is None:  # the campaign took longer than the lease: do not trust it
                self.lease.lost()
                self._stale_leases.append(lease_id)
                return
            self._lease_id = lease_id
            self._status.role, self._status.epoch, self._status.holder = "authority", epoch, self.holder
            self._status.acquisitions += 1
            self._status.transitions.append(Transition("acquired", epoch, now, time.time_ns()))
        self._renew_at = sent + ttl / 3.0
        log.warning("authority: %s holds site %s as epoch %d (lease %d s)", self.holder, self.site, epoch, ttl)
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def _lose(self, why: str) -> None:
        with self._lock:
            if self.lease.epoch:
                self._lost_locked(self.mono(), why)

    def _lost_locked(self, now: float, why: str) -> None:
        epoch = self.lease.epoch
        self.lease.lost()
        if self._lease_id is not None:
            self._stale_leases.append(self._lease_id)
            self._lease_id = None
        s = self._status
        s.role, s.epoch = "standby", 0
        s.losses += 1
        s.transitions.append(Transition("lost", epoch, now, time.time_ns(), why))
        log.error("authority: %s lost epoch %d: %s; publishing stopped", self.holder, epoch, why)

    def _revoke_stale(self) -> None:
        while self._stale_leases:
            lease_id = self._stale_leases[0]
            try:
                self._post("/kv/lease/revoke", {"ID": lease_id})
            except Exception as exc:
                if "not found" not in str(exc).lower():
                    raise
            self._stale_leases.pop(0)

    # ---- etcd ------------------------------------------------------------------------------
    def _leader(self) -> tuple[str, int, int] | None:
        """(holder, epoch, lease id) of the leader key, or None."""
        kvs = self._range(self.leader_key)
        if not kvs:
            return None
        value, meta = kvs[0]
        try:
            d = json.loads(value[:4096])
            return str(d["holder"])[:128], int(d["epoch"]), int(meta.get("lease", 0))
        except (ValueError, KeyError, TypeError):
            return "?", 0, int(meta.get("lease", 0))

    def _range(self, key: str) -> list[tuple[bytes, dict[str, Any]]]:
        client = self._clients[self._at]
        try:
            return list(client.get(key, metadata=True))
        except Exception:
            self._at = (self._at + 1) % len(self._clients)
            raise

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        client = self._clients[self._at]
        try:
            out: dict[str, Any] = client.post(client.get_url(path), json=body) if path != "/kv/txn" else \
                client.transaction(body)
            return out
        except Exception:
            self._at = (self._at + 1) % len(self._clients)  # the next endpoint next time
            raise

    def _error(self, exc: Exception) -> None:
        self._errors_in_row += 1
        text = f"{type(exc).__name__}: {str(exc)[:300]}"
        with self._lock:
            self._status.errors += 1
            self._status.last_error = text
        log.log(logging.ERROR if self._errors_in_row == 1 else logging.DEBUG, "authority: etcd: %s", text)
