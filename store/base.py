"""The sink contract every telemetry store implements, and its health counters.

A ``Sink`` takes columnar ``ReadingBatch``es and ``Event``s. ``write`` returns only when
the batch is durable — committed to the embedded database, or appended and fsynced to
the spool of a server sink — so a crash after ``write`` returns loses nothing.
``write`` never raises because the server is down; it raises ``StoreError`` only when
the sink itself is broken (disk full, closed). Readings that cannot be stored (non-finite
values, names line protocol cannot carry, a server's 4xx) are counted in ``stats()`` as
rejected, with the last error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from models.events import Event
from models.readings import REGISTRY, ReadingBatch, SeriesRegistry


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters of one sink since it was opened (``spooled_points`` is a level)."""

    written_points: int = 0  # acknowledged by the server / committed locally
    spooled_points: int = 0  # waiting in the durable spool
    rejected_points: int = 0  # refused (4xx, non-finite, unencodable name); never retried
    dropped_points: int = 0  # dropped because the spool was at its bound
    written_events: int = 0
    last_error: str | None = None
    overwritten_points: int = 0  # same series and time as a point already stored: replaced, not added


@runtime_checkable
class Sink(Protocol):
    """Where telemetry goes: the embedded store or an InfluxDB-compatible server."""

    name: str

    def write(self, batch: ReadingBatch) -> None:
        """Store ``batch`` durably (returns once it is committed or spooled)."""
        ...

    def write_events(self, events: Sequence[Event]) -> None:
        """Store ``events`` durably."""
        ...

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait up to ``timeout_s`` until everything written so far is delivered."""
        ...

    def close(self) -> None:
        """Flush briefly and release files, threads and connections."""
        ...

    def stats(self) -> StoreStats:
        """The sink's counters."""
        ...

    def health_batch(self, ts_ns: int, site: str) -> ReadingBatch:
        """The sink's counters as ``store.*`` readings tagged ``sink=<name>``."""
        ...


_HEALTH_FIELDS = ("written_points", "spooled_points", "rejected_points", "dropped_points")


def health_batch(stats: StoreStats, sink: str, ts_ns: int, site: str,
                 registry: SeriesRegistry = REGISTRY) -> ReadingBatch:
    """``store.*`` readings of ``stats`` for ``sink`` at ``ts_ns``."""
    sids = [registry.id(f"store.{f}", site=site, sink=sink) for f in _HEALTH_FIELDS]
    values = [float(getattr(stats, f)) for f in _HEALTH_FIELDS]
    return ReadingBatch.of(ts_ns, np.asarray(sids, np.int32), np.asarray(values), 0, registry)
