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
