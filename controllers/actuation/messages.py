"""Cap commands and agent statuses: the wire contract between the controller and the agents.

Messages scale with racks, not nodes. Topics (``prefix`` is ``[actuation].topic_prefix``)::

    <prefix>/<site>/caps/<rack>            controller -> agents  QoS 1, retained   signed rack command
    <prefix>/<site>/status/<rack>          rack agent -> controller  QoS 1         status of a whole rack
    <prefix>/<site>/status/<rack>@<node>   node agent -> controller  QoS 1         status of one node
    <prefix>/<site>/events/<kind>          controller -> anyone  QoS 1             hook event JSON

**Command.** One per rack, carrying the caps of every GPU of the rack in the order of
``controllers.actuation.layout`` (nodes in rack order, GPUs in node order). It travels in an
envelope whose ``body`` is the exact JSON text that was signed (HMAC-SHA256 under the site
key), so nobody re-serialises JSON to check a signature::

    {"alg": "HMAC-SHA256", "kid": "<8 hex>", "body": "<json>", "sig": "<64 hex>"}
    body = {"v": 2, "site": "demo", "rack": "r01", "layout": "<16 hex>", "epoch": 3, "seq": 812,
            "plan_id": 42, "issued_ns": ..., "expires_ns": ...,
            "caps_mw": "<base64 of uint32 little-endian mW, one per GPU of the rack>",
            "bind": "<base64 of int16 per node: index into why, -1 none>", "why": ["row-a1", ...]}

``(epoch, seq)`` orders commands: ``epoch`` is the controller's authority epoch (persisted
and raised at every start, so it survives restarts and clock steps; with several controllers,
raised in etcd at every change of authority: ``controllers.authority``), ``seq`` counts within
it. An agent applies a command only if its ``(epoch, seq)`` is newer than the last it
applied, it is for its site, rack and layout, it was not issued in the future (beyond
``SKEW_S``), its lease is no longer than the site's ``lease_s`` (+ skew) and has not run out,
and every cap is within the board's range.

**Status.** Unsigned JSON; the broker's ACL lets only the rack's (or node's) account write
its topic, and the controller binds a status to its topic: a rack topic may speak for
nodes of that rack, a node topic only for that node::

    {"v": 2, "site", "rack", "nodes": [rack-local node indices], "ts_ns", "mode", "since_ns",
     "epoch", "seq", "plan_id", "lease_expires_ns",
     "enforced_mw": "<base64 uint32 per GPU of the listed nodes; 4294967295 = unknown>",
     "power_mw": "<same>", "apply_ms", "safe_cap_w", "backend",
     "rejected": {"bad_signature": 0, ...}, "last_reject": "...", "stale_streak": 0,
     "power_ts_ns": <when the power was measured>,
     "held_epoch": <an older epoch whose live lease still bounds the caps, 0 none>}

Both directions pass one typed, bounded model (msgspec) at the edge: sizes, string lengths,
integer ranges, finite numbers. Anything else is a counted rejection, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta
from numpy.typing import NDArray

from controllers.actuation.layout import Layouts, RackLayout
from models.errors import ConfigError

VERSION: Literal[2] = 2
ALG = "HMAC-SHA256"
KEY_ENV = "POWERPLANE_SITE_KEY"
MIN_KEY_BYTES = 16
BOUNDS_TOL_W = 0.5  # a cap this close outside the board's range is rounding, not a bad command
SKEW_S = 2.0  # clock difference tolerated between controller and agent (issue time, lease length)
UNKNOWN_MW = 0xFFFFFFFF
MAX_COMMAND_BYTES = 256 * 1024  # a 2,304-GPU rack's command is about 13 KB
MAX_STATUS_BYTES = 256 * 1024
MAX_DETAIL = 200

Mode = Literal["starting", "controlled", "fallback"]
MODES: tuple[str, ...] = ("starting", "controlled", "fallback")
# Why an agent refused a command; counted per reason and reported in its status.
REJECT_REASONS = ("malformed", "bad_signature", "wrong_target", "stale_seq", "expired", "future",
                  "lease_too_long", "out_of_bounds")
# Why the controller refused a status.
STATUS_REJECTS = ("malformed", "wrong_site", "wrong_topic", "unknown_node", "timestamp")

Str64 = Annotated[str, Meta(min_length=1, max_length=64)]
Int63 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Seq = Annotated[int, Meta(ge=0, le=2**40 - 1)]
Epoch = Annotated[int, Meta(ge=0, le=2**22 - 1)]
B64 = Annotated[str, Meta(max_length=MAX_COMMAND_BYTES)]
# Per-GPU arrays of a status, base64 on the wire: msgspec decodes (strictly: the standard
# alphabet, padded) and bounds them in the same pass as the rest of the message.
StatusArray = Annotated[bytes, Meta(max_length=MAX_STATUS_BYTES * 3 // 4)]


# ---- topics -----------------------------------------------------------------------------
def topic_node(node: str) -> str:
    """A node id as one topic level (and MQTT user name): ``/`` becomes ``@``."""
    return node.replace("/", "@")


def node_of_topic(level: str) -> str:
    """Inverse of ``topic_node``."""
    return level.replace("@", "/")


def caps_topic(prefix: str, site: str, rack: str) -> str:
    """Topic the controller publishes ``rack``'s cap commands on."""
    return f"{prefix}/{site}/caps/{rack}"


