"""Retrying: the one capped exponential back-off (with optional jitter) and the one ``Retry-After`` parser.

Collectors back off from a failing device (never sooner than its interval), webhooks and
the InfluxDB sink from a failing server (with jitter, honouring ``Retry-After``): the same
arithmetic, configured per use. Pure: no clock, no I/O.
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Wait ``base_s * factor ** (failures - 1)``, capped at ``max_s``, then shortened by up to
    ``jitter`` (a share, 0..1) at random so that many clients do not retry in step."""

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.0
    retry_after_max_s: float = 60.0  # a server asking for longer would stall the whole queue
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_s(self, failures: int, *, floor_s: float = 0.0, retry_after_s: float | None = None) -> float:
        """Seconds to wait after ``failures`` (>= 1) consecutive failures, never less than ``floor_s``;
        a server's ``Retry-After`` (capped at ``retry_after_max_s``) replaces the computed wait."""
        if retry_after_s is not None:
            return max(floor_s, min(max(0.0, retry_after_s), self.retry_after_max_s))
        raw = min(self.max_s, self.base_s * self.factor ** min(max(0, failures - 1), 64))
        if self.jitter > 0:
            raw *= 1.0 - self.jitter * self.rng.random()
        return float(max(floor_s, raw))


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    v = value.strip()
    try:
        secs = float(v)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(v)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - now_s)
    return secs if math.isfinite(secs) and secs >= 0 else None
