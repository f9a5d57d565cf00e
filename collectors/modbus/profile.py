"""Modbus device profiles: registers -> metrics, as TOML data.

    protocol = "modbus"
    name = "cdu-aalc"
    vendor = "..."; description = "..."
    address_base = 0          # 1 when the vendor's map numbers registers from 1 (register 3000 = address 2999)
    table = "holding"         # default table: holding | input | coil | discrete
    byte_order = "ABCD"       # default byte order: ABCD | DCBA | BADC | CDAB
    sentinels = "sunspec"     # "not implemented" values per type; or "none"
    max_block = 125           # optional cap on registers per read (the device's own limit)
    max_gap = 16              # optional: unused registers a read may span to save a request

    [sunspec]                 # optional: addresses are relative to the first of these models found
    models = [201, 202, 203, 204]
    bases = [40000, 0, 50000] # where to look for the "SunS" marker

    [[points]]
    name = "supply_temp"      # unique
    address = 1
    type = "int16"            # int16 uint16 int32 uint32 int64 uint64 float32 float64 string bit
    scale = 0.01              # value = raw * 10^sf * scale + offset
    metric = "cooling.supply_c"
    class = "fast"            # or "slow": read every `slow_every` polls
    # optional: byte_order, table, offset, tags = {phase = "L1"}, counter, bit, length (string),
    # scale_factor = "<name of an int16 scale-factor point>", sentinels = [65535]

    [[groups]]                # repeated blocks: tap-offs, outlets, pumps
    name = "tapoff"
    base = 100; stride = 20
    count_point = "tapoffs"   # a top-level point holding the count (or count = N)
    entity_level = "rack"     # instance k is entity (level=rack, id=options.children[k]) when given
    [[groups.points]]         # addresses relative to base + k * stride
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from collectors.base import PointTarget
from collectors.modbus.decode import SUNSPEC_SENTINELS, ByteOrder, RegType, width
from collectors.profiles import STRICT, MetricName, Scale, validate_model
from models.errors import ProfileError
from models.readings import metric

Table = Literal["holding", "input", "coil", "discrete"]
MAX_REGISTERS = 125  # Modbus spec: at most 125 registers per read (FC 3/4)
MAX_BITS = 2000  # and 2000 coils / discrete inputs (FC 1/2)


class ModbusPointSpec(BaseModel):
    """One register (or register group) and where its value goes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, populate_by_name=True)

    name: str
    address: int = Field(ge=0, le=65535)
    type: RegType = "uint16"
    length: int = Field(1, ge=1, le=MAX_REGISTERS)
    bit: int | None = Field(None, ge=0, le=15)
    byte_order: ByteOrder | None = None
    table: Table | None = None
    metric: MetricName | None = None
    scale: Scale = 1.0
    offset: Scale = 0.0
    scale_factor: str | None = None
    tags: dict[str, str] = {}
    counter: bool = False
    point_class: Literal["fast", "slow"] = Field("fast", alias="class")
    sentinels: list[Annotated[float, Field(allow_inf_nan=True)]] | None = None  # NaN: a float's "not implemented"


class GroupSpec(BaseModel):
    """A block of points repeated ``count`` times at ``base + k * stride``."""

    model_config = STRICT

    name: str
    base: int = Field(ge=0, le=65535)
    stride: int = Field(ge=1)
    count: int | None = Field(None, ge=0, le=4096)
    count_point: str | None = None
    entity_level: str | None = None
    points: list[ModbusPointSpec]


class DerivedSpec(BaseModel):
    """A reading computed from other points: their sum (e.g. pumps running from pump states)."""

    model_config = STRICT

    name: str
    sum: list[str] = Field(min_length=1)
    metric: MetricName
    scale: Scale = 1.0
    offset: Scale = 0.0
    tags: dict[str, str] = {}


class SunSpecSpec(BaseModel):
    """Where to find the SunSpec model the point addresses are relative to."""

    model_config = STRICT

    models: list[int] = Field(min_length=1)
    bases: list[int] = [40000, 0, 50000]


