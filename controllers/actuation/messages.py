"""Cap commands and agent status: the wire contract between the controller and the agents.

Topics (``prefix`` is ``[actuation].topic_prefix``, default ``powerplane``; a node id's
``/`` is sent as ``@`` because mosquitto never matches a ``%u`` ACL pattern for a user name
that contains ``/``, and the agent logs in as its node)::

    <prefix>/<site>/caps/<node>     controller -> agent   QoS 1, retained   signed CapCommand
    <prefix>/<site>/status/<node>   agent -> controller   QoS 1, retained   AgentStatus JSON
    <prefix>/<site>/events/<kind>   controller -> anyone  QoS 1             hook event JSON

A cap command travels in an envelope whose ``body`` is the exact JSON text that was
signed, so that nobody has to re-serialise JSON canonically to check a signature::

    {"alg": "HMAC-SHA256", "kid": "<first 8 hex of sha256(key)>", "body": "<json>", "sig": "<hex>"}

    body = {"v": 1, "site": "demo", "node": "r01/node-000", "seq": 1780000001000000000,
            "plan_id": 42, "issued_ns": ..., "expires_ns": ..., "caps_w": [700.0, ...],
            "reason": "row-a1 holds 96 GPUs"}

``seq`` rises strictly for every command the controller sends (it is at least the
issue time in ns, so it keeps rising across controller restarts); an agent applies a
command only if its seq is newer than the last one it applied and ``expires_ns`` (the
lease) is still ahead. The agent keeps its caps until the lease runs out, then falls
back to its safe cap on its own.

AgentStatus (JSON, not signed: the broker's ACL lets only the node write its topic)::

    {"v": 1, "site", "node", "ts_ns", "mode": "starting|controlled|fallback",
     "seq", "plan_id", "requested_w": [...], "enforced_w": [...], "power_w": [...],
     "apply_ms", "applied_ns", "lease_expires_ns", "safe_cap_w", "backend",
     "rejected": {"bad_signature": 0, ...}, "last_reject": "...", "mode_since_ns"}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from models.errors import ConfigError

VERSION = 1
ALG = "HMAC-SHA256"
KEY_ENV = "POWERPLANE_SITE_KEY"
MIN_KEY_BYTES = 16
BOUNDS_TOL_W = 0.5  # a cap this close outside the board's range is rounding, not a bad command

Mode = Literal["starting", "controlled", "fallback"]
# Why an agent refused a command; counted per reason and reported in its status.
REJECT_REASONS = ("malformed", "bad_signature", "wrong_target", "stale_seq", "expired", "out_of_bounds")


# ---- topics -----------------------------------------------------------------------------
def topic_node(node: str) -> str:
    """A node id as one topic level (and MQTT user name): ``/`` becomes ``@``."""
    return node.replace("/", "@")


def node_of_topic(level: str) -> str:
    """Inverse of ``topic_node``."""
    return level.replace("@", "/")


def caps_topic(prefix: str, site: str, node: str) -> str:
    """Topic the controller publishes ``node``'s cap commands on."""
    return f"{prefix}/{site}/caps/{topic_node(node)}"


def status_topic(prefix: str, site: str, node: str) -> str:
    """Topic ``node``'s agent reports its status on."""
    return f"{prefix}/{site}/status/{topic_node(node)}"


def events_topic(prefix: str, site: str, kind: str) -> str:
    """Topic hook events of ``kind`` are published on."""
    return f"{prefix}/{site}/events/{kind}"


