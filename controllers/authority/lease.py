"""The holder's side of an authority lease, as values: when does authority end, locally?

Pure: every time is passed in (monotonic seconds), so the fencing arithmetic is tested with
plain numbers. ``LocalLease`` only ever moves its deadline forward from the *send* time of a
request the lease server answered, never from when the answer arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

DRIFT = 0.02  # clock-rate difference between this host and the lease server, with room to spare
MARGIN_S = 0.05  # a command handed to the broker just before the deadline is on the wire by then


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of authority as this controller saw it."""

    kind: str  # "acquired" or "lost"
    epoch: int
    mono_s: float  # time.monotonic() of the change
    wall_ns: int  # wall clock of the change (for records)
    reason: str = ""


@dataclass
class AuthorityStatus:
    """What an authority source did so far (for summaries and the live view)."""

    role: str = "standby"  # "authority" or "standby"
    epoch: int = 0  # held now (0: none)
    holder: str = ""  # who holds it, as last seen
    acquisitions: int = 0
    losses: int = 0
    errors: int = 0
    last_error: str = ""
    transitions: list[Transition] = field(default_factory=list)


class Authority(Protocol):
    """Where a controller learns whether it may command the agents, and under which epoch."""

    def current(self) -> int | None:
        """The epoch held now, or None: a clock read, never blocks."""
        ...

    def status(self) -> AuthorityStatus:
        """Counters and transitions."""
        ...


class FixedAuthority:
    """A single controller: always the authority, with the epoch it raised at start (``--state-dir``)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._status = AuthorityStatus(role="authority", epoch=epoch, acquisitions=1)

    def current(self) -> int | None:
        """Always the epoch."""
        return self.epoch

    def status(self) -> AuthorityStatus:
        """Constant."""
        return self._status


class LocalLease:
    """The local deadline of a held lease (see ``controllers.authority``)."""

    def __init__(self, drift: float = DRIFT, margin_s: float = MARGIN_S) -> None:
        self.drift = drift
        self.margin_s = margin_s
        self.epoch = 0
        self.deadline_s = float("-inf")

    def deadline(self, sent_s: float, ttl_s: float) -> float:
        """The local end of a lease that the server (re)started no earlier than ``sent_s``."""
        return sent_s + ttl_s * (1.0 - self.drift) - self.margin_s

    def granted(self, epoch: int, sent_s: float, ttl_s: float) -> None:
        """A grant sent at ``sent_s`` and the campaign that followed it succeeded."""
        self.epoch = epoch
        self.deadline_s = self.deadline(sent_s, ttl_s)

    def renewed(self, sent_s: float, ttl_s: float) -> None:
        """A keep-alive sent at ``sent_s`` was answered with ``ttl_s`` > 0 (never moves the deadline back)."""
        self.deadline_s = max(self.deadline_s, self.deadline(sent_s, ttl_s))

    def lost(self) -> None:
        """Authority ended (the server said so, or the deadline passed)."""
        self.epoch = 0
        self.deadline_s = float("-inf")

    def current(self, now_s: float) -> int | None:
        """The epoch if the lease is held at ``now_s``."""
        return self.epoch if self.epoch and now_s < self.deadline_s else None
