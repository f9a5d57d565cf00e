"""When to poll: per-device cadence with jitter, and capped exponential back-off after failures.

Pure arithmetic on integer nanoseconds so it can be tested without a clock. A device keeps
its cadence (polls stay on ``start + k * interval``; a slow poll skips the slots it
missed rather than bunching up); a failing device is retried after ``models.retry.Backoff``
but never sooner than its interval.
"""

from __future__ import annotations

import random
import zlib

from models.clock import NS_PER_S


def next_slot_ns(due_ns: int, interval_ns: int, now_ns: int) -> tuple[int, int]:
    """The next slot after ``due_ns`` that is not in the past, and how many slots were skipped."""
    nxt = due_ns + interval_ns
    if nxt >= now_ns:
        return nxt, 0
    missed = (now_ns - nxt) // interval_ns + 1
    return nxt + missed * interval_ns, int(missed)


class Jitter:
    """Per-device random offset in ``[0, jitter_s)``, seeded by the device name (reproducible)."""

    def __init__(self, name: str, jitter_s: float) -> None:
        self.jitter_ns = int(max(0.0, jitter_s) * NS_PER_S)
        self._rng = random.Random(zlib.crc32(name.encode()))

    def offset_ns(self) -> int:
        """A fresh offset for the next poll."""
        return self._rng.randrange(self.jitter_ns) if self.jitter_ns > 0 else 0
