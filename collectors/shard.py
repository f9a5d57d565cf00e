"""Which collector polls which device: a stable shard per device name, or an explicit list.

``powerplane collect --shard i/n`` keeps the devices whose shard is ``i`` of ``n``. The shard
of a device is a pure function of its name and ``n`` — jump consistent hashing (Lamping and
Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm", 2014) over the first 8 bytes of
the name's BLAKE2b digest — so every collector host computes the same assignment without
talking to the others, every device belongs to exactly one shard, the shards are balanced
to within sampling noise, and growing from ``n`` to ``n + 1`` collectors moves only the
``1/(n + 1)`` of the devices that the new shard takes (each device either stays or moves to
the new shard; none moves between old shards).

``--device PATTERN`` (repeatable, shell-style) keeps only devices whose name matches: an
explicit list per host, for devices reachable only from one network segment. Both filters
can be combined; the explicit list is applied first.

Moving a shard (its host is dead) is a configuration change, never automatic: the shard
index is configuration (``--shard 2/4``; in Kubernetes the StatefulSet ordinal), and the
supervisor (systemd ``Restart=``, the StatefulSet) restarts that index, on another host if it
must. Automatic reassignment was rejected because two collectors that each believe they own
a device poll it twice (many Modbus gateways accept only a few connections), because device
reachability follows the management network and not a hash, and because a dead collector
costs telemetry, not control: the controller reports its devices down and plans on them at
worst case until the shard runs again.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from models.errors import ConfigError

MAX_SHARDS = 65_536
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, where: str = "--shard") -> Shard:
    """``"i/n"`` with ``0 <= i < n <= MAX_SHARDS``; ConfigError naming ``where`` otherwise."""
    head, sep, tail = text.strip().partition("/")
    if not sep or not head.isdigit() or not tail.isdigit() or len(head) > 6 or len(tail) > 6:
        raise ConfigError(where, [("", f"expected INDEX/COUNT such as 0/4, got {text[:40]!r}")])
    i, n = int(head), int(tail)
    if not 0 < n <= MAX_SHARDS or not 0 <= i < n:
        raise ConfigError(where, [("", f"{i}/{n}: the index counts from 0 and must be below the count "
                                       f"(at most {MAX_SHARDS:,} shards)")])
    return Shard(i, n)


def _key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash of a 64-bit ``key`` into ``buckets`` buckets."""
    b, j = -1, 0
    key &= _MASK64
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_of(name: str, count: int) -> int:
    """The shard (0..count-1) that polls the device called ``name``."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    return jump_hash(_key(name), count)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


def select(devices: Sequence[T], shard: Shard | None = None, patterns: Iterable[str] = ()) -> list[T]:
    """The devices this collector polls: those matching any of ``patterns`` (all if none), then
    those of ``shard`` (all if None)."""
    pats = list(patterns)
    out = [d for d in devices if not pats or any(fnmatch.fnmatchcase(d.name, p) for p in pats)]
    if shard is not None:
        out = [d for d in out if shard_of(d.name, shard.count) == shard.index]
    return out
