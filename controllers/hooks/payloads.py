"""Hook payloads: one controller event as the JSON a scheduler receives. Pure functions.

Only the kinds in ``models.events.EVENT_KINDS`` are hook events; everything else the
controller raises (device_down, cap_plan, ...) stays in the store.

Payload (``v`` 1), the same on webhooks and on MQTT event topics::

    {"v": 1,
     "id": "<32 hex>",              # stable for one event: retries and replays carry the same id
     "site": "demo",
     "kind": "move_recommendation", # one of EVENT_KINDS
     "severity": "info|warning|error|critical",
     "ts": "2026-05-01T12:00:00.250000Z",   # RFC 3339, UTC, microseconds
     "ts_ns": 1777636800250000000,
     "entity": "job-7",             # what the kind's contract says (job, node, constraint, DR event), or null
     "value": 12500.0,              # fields["value"] (meaning per kind), or null
     "message": "move job-7 from r01 to r03 (frees 12.5 kW)",
     "fields": {"gpus": 64.0},      # the event's other numeric fields (non-finite numbers become null)
     "detail": {...}}               # structured detail, e.g. for a move (controllers.moves): action,
                                    # job, nodes, from_racks, to_racks, to_nodes, gpus, checkpointable, ...;
                                    # {} when none

A webhook signs ``f"{timestamp}.{body}"`` (timestamp = the unix seconds sent in
``X-Powerplane-Timestamp``) with HMAC-SHA256 under its own secret and sends
``X-Powerplane-Signature: sha256=<hex>``.

Structured detail travels next to the event in ``HookEvent(event, detail)``, since
``models.events.Event`` carries numbers only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from models.events import EVENT_KINDS, Event

VERSION = 1
HOOK_KINDS = frozenset(EVENT_KINDS)
SIGNATURE_PREFIX = "sha256="

H_TIMESTAMP = "X-Powerplane-Timestamp"
H_SIGNATURE = "X-Powerplane-Signature"
H_EVENT = "X-Powerplane-Event"
H_DELIVERY = "X-Powerplane-Delivery"


@dataclass(frozen=True, slots=True)
class HookEvent:
    """A hook event and its optional structured detail (a move's action, racks, nodes)."""

    event: Event
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The event's kind."""
        return self.event.kind

    @property
    def entity(self) -> str | None:
        """The event's entity."""
        return self.event.entity


def is_hook_event(ev: Event) -> bool:
    """Whether schedulers are told about events of this kind."""
    return ev.kind in HOOK_KINDS


EventLike = Event | HookEvent | tuple[Event, Mapping[str, Any] | None]


def hook_events(events: Iterable[EventLike],
                details: Mapping[int, Mapping[str, Any]] | None = None) -> list[HookEvent]:
    """The hook events among ``events`` (events, ``HookEvent``s or ``(event, detail)`` pairs as
    ``controllers.moves.MoveAdvisor`` returns them); ``details`` maps ``id(event)`` to its detail."""
    out: list[HookEvent] = []
    for ev in events:
        if isinstance(ev, tuple):
            if is_hook_event(ev[0]):
                out.append(HookEvent(ev[0], ev[1] or {}))
        elif isinstance(ev, HookEvent):
            if is_hook_event(ev.event):
                out.append(ev)
        elif is_hook_event(ev):
            out.append(HookEvent(ev, details.get(id(ev), {}) if details else {}))
    return out


def event_id(site: str, ev: Event) -> str:
    """A delivery id derived from the event itself: the same on every retry, replay and restart."""
    key = "\x1f".join((site, ev.kind, ev.entity or "", str(ev.ts_ns), ev.message))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def rfc3339(ts_ns: int) -> str:
    """``ts_ns`` as RFC 3339 UTC with microseconds (``ts_ns`` keeps the exact value)."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return _json_safe(value.item())
    return str(value)


def build_payload(site: str, hev: HookEvent | Event) -> dict[str, Any]:
    """The payload dict of one hook event (schema in the module docstring)."""
    h = hev if isinstance(hev, HookEvent) else HookEvent(hev)
    ev = h.event
    value = ev.fields.get("value")
    return {
        "v": VERSION,
        "id": event_id(site, ev),
        "site": site,
        "kind": ev.kind,
        "severity": ev.severity,
        "ts": rfc3339(ev.ts_ns),
        "ts_ns": ev.ts_ns,
        "entity": ev.entity,
        "value": _json_safe(float(value)) if value is not None else None,
        "message": ev.message,
        "fields": {k: _json_safe(float(v)) for k, v in ev.fields.items() if k != "value"},
        "detail": _json_safe(dict(h.detail)),
    }


def encode(payload: Mapping[str, Any]) -> bytes:
    """The payload as compact UTF-8 JSON: the exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + mac


def signed_headers(secret: bytes, payload: Mapping[str, Any], body: bytes, timestamp: int) -> dict[str, str]:
    """The HTTP headers of one signed delivery of ``payload`` (``body`` = ``encode(payload)``)."""
    return {
        "Content-Type": "application/json",
        H_TIMESTAMP: str(timestamp),
        H_SIGNATURE: sign(secret, timestamp, body),
        H_EVENT: str(payload.get("kind", "")),
        H_DELIVERY: str(payload.get("id", "")),
    }


# ---- reading a move recommendation's detail (Slurm and Kubernetes adapters) -----------------
MOVE_ACTIONS = ("move", "preempt", "drain")


def move_action(hev: HookEvent) -> str:
    """The action a move recommendation asks for (detail ``action``; default ``move``)."""
    action = str(hev.detail.get("action", "move"))
    return action if action in MOVE_ACTIONS else "move"


def move_from_nodes(hev: HookEvent, rack_nodes: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The node ids a recommendation frees: detail ``nodes`` (or ``from_nodes``), else the nodes of ``from_racks``."""
    nodes = hev.detail.get("nodes") or hev.detail.get("from_nodes")
    if nodes:
        return [str(n) for n in nodes]
    out: list[str] = []
    if rack_nodes is not None:
        for rack in hev.detail.get("from_racks") or ():
            out += [str(n) for n in rack_nodes.get(str(rack), ())]
    return out