# ---- the site key -----------------------------------------------------------------------
@dataclass(frozen=True)
class SiteKey:
    """The per-site HMAC key and its public id."""

    secret: bytes = field(repr=False)

    @property
    def kid(self) -> str:
        """First 8 hex digits of the key's SHA-256: names the key without revealing it."""
        return hashlib.sha256(self.secret).hexdigest()[:8]

    @classmethod
    def parse(cls, text: str, where: str) -> SiteKey:
        """A key from its text: 32+ hex digits (even count) are decoded, anything else is used as bytes."""
        t = text.strip()
        try:
            raw = bytes.fromhex(t) if len(t) >= 2 * MIN_KEY_BYTES and len(t) % 2 == 0 else t.encode()
        except ValueError:
            raw = t.encode()
        if len(raw) < MIN_KEY_BYTES:
            raise ConfigError(where, [("", f"site key is {len(raw)} bytes; at least {MIN_KEY_BYTES} needed")])
        return cls(raw)

    @classmethod
    def load(cls, path: str | Path | None = None, env: str = KEY_ENV) -> SiteKey:
        """The key from ``path`` if given, else from the environment variable ``env``."""
        if path is not None:
            p = Path(path)
            try:
                return cls.parse(p.read_text(), str(p))
            except OSError as exc:
                raise ConfigError(str(p), [("", f"cannot read the site key: {exc.strerror}")]) from exc
        text = os.environ.get(env)
        if not text:
            raise ConfigError(f"${env}", [("", "no site key: pass --key-file or set the variable")])
        return cls.parse(text, f"${env}")

    @classmethod
    def generate(cls) -> SiteKey:
        """A fresh random 32-byte key."""
        return cls(os.urandom(32))

    def hex(self) -> str:
        """The key as hex text (for a key file or the environment)."""
        return self.secret.hex()

    def sign(self, body: bytes) -> str:
        """HMAC-SHA256 of ``body`` as hex."""
        return hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def verify(self, body: bytes, sig: str) -> bool:
        """Whether ``sig`` is this key's signature of ``body`` (constant time)."""
        return hmac.compare_digest(self.sign(body), sig)