def status_topic(prefix: str, site: str, sender: str) -> str:
    """Topic a rack agent (``sender`` = rack id) or node agent (``sender`` = node id) reports on."""
    return f"{prefix}/{site}/status/{topic_node(sender)}"


def events_topic(prefix: str, site: str, kind: str) -> str:
    """Topic hook events of ``kind`` are published on."""
    return f"{prefix}/{site}/events/{kind}"


def order(epoch: int, seq: int) -> int:
    """``(epoch, seq)`` as one comparable integer."""
    return (int(epoch) << 40) | int(seq)


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
        """The key from ``path`` (which must be 0600 or stricter) if given, else from ``$env``."""
        if path is not None:
            p = Path(path)
            try:
                mode = p.stat().st_mode
                if mode & 0o077:
                    raise ConfigError(str(p), [("", f"site key file is mode {mode & 0o777:o}: others can read "
                                                    f"it; chmod 600 {p}")])
                return cls.parse(p.read_text(), str(p))
            except OSError as exc:
                raise ConfigError(str(p), [("", f"cannot read the site key: {exc.strerror}")]) from exc
            except UnicodeDecodeError:
                raise ConfigError(str(p), [("", "the site key file is not text")]) from None
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
        """Whether ``sig`` is this key's signature of ``body`` (constant time; ``sig`` is ASCII hex)."""
        return hmac.compare_digest(self.sign(body).encode(), sig.encode("ascii", "replace"))


# ---- wire models (the edge) ----------------------------------------------------------------
class Envelope(msgspec.Struct, forbid_unknown_fields=True):
    """A signed command as published."""

    alg: Annotated[str, Meta(max_length=16)]
    kid: Annotated[str, Meta(max_length=16)]
    body: Annotated[str, Meta(max_length=MAX_COMMAND_BYTES)]
    sig: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class CommandBody(msgspec.Struct, forbid_unknown_fields=True):
    """The signed body of a rack command."""

    v: Literal[2]
    site: Str64
    rack: Str64
    layout: Annotated[str, Meta(pattern="^[0-9a-f]{16}$")]
    epoch: Epoch
    seq: Annotated[int, Meta(ge=1, le=2**40 - 1)]
    plan_id: Int63
    issued_ns: Int63
    expires_ns: Int63
    caps_mw: B64
    bind: B64 = ""
    why: Annotated[list[Annotated[str, Meta(max_length=MAX_DETAIL)]], Meta(max_length=256)] = []


class StatusBody(msgspec.Struct, forbid_unknown_fields=True):
    """An agent's status of the nodes it serves in one rack."""

    v: Literal[2]
    site: Str64
    rack: Str64
    nodes: Annotated[list[Annotated[int, Meta(ge=0, le=65535)]], Meta(min_length=1, max_length=65536)]
    ts_ns: Int63
    mode: Literal["starting", "controlled", "fallback"]
    since_ns: Int63
    epoch: Epoch
    seq: Seq
    plan_id: Int63
    lease_expires_ns: Int63
    enforced_mw: StatusArray
    power_mw: StatusArray
    apply_ms: Annotated[float, Meta(ge=0, le=1e7)] = 0.0
    safe_cap_w: Annotated[float, Meta(ge=0, le=1e6)] = 0.0
    backend: Annotated[str, Meta(max_length=16)] = ""
    rejected: Annotated[dict[Annotated[str, Meta(max_length=32)], Annotated[int, Meta(ge=0, le=2**53)]],
                        Meta(max_length=16)] = {}
    last_reject: Annotated[str, Meta(max_length=4 * MAX_DETAIL)] = ""
    stale_streak: Annotated[int, Meta(ge=0, le=2**53)] = 0
    power_ts_ns: Int63 = 0  # when the power was measured (0: at ts_ns)
    held_epoch: Epoch = 0  # an older epoch whose live lease still bounds the caps (0: none)


