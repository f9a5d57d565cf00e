"""Read plans: what one poll of an SNMP device asks for, built once from (profile, device).

A poll is at most two kinds of request, run concurrently:

* one GET with every scalar of the device (split only above ``max_get`` varbinds);
* GETBULK over the table columns the profile reads, all columns in the same request
  (one varbind per column, ``max_repetitions`` rows each), each column dropped from the
  next request as soon as the agent answers past its end. A 24-outlet table with three
  columns is one round trip.

``BulkWalk`` is that walk as a pure state machine (``request()`` -> OIDs to send,
``absorb(varbinds)``), so its edge cases are tested without a network.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from collectors.base import DeviceConfig, PointTarget, series_id
from collectors.snmp.profile import Oid, SnmpPointSpec, SnmpProfile, parse_oid
from models.errors import DeviceError
from models.readings import SeriesRegistry


class NoValue(enum.Enum):
    """SNMP exception values (RFC 3416): the agent has no value for an OID."""

    NO_SUCH_OBJECT = "noSuchObject"
    NO_SUCH_INSTANCE = "noSuchInstance"
    END_OF_MIB_VIEW = "endOfMibView"


Raw = int | float | bytes | NoValue  # what the edge hands to the decoder
VarBind = tuple[Oid, Raw]


@dataclass(frozen=True, slots=True)
class Conversion:
    """raw -> value: sentinels, enumeration map, counter modulus, scale and offset."""

    scale: float
    offset: float
    missing: frozenset[int]
    mapping: tuple[tuple[int, float], ...]  # empty: numeric value
    map_default: float | None
    counter: bool
    modulus: float

    @classmethod
    def of(cls, p: SnmpPointSpec, default_missing: Sequence[int]) -> Conversion:
        """The conversion of a profile point."""
        missing = p.missing if p.missing is not None else default_missing
        return cls(p.scale, p.offset, frozenset(missing), tuple((int(k), v) for k, v in p.map.items()),
                   p.map_default, p.counter, float(2**p.wrap_bits))


@dataclass(frozen=True, slots=True)
class ScalarPoint:
    """A scalar: its OID, its series and its conversion."""

    name: str
    oid: Oid
    sid: int
    conv: Conversion


@dataclass(frozen=True, slots=True)
class ColumnPoint:
    """A table column read for every row; series are interned per row index on first sight."""

    name: str
    column: Oid
    target: PointTarget
    conv: Conversion
    n_index: int
    where: tuple[tuple[int, int], ...]  # (index position, required value)
    tag_pos: tuple[tuple[int, str], ...]  # (index position, tag name)
    digits: Oid | None  # decimal-digits column with the same index
    sum_sid: int | None  # series of the sum over rows (device tags only)


@dataclass
class SnmpPlan:
    """Everything one poll asks for, and where each answer goes."""

    device: DeviceConfig
    registry: SeriesRegistry
    scalars: tuple[ScalarPoint, ...]
    columns: tuple[Oid, ...]  # value columns walked every poll
    points: dict[Oid, tuple[ColumnPoint, ...]]
    digit_columns: tuple[Oid, ...]  # walked on the first poll and every digits_refresh_s
    max_repetitions: int
    digits_refresh_s: float
    _row_sid: dict[tuple[int, Oid], int] = field(default_factory=dict)

    @property
    def get_oids(self) -> tuple[Oid, ...]:
        """OIDs of the single GET (all scalars)."""
        return tuple(s.oid for s in self.scalars)

    def row_series(self, k: int, point: ColumnPoint, index: Oid) -> int:
        """Series id of ``point`` at row ``index`` (``k`` identifies the point)."""
        key = (k, index)
        sid = self._row_sid.get(key)
        if sid is None:
            extra = tuple((name, str(index[pos]) if pos < point.n_index - 1 or len(index) == point.n_index
                           else ".".join(str(x) for x in index[pos:])) for pos, name in point.tag_pos)
            sid = self._row_sid[key] = series_id(self.registry, self.device, point.target, extra)
        return sid


def build_plan(profile: SnmpProfile, device: DeviceConfig, registry: SeriesRegistry,
               max_repetitions: int | None = None) -> SnmpPlan:
    """Intern every fixed series and lay out the GET and the bulk walk of ``device``."""
    spec = profile.spec
    scalars = []
    for s in spec.scalars:
        target = PointTarget(s.metric, s.scale, s.offset, tuple(s.tags.items()), s.counter)
        scalars.append(ScalarPoint(s.name or s.oid, parse_oid(s.oid), series_id(registry, device, target),
                                   Conversion.of(s, spec.missing)))
    points: dict[Oid, list[ColumnPoint]] = {}
    digit_cols: list[Oid] = []
    for t in spec.tables:
        entry = parse_oid(t.entry)
        digits = parse_oid(t.decimal_digits) if t.decimal_digits else None
        if digits is not None and digits not in digit_cols:
            digit_cols.append(digits)
        for c in t.columns:
            target = PointTarget(c.metric, c.scale, c.offset, tuple(c.tags.items()), c.counter)
            where = tuple((t.index.index(k), v) for k, v in c.where.items())
            tag_pos = tuple((i, n) for i, n in enumerate(t.index) if not n.startswith("_") and n not in c.where)
            sum_sid = series_id(registry, device, target) if c.sum else None
            col = entry + (c.column,)
            points.setdefault(col, []).append(ColumnPoint(
                c.name or f"{t.name}.{c.column}", col, target, Conversion.of(c, spec.missing), len(t.index),
                where, tag_pos, digits, sum_sid))
    reps = spec.max_repetitions if max_repetitions is None else max_repetitions
    return SnmpPlan(device, registry, tuple(scalars), tuple(points), {k: tuple(v) for k, v in points.items()},
                    tuple(digit_cols), max(1, reps), spec.digits_refresh_s)


class BulkWalk:
    """Walk several columns at once with GETBULK: one varbind per column still open."""

    def __init__(self, columns: Sequence[Oid]) -> None:
        self.roots = list(dict.fromkeys(columns))
        self.rows: dict[Oid, list[tuple[Oid, Raw]]] = {r: [] for r in self.roots}
        self._next = {r: r for r in self.roots}
        self.active = list(self.roots)
        self.problems: list[str] = []  # agent misbehaviour (non-increasing OIDs)
        self.error: DeviceError | None = None  # the request that ended the walk early, if any

    @property
    def done(self) -> bool:
        """True when every column has been read to its end."""
        return not self.active

    def complete_rows(self) -> dict[Oid, list[tuple[Oid, Raw]]]:
        """Rows of the columns read to their end; a column cut short is left out whole.

        Half a column would decode into a table that silently lost rows (and a sum over
        rows that reads as a power drop), so a walk interrupted by a timeout keeps only
        the columns it finished.
        """
        return {r: self.rows[r] for r in self.roots if r not in self.active}

    def request(self) -> list[Oid]:
        """The OIDs of the next GETBULK (non-repeaters 0), one per open column."""
        return [self._next[r] for r in self.active]

    def absorb(self, varbinds: Sequence[VarBind]) -> None:
        """Take a GETBULK response: rows of ``len(active)`` varbinds, possibly truncated."""
        n = len(self.active)
        if not n:
            return
        if not varbinds:  # an agent that answers nothing cannot be walked further
            self.problems.append("empty GETBULK response")
            self.active = []
            return
        closed: set[Oid] = set()
        for i, (oid, raw) in enumerate(varbinds):
            root = self.active[i % n]
            if root in closed:
                continue
            if isinstance(raw, NoValue) or oid[:len(root)] != root:
                closed.add(root)
                continue
            if oid <= self._next[root]:
                self.problems.append(f"agent returned non-increasing OID {'.'.join(map(str, oid))}")
                closed.add(root)
                continue
            self.rows[root].append((oid[len(root):], raw))
            self._next[root] = oid
        self.active = [r for r in self.active if r not in closed]
