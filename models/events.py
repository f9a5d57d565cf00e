"""Events: things that happened, with a reason in words — a cap decision, a device going
down, a rejected value, a DR event starting. They carry text, so they are not readings;
the store writes them to the ``events`` measurement:

    events,site=<site>,kind=<kind>,severity=<info|warning|error|critical>,source=<who>[,entity=<id>]
        message="<text>"[,value=<float>]  <ts_ns>
"""

from __future__ import annotations

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


# Event kinds the scheduler hooks, the dashboards and the alert rules read (tag ``kind``).
# These names and the meaning of ``fields["value"]`` are the contract.
EV_CAP_CHANGED = "cap_changed"  # entity=<job>, value=per-GPU cap W, fields priority, gpus
EV_INFEASIBLE = "constraint_infeasible"  # entity=<constraint id>, value=deficit W
EV_NON_COMPLIANT = "node_noncompliant"  # entity=<node>, value=draw above cap W
EV_LEASE_FALLBACK = "lease_fallback"  # entity=<node>, value=safe cap W
EV_MOVE = "move_recommendation"  # entity=<job>, value=power freed W
EV_HEADROOM_LOW = "headroom_low"  # entity=<constraint id>, value=headroom W
EV_DR_START = "dr_start"  # entity=<DR event id>, value=target W
EV_DR_END = "dr_end"  # entity=<DR event id>
EVENT_KINDS = (EV_CAP_CHANGED, EV_INFEASIBLE, EV_NON_COMPLIANT, EV_LEASE_FALLBACK, EV_MOVE, EV_HEADROOM_LOW,
               EV_DR_START, EV_DR_END)
