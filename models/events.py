"""Events: things that happened, with a reason in words — a cap decision, a device going
down, a rejected value, a DR event starting. They carry text, so they are not readings;
the store writes them to the ``events`` measurement:

    events,site=<site>,kind=<kind>,severity=<info|warning|error|critical>,source=<who>[,entity=<id>]
        message="<text>"[,value=<float>]  <ts_ns>
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["info", "warning", "error", "critical"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``kind`` is a stable machine name (``device_down``, ``cap_plan``, ...)."""

    ts_ns: int
    kind: str
    severity: Severity
    source: str  # component that raised it: collector/<device>, controller, store, twin
    message: str
    entity: str | None = None  # topology/loop/job/device id it concerns
    fields: dict[str, float] = field(default_factory=dict)  # extra numeric fields


class EventKind(enum.StrEnum):
    """Every kind of event powerplane raises: the store's ``kind`` tag, what dashboards, alert
    rules and hooks select on. Members are strings, so they travel as themselves."""

    # decisions, every period (the store only)
    CAP_PLAN = "cap_plan"  # entity=<site>: the plan's budget and reason
    CAP_BINDING = "cap_binding"  # entity=<constraint id>: what holds the caps
    CAP_OVERDRAW = "cap_overdraw"  # GPUs drawing over their cap, accounted at their draw
    TELEMETRY_STALE = "telemetry_stale"  # GPUs or loops planned on worst cases
    LIMIT_AT_RISK = "limit_at_risk"  # caps fit, but draws lagging their caps exceed a limit
    PLAN_VIOLATION = "plan_violation"  # a plan granted over a limit: only its cuts applied
    CONTROL_ERROR = "control_error"  # a control period raised; the next one runs
    AUTHORITY_ACQUIRED = "authority_acquired"  # entity=<controller>: it commands the agents (fields epoch)
    AUTHORITY_LOST = "authority_lost"  # entity=<controller>: it stopped commanding them (fields epoch)
    # devices and the store
    DEVICE_DOWN = "device_down"
    DEVICE_UP = "device_up"
    READING_SUSPECT = "reading_suspect"  # entity=<power node>: disagrees with its children (controllers/consistency)
    COLLECTOR_DOWN = "collector_down"  # entity=<collector>: silent; its devices are down (fields devices)
    COLLECTOR_UP = "collector_up"  # entity=<collector>: publishing again
    SPOOL_FULL = "spool_full"  # the store's durable spool hit its bound
    STORE_REJECTED = "store_rejected"  # the server refused points (4xx)
    # scheduler hooks (below): these names and the meaning of fields["value"] are the contract
    CAP_CHANGED = "cap_changed"  # entity=<job>, value=per-GPU cap W, fields priority, gpus
    INFEASIBLE = "constraint_infeasible"  # entity=<constraint id>, value=deficit W
    NON_COMPLIANT = "node_noncompliant"  # entity=<rack>, value=nodes, detail.nodes; per rack and period
    LEASE_FALLBACK = "lease_fallback"  # entity=<rack>, value=nodes, fields safe_cap_w; per rack and period
    MOVE = "move_recommendation"  # entity=<job>, value=power freed W
    HEADROOM_LOW = "headroom_low"  # entity=<constraint id>, value=headroom W
    DR_START = "dr_start"  # entity=<DR event id>, value=target W
    DR_END = "dr_end"  # entity=<DR event id>


EV_CAP_CHANGED = EventKind.CAP_CHANGED
EV_INFEASIBLE = EventKind.INFEASIBLE
EV_NON_COMPLIANT = EventKind.NON_COMPLIANT
EV_LEASE_FALLBACK = EventKind.LEASE_FALLBACK
EV_MOVE = EventKind.MOVE
EV_HEADROOM_LOW = EventKind.HEADROOM_LOW
EV_DR_START = EventKind.DR_START
EV_DR_END = EventKind.DR_END
# The kinds schedulers are told about (webhooks, MQTT event topics, Slurm, Kubernetes).
EVENT_KINDS: tuple[str, ...] = (EV_CAP_CHANGED, EV_INFEASIBLE, EV_NON_COMPLIANT, EV_LEASE_FALLBACK, EV_MOVE,
                                EV_HEADROOM_LOW, EV_DR_START, EV_DR_END)
