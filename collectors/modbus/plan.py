"""Read planning: from a profile (and what discovery found) to coalesced register blocks.

Pure: no I/O. Built once per device (again only when discovery changes the layout);
polling just executes it. Points are coalesced into as few requests as possible: two
neighbouring points share a read when the unused registers between them are at most
``max_gap`` and the read stays within ``max_block`` (at most 125 registers, 2000 bits).
Fast and slow points are planned separately so a slow point never widens a fast read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from collectors.base import DeviceConfig, series_id
from collectors.modbus.profile import MAX_BITS, MAX_REGISTERS, ModbusPoint, ModbusProfile
from collectors.options import ModbusOptions
from models.errors import ConfigError
from models.readings import SeriesRegistry


@dataclass(frozen=True, slots=True)
class Layout:
    """What discovery found: the SunSpec frame start and the count of every repeated group."""

    frame: int = 0  # added to top-level point addresses (the SunSpec model's first data register)
    group_counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Field:
    """One value to decode: a point at an absolute address, and where it goes."""

    point: ModbusPoint
    address: int
    series: int  # -1 when the value is not a reading (scale factor, count, info string)
    sf_field: int  # index of the scale-factor field, or -1
    block: int = -1
    offset: int = 0  # registers (or bits) from the start of the block


@dataclass(frozen=True, slots=True)
class Block:
    """One read request."""

    table: str
    address: int
    count: int
    slow: bool
    fields: tuple[int, ...]


@dataclass(frozen=True)
class ReadPlan:
    """Every request of one device and every field they carry."""

    blocks: tuple[Block, ...]
    fields: tuple[Field, ...]
    derived: tuple[tuple[int, tuple[int, ...], float, float], ...] = ()  # (series, field indices, scale, offset)

    def requests(self, *, slow: bool) -> int:
        """Number of requests of a poll that does (or does not) include the slow points."""
        return sum(1 for b in self.blocks if slow or not b.slow)

    @property
    def n_readings(self) -> int:
        """Number of fields that become readings."""
        return sum(1 for f in self.fields if f.series >= 0) + len(self.derived)


def coalesce(spans: Sequence[tuple[int, int]], *, max_gap: int, max_block: int) -> list[tuple[int, int, list[int]]]:
    """Group ``(address, count)`` spans into ``(start, count, member indices)`` reads.

    Spans may overlap (a bit and the register holding it). A span longer than
    ``max_block`` cannot be read at all and raises ValueError.
    """
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], -spans[i][1]))
    out: list[tuple[int, int, list[int]]] = []
    start = end = -1
    members: list[int] = []
    for i in order:
        a, n = spans[i]
        if n > max_block:
            raise ValueError(f"a {n}-register value cannot fit a {max_block}-register read")
        if members and a - end <= max_gap and max(end, a + n) - start <= max_block:
            end = max(end, a + n)
            members.append(i)
            continue
        if members:
            out.append((start, end - start, members))
        start, end, members = a, a + n, [i]
    if members:
        out.append((start, end - start, members))
    return out


def _options(device: DeviceConfig) -> ModbusOptions:
    from collectors.options import options_of

    o = options_of(device)
    assert isinstance(o, ModbusOptions)
    return o


def _instances(profile: ModbusProfile, device: DeviceConfig, layout: Layout
               ) -> list[tuple[ModbusPoint, int, tuple[tuple[str, str], ...], dict[str, str]]]:
    """``(point, absolute address, extra tags, sf scope)`` of every point instance."""
    out: list[tuple[ModbusPoint, int, tuple[tuple[str, str], ...], dict[str, str]]] = []
    for p in profile.points:
        out.append((p, p.address + layout.frame, (), {}))
    children = _options(device).children
    for g, pts in profile.groups:
        n = g.count if g.count is not None else int(layout.group_counts.get(g.name, 0))
        base = g.base - profile.address_base
        for k in range(n):
            if g.entity_level and k < len(children):
                extra: tuple[tuple[str, str], ...] = (("level", g.entity_level), ("id", str(children[k])))
            else:
                extra = ((g.name, str(k + 1)),)
            scope = {q.name: f"{g.name}[{k}].{q.name}" for q in pts}
            for p in pts:
                out.append((p, base + g.stride * k + p.address, extra, scope))
    return out


def build_plan(profile: ModbusProfile, device: DeviceConfig, registry: SeriesRegistry,
               layout: Layout = Layout()) -> ReadPlan:
    """The read plan of ``device``: interned series, coalesced blocks, scale-factor links."""
    o = _options(device)
    max_block = min(profile.max_block, o.max_block if "max_block" in device.options else MAX_REGISTERS,
                    MAX_REGISTERS)
    max_gap = o.max_gap if "max_gap" in device.options else profile.max_gap
    inst = _instances(profile, device, layout)
    keys = [(scope.get(p.name, p.name)) for p, _, _, scope in inst]
    index = {k: i for i, k in enumerate(keys)}
    # metric_map renames an entity total (a point without point tags), e.g. a site meter's
    # power.power_w -> site.facility_w; sub-points keep their metric.
    metric_map: Mapping[str, str] = o.metric_map
    # child_ratings_w: {child id: rating}, so a tap-off read as a rack is range-checked (and
    # its headroom reported) against the rack's rating, not the busway's.
    child_ratings: Mapping[str, float] = o.child_ratings_w
    fields: list[Field] = []
    for p, addr, extra, scope in inst:
        target = p.target
        if target is not None and not target.tags and not extra and target.metric in metric_map:
            target = replace(target, metric=metric_map[target.metric])
        child = dict(extra).get("id") if "level" in dict(extra) else None
        if target is not None and target.rating_w is None and child is not None and child in child_ratings:
            target = replace(target, rating_w=float(child_ratings[child]))
        sid = series_id(registry, device, target, extra) if target is not None else -1
        sf = -1
        if p.scale_factor is not None:
            sf = index[scope.get(p.scale_factor, p.scale_factor)]
        fields.append(Field(p, addr, sid, sf))
    blocks: list[Block] = []
    by_kind: dict[tuple[str, bool], list[int]] = {}
    for i, f in enumerate(fields):
        # a scale factor is read with the fast points whenever any fast point uses it
        by_kind.setdefault((f.point.table, f.point.slow), []).append(i)
    sf_needed_fast = {f.sf_field for f in fields if f.sf_field >= 0 and not f.point.slow}
    for i in sf_needed_fast:
        f = fields[i]
        if f.point.slow:
            by_kind[(f.point.table, True)].remove(i)
            by_kind.setdefault((f.point.table, False), []).append(i)
    for (table, slow), idx in sorted(by_kind.items()):
        bits = table in ("coil", "discrete")
        limit = MAX_BITS if bits else max_block
        spans = [(fields[i].address, fields[i].point.n_regs) for i in idx]
        try:
            groups = coalesce(spans, max_gap=0 if bits and max_gap == 0 else max_gap, max_block=limit)
        except ValueError as exc:
            raise ConfigError(device.name, [("options.max_block", str(exc))]) from None
        for start, count, members in groups:
            b = len(blocks)
            fi = tuple(idx[m] for m in members)
            for j in fi:
                fields[j] = Field(fields[j].point, fields[j].address, fields[j].series, fields[j].sf_field,
                                  b, fields[j].address - start)
            blocks.append(Block(table, start, count, slow, fi))
    derived = tuple((series_id(registry, device, t), tuple(index[n] for n in src), t.scale, t.offset)
                    for _, t, src in profile.derived)
    return ReadPlan(tuple(blocks), tuple(fields), derived)


def naive_plan(plan: ReadPlan) -> ReadPlan:
    """The same fields read one per request (what a naive collector does; for benchmarks)."""
    blocks: list[Block] = []
    fields = list(plan.fields)
    for i, f in enumerate(plan.fields):
        fields[i] = Field(f.point, f.address, f.series, f.sf_field, len(blocks), 0)
        blocks.append(Block(f.point.table, f.address, f.point.n_regs, f.point.slow, (i,)))
    return ReadPlan(tuple(blocks), tuple(fields), plan.derived)