class ModbusProfileModel(BaseModel):
    """The whole profile file."""

    model_config = STRICT

    protocol: Literal["modbus"]
    name: str
    description: str = ""
    vendor: str = ""
    address_base: Literal[0, 1] = 0
    table: Table = "holding"
    byte_order: ByteOrder = "ABCD"
    sentinels: Literal["none", "sunspec"] = "none"
    max_block: int = Field(MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    max_gap: int = Field(16, ge=0, le=MAX_REGISTERS)
    sunspec: SunSpecSpec | None = None
    points: list[ModbusPointSpec] = []
    groups: list[GroupSpec] = []
    derived: list[DerivedSpec] = []


@dataclass(frozen=True, slots=True)
class ModbusPoint:
    """A point resolved against the profile defaults (addresses still relative to its frame)."""

    name: str
    address: int
    reg_type: str
    n_regs: int
    order: str
    table: str
    bit: int | None
    target: PointTarget | None  # None: a scale factor, a count or an info string
    scale_factor: str | None
    sentinels: tuple[float, ...]
    slow: bool
    group: str | None = None


@dataclass(frozen=True)
class ModbusProfile:
    """A parsed Modbus profile."""

    name: str
    protocol: str
    path: Path
    vendor: str
    description: str
    points: tuple[ModbusPoint, ...]  # top level (absolute, or relative to the SunSpec model)
    groups: tuple[tuple[GroupSpec, tuple[ModbusPoint, ...]], ...]
    sunspec: SunSpecSpec | None
    max_block: int
    max_gap: int
    address_base: int = 0
    derived: tuple[tuple[str, PointTarget, tuple[str, ...]], ...] = ()

    def describe(self) -> list[tuple[str, str, str]]:
        """Rows ``(point, metric, detail)`` for ``powerplane profiles show``."""
        rows = []
        frame = f"SunSpec {self.sunspec.models} +" if self.sunspec else ""
        for p in self.points:
            rows.append((p.name, _metric_of(p), _detail(p, frame)))
        for g, pts in self.groups:
            for p in pts:
                rows.append((f"{g.name}[k].{p.name}", _metric_of(p), _detail(p, f"{g.base}+{g.stride}k+")))
        for name, target, sources in self.derived:
            rows.append((name, target.metric, "sum of " + ", ".join(sources)))
        return rows


def _metric_of(p: ModbusPoint) -> str:
    if p.target is not None:
        return p.target.metric
    return "(scale factor)" if p.reg_type == "int16" else "(info)"


def _detail(p: ModbusPoint, frame: str) -> str:
    bits = [f"{p.table} {frame}{p.address}", p.reg_type if p.reg_type != "string" else f"string[{p.n_regs}]"]
    if p.n_regs > 1 and p.reg_type != "string":
        bits.append(p.order)
    if p.bit is not None:
        bits.append(f"bit {p.bit}")
    if p.target is not None and (p.target.scale != 1.0 or p.target.offset != 0.0):
        bits.append(f"x{p.target.scale:g}" + (f"{p.target.offset:+g}" if p.target.offset else ""))
    if p.scale_factor:
        bits.append(f"x10^{p.scale_factor}")
    if p.slow:
        bits.append("slow")
    return ", ".join(bits)


def _resolve(spec: ModbusPointSpec, prof: ModbusProfileModel, key: str, problems: list[tuple[str, str]],
             group: str | None) -> ModbusPoint:
    table = spec.table or prof.table
    if spec.type == "bit" and spec.bit is None and table in ("holding", "input"):
        problems.append((f"{key}.bit", "type 'bit' on a register table needs bit = 0..15"))
    if spec.bit is not None and spec.type != "bit":
        problems.append((f"{key}.bit", f"bit is only for type 'bit', not {spec.type!r}"))
    if table in ("coil", "discrete") and spec.type != "bit":
        problems.append((f"{key}.type", f"{table} tables hold bits; type must be 'bit'"))
    if spec.type == "string" and spec.metric is not None:
        problems.append((f"{key}.metric", "a string cannot be a metric value"))
    if spec.length != 1 and spec.type != "string":
        problems.append((f"{key}.length", "length is only for type 'string'"))
    if spec.counter and spec.metric is not None and metric(spec.metric).kind != "counter":
        problems.append((f"{key}.counter", f"{spec.metric} is not a counter metric"))
    address = spec.address - (prof.address_base if group is None else 0)  # group points: relative
    if address < 0:
        problems.append((f"{key}.address", f"address {spec.address} below address_base {prof.address_base}"))
    sentinels: tuple[float, ...] = ()
    if spec.sentinels is not None:
        sentinels = tuple(spec.sentinels)
    elif prof.sentinels == "sunspec" and spec.type in SUNSPEC_SENTINELS:
        sentinels = (float(SUNSPEC_SENTINELS[spec.type]),)
    elif prof.sentinels == "sunspec" and spec.type.startswith("float"):
        sentinels = (math.nan,)
    target = None
    if spec.metric is not None:
        target = PointTarget(spec.metric, spec.scale, spec.offset, tuple(sorted(spec.tags.items())),
                             spec.counter or metric(spec.metric).kind == "counter")
    return ModbusPoint(spec.name, address, spec.type, width(spec.type, spec.length),
                       spec.byte_order or prof.byte_order, table, spec.bit, target, spec.scale_factor,
                       sentinels, spec.point_class == "slow", group)


def _check_scale_factor(p: ModbusPoint, sf: ModbusPoint | None, key: str, problems: list[tuple[str, str]]) -> None:
    """A scale factor is a plain int16 register: it exists, is not a value and is not scaled itself.

    The last rule refuses chains and cycles (``A_SF`` scaled by ``B_SF`` scaled by ``A_SF``,
    or a point scaled by itself): SunSpec has neither, and the decoder applies one level.
    """
    if sf is None:
        problems.append((key, f"no point named {p.scale_factor!r}"))
    elif sf.name == p.name:
        problems.append((key, f"{p.name!r} cannot be its own scale factor"))
    elif sf.reg_type not in ("int16", "uint16"):
        problems.append((key, f"{p.scale_factor!r} must be an int16 register"))
    elif sf.target is not None:
        problems.append((key, f"{p.scale_factor!r} is a value point (it has a metric), not a scale factor"))
    elif sf.scale_factor is not None:
        problems.append((key, f"{p.scale_factor!r} is itself scaled by {sf.scale_factor!r}: "
                              "scale-factor chains and cycles are refused"))


def parse_modbus_profile(path: Path, data: dict[str, Any]) -> ModbusProfile:
    """Validate a Modbus profile; every problem is reported with its key path."""
    prof = validate_model(path, data, ModbusProfileModel)
    problems: list[tuple[str, str]] = []
    points = tuple(_resolve(p, prof, f"points[{i}]", problems, None) for i, p in enumerate(prof.points))
    by_name: dict[str, int] = {}
    for i, p in enumerate(points):
        if p.name in by_name:
            problems.append((f"points[{i}].name", f"duplicate point name {p.name!r}"))
        by_name[p.name] = i
    groups = []
    for gi, g in enumerate(prof.groups):
        gkey = f"groups[{gi}]"
        gpts = tuple(_resolve(p, prof, f"{gkey}.points[{i}]", problems, g.name) for i, p in enumerate(g.points))
        if (g.count is None) == (g.count_point is None):
            problems.append((gkey, "give exactly one of count or count_point"))
        if g.count_point is not None and g.count_point not in by_name:
            problems.append((f"{gkey}.count_point", f"no top-level point named {g.count_point!r}"))
        local = {p.name: p for p in gpts}
        for i, p in enumerate(gpts):
            end = p.address + p.n_regs
            if end > g.stride:
                problems.append((f"{gkey}.points[{i}].address", f"ends at {end}, beyond the stride {g.stride}"))
            if p.scale_factor is not None:
                sf_point = local.get(p.scale_factor) or (points[by_name[p.scale_factor]]
                                                         if p.scale_factor in by_name else None)
                _check_scale_factor(p, sf_point, f"{gkey}.points[{i}].scale_factor", problems)
        groups.append((g, gpts))
    for i, p in enumerate(points):
        if p.scale_factor is not None:
            sf_point = points[by_name[p.scale_factor]] if p.scale_factor in by_name else None
            _check_scale_factor(p, sf_point, f"points[{i}].scale_factor", problems)
    derived = []
    for i, d in enumerate(prof.derived):
        for src in d.sum:
            if src not in by_name:
                problems.append((f"derived[{i}].sum", f"no top-level point named {src!r}"))
        try:
            metric(d.metric)
        except KeyError:
            problems.append((f"derived[{i}].metric", f"unknown metric {d.metric!r} (see models/readings.py)"))
            continue
        derived.append((d.name, PointTarget(d.metric, d.scale, d.offset, tuple(sorted(d.tags.items()))),
                        tuple(d.sum)))
    if not points and not groups:
        problems.append(("points", "a profile needs at least one point"))
    if problems:
        raise ProfileError(path, problems)
    return ModbusProfile(prof.name, "modbus", path, prof.vendor, prof.description, points, tuple(groups),
                         prof.sunspec, prof.max_block, prof.max_gap, prof.address_base,
                         tuple(derived))