class _CommandText(msgspec.Struct):
    """``CommandBody`` as the controller writes it: the same fields in the same order, the arrays as
    bytes that msgspec writes as base64 (the same text, without a Python-level encode per array)."""

    v: int
    site: str
    rack: str
    layout: str
    epoch: int
    seq: int
    plan_id: int
    issued_ns: int
    expires_ns: int
    caps_mw: bytes
    bind: bytes
    why: list[str]


_ENV_DEC = msgspec.json.Decoder(Envelope)
_CMD_DEC = msgspec.json.Decoder(CommandBody)
_STATUS_DEC = msgspec.json.Decoder(StatusBody)
_ENC = msgspec.json.Encoder()


def b64(a: NDArray[np.generic]) -> str:
    """An array's little-endian bytes as base64 text."""
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def unb64(text: str, dtype: str, n: int) -> NDArray[np.generic] | None:
    """``n`` values of ``dtype`` from base64 text; None if it is not exactly that."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    dt = np.dtype(dtype)
    if len(raw) != n * dt.itemsize:
        return None
    return np.frombuffer(raw, dt)


def short(text: str) -> str:
    """``text`` bounded for a log line or a status field (never a whole hostile message)."""
    t = text.encode("ascii", "backslashreplace").decode()
    return t if len(t) <= MAX_DETAIL else t[:MAX_DETAIL] + "..."


# ---- commands -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class CapCommand:
    """Caps for every GPU of one rack, valid until ``expires_ns``."""

    site: str
    rack: str
    layout: str
    epoch: int
    seq: int
    plan_id: int
    issued_ns: int
    expires_ns: int
    caps_w: NDArray[np.float64]  # per GPU of the rack, layout order
    bind: NDArray[np.int16] | None = None  # per node: index into why, -1 none
    why: tuple[str, ...] = ()

    @property
    def order(self) -> int:
        """``(epoch, seq)`` as one integer."""
        return order(self.epoch, self.seq)

    def body(self) -> bytes:
        """The JSON text that is signed and sent (caps as whole milliwatts, rounded down)."""
        mw = np.floor(np.asarray(self.caps_w, np.float64) * 1000.0 + 1e-6).astype("<u4")
        bind = self.bind.astype("<i2").tobytes() if self.bind is not None else b""
        return _ENC.encode(_CommandText(VERSION, self.site, self.rack, self.layout, self.epoch, self.seq,
                                        self.plan_id, self.issued_ns, self.expires_ns, mw.tobytes(), bind,
                                        list(self.why)))

    def envelope(self, key: SiteKey) -> bytes:
        """The signed message as published."""
        body = self.body()
        return _ENC.encode(Envelope(ALG, key.kid, body.decode(), key.sign(body)))

    def node_reason(self, k: int) -> str:
        """Why node ``k``'s caps are what they are (the binding constraint), for logs."""
        if self.bind is None or k >= self.bind.shape[0] or not 0 <= int(self.bind[k]) < len(self.why):
            return "no limit binding"
        return f"{self.why[int(self.bind[k])]} binding"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command the agent refused, and why (one of ``REJECT_REASONS``)."""

    reason: str
    detail: str
    epoch: int | None = None
    seq: int | None = None


def verify_command(payload: bytes, key: SiteKey, *, site: str, layout: RackLayout, now_ns: int,
                   last_order: int, lease_s: float, skew_s: float = SKEW_S) -> CapCommand | Rejected:
    """Open and check one rack command: size, signature, target, order, issue time, lease, bounds.

    Checks run in that order so that nothing unauthenticated is even looked at: a tampered
    body fails the signature before its seq or caps are believed. Never raises.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        return Rejected("malformed", f"{len(payload)} bytes, over the {MAX_COMMAND_BYTES} limit")
    try:
        env = _ENV_DEC.decode(payload)
    except msgspec.MsgspecError as exc:
        return Rejected("malformed", short(f"not a signed envelope: {exc}"))
    if env.alg != ALG:
        return Rejected("malformed", short(f"unsupported alg {env.alg!r}"))
    try:
        body = env.body.encode("utf-8")
    except UnicodeEncodeError:
        return Rejected("malformed", "body is not valid UTF-8")
    if not key.verify(body, env.sig):
        hint = f" (signed with key {short(env.kid)}, ours is {key.kid})" if env.kid and env.kid != key.kid else ""
        return Rejected("bad_signature", f"signature does not match{hint}")
    try:
        d = _CMD_DEC.decode(body)
    except msgspec.MsgspecError as exc:
        return Rejected("malformed", short(f"bad body: {exc}"))
    if d.site != site or d.rack != layout.rack:
        return Rejected("wrong_target", short(f"for {d.site}/{d.rack}, this is {site}/{layout.rack}"), d.epoch, d.seq)
    if d.layout != layout.digest:
        return Rejected("wrong_target", f"layout {d.layout} is not this agent's {layout.digest} (site files differ)",
                        d.epoch, d.seq)
    if order(d.epoch, d.seq) <= last_order:
        return Rejected("stale_seq", f"({d.epoch}, {d.seq}) is not newer than ({last_order >> 40}, "
                                     f"{last_order & ((1 << 40) - 1)})", d.epoch, d.seq)
    skew_ns = int(skew_s * 1e9)
    if d.issued_ns > now_ns + skew_ns:
        return Rejected("future", f"issued {(d.issued_ns - now_ns) / 1e9:.1f} s in the future", d.epoch, d.seq)
    if d.expires_ns - d.issued_ns > int(lease_s * 1e9) + skew_ns:
        return Rejected("lease_too_long", f"lease of {(d.expires_ns - d.issued_ns) / 1e9:.1f} s exceeds the site's "
                                          f"{lease_s:g} s", d.epoch, d.seq)
    if d.expires_ns <= now_ns:
        return Rejected("expired", f"lease ran out {(now_ns - d.expires_ns) / 1e9:.1f} s ago", d.epoch, d.seq)
    mw = unb64(d.caps_mw, "<u4", layout.n_gpus)
    if mw is None:
        return Rejected("out_of_bounds", f"caps_mw is not {layout.n_gpus} uint32 values", d.epoch, d.seq)
    caps = mw.astype(np.float64) / 1000.0
    bad = np.flatnonzero((caps < layout.min_w - BOUNDS_TOL_W) | (caps > layout.max_w + BOUNDS_TOL_W))
    if bad.size:
        i = int(bad[0])
        return Rejected("out_of_bounds", f"GPU {i}: cap {caps[i]:g} W outside {layout.min_w[i]:g}.."
                                         f"{layout.max_w[i]:g} W", d.epoch, d.seq)
    bind = unb64(d.bind, "<i2", layout.n_nodes) if d.bind else None
    return CapCommand(d.site, d.rack, d.layout, d.epoch, d.seq, d.plan_id, d.issued_ns, d.expires_ns, caps,
                      None if bind is None else bind.astype(np.int16), tuple(d.why))