# ---- cap commands -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CapCommand:
    """Caps for every GPU of one node, valid until ``expires_ns``."""

    site: str
    node: str
    seq: int
    plan_id: int
    issued_ns: int
    expires_ns: int
    caps_w: tuple[float, ...]
    reason: str = ""

    def body(self) -> bytes:
        """The JSON text that is signed and sent."""
        d: dict[str, Any] = {"v": VERSION, "site": self.site, "node": self.node, "seq": self.seq,
                             "plan_id": self.plan_id, "issued_ns": self.issued_ns, "expires_ns": self.expires_ns,
                             "caps_w": list(self.caps_w), "reason": self.reason}
        return json.dumps(d, separators=(",", ":")).encode()

    def envelope(self, key: SiteKey) -> bytes:
        """The signed message as published."""
        body = self.body()
        return json.dumps({"alg": ALG, "kid": key.kid, "body": body.decode(), "sig": key.sign(body)},
                          separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command the agent refused, and why (one of ``REJECT_REASONS``)."""

    reason: str
    detail: str
    seq: int | None = None


def verify_command(payload: bytes, key: SiteKey, *, site: str, node: str, now_ns: int, last_seq: int,
                   min_w: Sequence[float], max_w: Sequence[float]) -> CapCommand | Rejected:
    """Open and check one cap command for ``node``: signature, target, freshness, lease, bounds.

    Checks run in that order so that nothing unauthenticated is even looked at: a tampered
    body fails the signature before its seq or caps are believed.
    """
    try:
        env = json.loads(payload)
        if not isinstance(env, dict) or not isinstance(env.get("body"), str) or not isinstance(env.get("sig"), str):
            return Rejected("malformed", "not a signed envelope (body and sig strings)")
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejected("malformed", f"not JSON: {exc}")
    if env.get("alg", ALG) != ALG:
        return Rejected("malformed", f"unsupported alg {env.get('alg')!r}")
    body = env["body"].encode()
    if not key.verify(body, env["sig"]):
        kid = env.get("kid")
        hint = f" (signed with key {kid}, ours is {key.kid})" if kid and kid != key.kid else ""
        return Rejected("bad_signature", f"signature does not match{hint}")
    try:
        d = json.loads(body)
        cmd = CapCommand(site=str(d["site"]), node=str(d["node"]), seq=int(d["seq"]), plan_id=int(d["plan_id"]),
                         issued_ns=int(d["issued_ns"]), expires_ns=int(d["expires_ns"]),
                         caps_w=tuple(float(x) for x in d["caps_w"]), reason=str(d.get("reason", "")))
        if int(d.get("v", 0)) != VERSION:
            return Rejected("malformed", f"version {d.get('v')!r}, this agent speaks {VERSION}", cmd.seq)
    except (ValueError, TypeError, KeyError) as exc:
        return Rejected("malformed", f"bad body: {exc!r}")
    if cmd.site != site or cmd.node != node:
        return Rejected("wrong_target", f"for {cmd.site}/{cmd.node}, this is {site}/{node}", cmd.seq)
    if cmd.seq <= last_seq:
        return Rejected("stale_seq", f"seq {cmd.seq} is not newer than {last_seq}", cmd.seq)
    if cmd.expires_ns <= now_ns:
        return Rejected("expired", f"lease ran out {(now_ns - cmd.expires_ns) / 1e9:.1f} s ago", cmd.seq)
    if len(cmd.caps_w) != len(min_w):
        return Rejected("out_of_bounds", f"{len(cmd.caps_w)} caps for {len(min_w)} GPUs", cmd.seq)
    for i, (c, lo, hi) in enumerate(zip(cmd.caps_w, min_w, max_w, strict=True)):
        if not math.isfinite(c) or c < lo - BOUNDS_TOL_W or c > hi + BOUNDS_TOL_W:
            return Rejected("out_of_bounds", f"GPU {i}: cap {c} W outside {lo:g}..{hi:g} W", cmd.seq)
    return cmd


# ---- agent status -------------------------------------------------------------------------
@dataclass(slots=True)
class AgentStatus:
    """What one node's agent enforces and measures (see the module docstring)."""

    site: str
    node: str
    ts_ns: int
    mode: Mode
    seq: int
    plan_id: int
    requested_w: list[float]
    enforced_w: list[float | None]  # None: the backend could not read it
    power_w: list[float | None]
    apply_ms: float
    applied_ns: int
    lease_expires_ns: int
    safe_cap_w: float
    backend: str
    rejected: dict[str, int]
    last_reject: str = ""
    mode_since_ns: int = 0  # when the node entered its mode (a fallback's moment survives later heartbeats)

    def to_json(self) -> bytes:
        """The status message as published."""
        d = {f: getattr(self, f) for f in _STATUS_FIELDS}  # dataclasses.asdict deep-copies: 4x slower
        d["v"] = VERSION
        return json.dumps(d, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> AgentStatus:
        """Parse a status message; raises ``ValueError`` on anything malformed."""
        try:
            d = json.loads(payload)
            if not isinstance(d, dict) or d.pop("v", None) != VERSION:
                raise ValueError(f"not a v{VERSION} agent status")
            st = cls(**d)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"bad agent status: {exc}") from exc
        if st.mode not in ("starting", "controlled", "fallback"):
            raise ValueError(f"bad mode {st.mode!r}")
        _check_types(st)
        return st


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_types(st: AgentStatus) -> None:
    """A status from the wire is believed only with the right types (ints, numbers, lists, counts)."""
    for name in ("ts_ns", "seq", "plan_id", "applied_ns", "lease_expires_ns", "mode_since_ns"):
        v = getattr(st, name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"agent status: {name} must be an integer, got {v!r}")
    for name in ("apply_ms", "safe_cap_w"):
        if not _is_num(getattr(st, name)):
            raise ValueError(f"agent status: {name} must be a number, got {getattr(st, name)!r}")
    for name, nullable in (("requested_w", False), ("enforced_w", True), ("power_w", True)):
        v = getattr(st, name)
        if not isinstance(v, list) or not all(_is_num(x) or (nullable and x is None) for x in v):
            raise ValueError(f"agent status: {name} must be a list of numbers, got {v!r}")
    if not isinstance(st.rejected, dict) or not all(isinstance(k, str) and isinstance(n, int)
                                                     for k, n in st.rejected.items()):
        raise ValueError(f"agent status: rejected must map reasons to counts, got {st.rejected!r}")
    for name in ("site", "node", "backend", "last_reject"):
        if not isinstance(getattr(st, name), str):
            raise ValueError(f"agent status: {name} must be a string")


_STATUS_FIELDS = tuple(f.name for f in fields(AgentStatus))