# ---- agent status -------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class AgentStatus:
    """What the agent of some nodes of one rack enforces and measures (see the module docstring)."""

    site: str
    rack: str
    nodes: Sequence[int]  # rack-local node indices
    ts_ns: int
    mode: str
    since_ns: int
    epoch: int
    seq: int
    plan_id: int
    lease_expires_ns: int
    enforced_w: NDArray[np.float64]  # per GPU of the listed nodes, NaN unknown
    power_w: NDArray[np.float64]
    apply_ms: float = 0.0
    safe_cap_w: float = 0.0
    backend: str = ""
    rejected: dict[str, int] = field(default_factory=dict)
    last_reject: str = ""
    stale_streak: int = 0
    power_ts_ns: int = 0
    held_epoch: int = 0  # an older authority's epoch whose live lease still bounds the caps (0: none)

    @property
    def order(self) -> int:
        """The ``(epoch, seq)`` of the last command applied, as one integer."""
        return order(self.epoch, self.seq)

    def to_json(self) -> bytes:
        """The status message as published."""
        return _ENC.encode(StatusBody(
            VERSION, self.site, self.rack, list(self.nodes), self.ts_ns, self.mode,  # type: ignore[arg-type]
            self.since_ns, self.epoch, self.seq, self.plan_id, self.lease_expires_ns,
            _to_mw(self.enforced_w).tobytes(), _to_mw(self.power_w).tobytes(), round(float(self.apply_ms), 3),
            float(self.safe_cap_w), self.backend, dict(self.rejected), short(self.last_reject),
            self.stale_streak, self.power_ts_ns, self.held_epoch))


def _to_mw(w: NDArray[np.float64]) -> NDArray[np.uint32]:
    a = np.asarray(w, np.float64)
    ok = np.isfinite(a) & (a >= 0) & (a < UNKNOWN_MW / 1000.0)
    return np.where(ok, np.round(np.where(ok, a, 0.0) * 1000.0), UNKNOWN_MW).astype("<u4")


def _from_mw(a: NDArray[np.generic]) -> NDArray[np.float64]:
    return np.where(a == UNKNOWN_MW, np.nan, a.astype(np.float64) / 1000.0)


@dataclass(frozen=True, slots=True)
class StatusRejected:
    """A status the controller refused, and why (one of ``STATUS_REJECTS``)."""

    reason: str
    detail: str


def open_status(topic: str, payload: bytes, layouts: Layouts, *, site: str) -> AgentStatus | StatusRejected:
    """Decode one status and bind it to its topic (``.../status/<rack>`` or ``.../status/<rack>@<node>``).

    Never raises. The site and rack are the controller's own, the nodes must exist in the
    rack, a node topic may speak only for its node, and the per-GPU arrays must have
    exactly the listed nodes' GPU count.
    """
    if len(payload) > MAX_STATUS_BYTES:
        return StatusRejected("malformed", f"{len(payload)} bytes, over the {MAX_STATUS_BYTES} limit")
    try:
        d = _STATUS_DEC.decode(payload)
    except msgspec.MsgspecError as exc:
        return StatusRejected("malformed", short(str(exc)))
    if d.site != site:
        return StatusRejected("wrong_site", short(f"status for site {d.site!r}"))
    sender = topic.rsplit("/", 1)[-1]
    lay = layouts.racks.get(d.rack)
    if lay is None:
        return StatusRejected("unknown_node", short(f"no rack {d.rack!r}"))
    if sender == d.rack:
        pass  # a rack's account speaks for any of its nodes
    elif sender.startswith(f"{d.rack}@") and len(d.nodes) == 1 and \
            d.nodes[0] < lay.n_nodes and topic_node(lay.nodes[d.nodes[0]]) == sender:
        pass  # a node's account speaks for that node alone
    else:
        return StatusRejected("wrong_topic", short(f"topic {topic} may not speak for rack {d.rack} nodes "
                                                   f"{d.nodes[:4]}"))
    if d.nodes == lay.every_node:
        n_gpus = lay.n_gpus  # the rack agent's own status: every node, in rack order
    else:
        nodes = np.asarray(d.nodes, np.intp)
        if nodes.max() >= lay.n_nodes or np.bincount(nodes).max() > 1:
            return StatusRejected("unknown_node", f"node indices outside 0..{lay.n_nodes - 1} or repeated")
        n_gpus = int(lay.node_gpus[nodes].sum())
    if len(d.enforced_mw) != 4 * n_gpus or len(d.power_mw) != 4 * n_gpus:
        return StatusRejected("malformed", f"enforced_mw/power_mw are not {n_gpus} uint32 values")
    enf = np.frombuffer(d.enforced_mw, "<u4")
    pw = np.frombuffer(d.power_mw, "<u4")
    return AgentStatus(d.site, d.rack, d.nodes, d.ts_ns, d.mode, d.since_ns, d.epoch, d.seq, d.plan_id,
                       d.lease_expires_ns, _from_mw(enf), _from_mw(pw), d.apply_ms, d.safe_cap_w, d.backend,
                       d.rejected, d.last_reject, d.stale_streak,
                       d.power_ts_ns if 0 < d.power_ts_ns <= d.ts_ns else d.ts_ns, d.held_epoch)
