"""SNMP device profiles: scalars fetched by one GET, tables walked by GETBULK, all numeric OIDs.

A profile (``collectors/profiles/snmp/*.toml``) looks like::

    protocol = "snmp"
    name = "apc-rpdu2"
    max_repetitions = 25           # GETBULK max-repetitions (a device option may lower it)
    missing = [-1]                 # raw values that mean "not supported" (counted, not stored)

    [[scalars]]                    # one instance each; all of a device's scalars go in one GET
    name = "rPDU2DeviceStatusPower"
    oid = "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1"
    metric = "power.power_w"
    scale = 10.0                   # 0.01 kW -> W

    [[tables]]
    name = "rPDU2PhaseStatusTable"
    entry = "1.3.6.1.4.1.318.1.1.26.6.3.1"
    index = ["phase"]              # index components -> tags; a leading "_" keeps one out of the tags
    decimal_digits = "..."         # optional: a column with the same index; value = raw / 10^digits
    [[tables.columns]]
    column = 5
    metric = "power.current_a"
    scale = 0.1
    where = { sensor = 5 }         # optional: only rows whose index components equal these
    sum = true                     # optional: also emit the sum over rows with the device tags only

Point keys shared with every protocol: ``metric``, ``scale``, ``offset``, ``tags``,
``counter``; SNMP adds ``wrap_bits`` (counter modulus, 32 or 64), ``missing``, and
``map``/``map_default`` for enumerations (``map = { "5" = 1 }`` turns upsOutputSource
battery(5) into on_battery = 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from collectors.profiles import STRICT, TargetSpec, validate_model

Oid = tuple[int, ...]
_OID_RE = re.compile(r"^\.?\d+(\.\d+)+$")
_TAG_RE = re.compile(r"^_?[a-z][a-z0-9_]*$")


def parse_oid(text: str) -> Oid:
    """``"1.3.6.1.2.1.1.3.0"`` (leading dot allowed) -> ``(1, 3, 6, 1, 2, 1, 1, 3, 0)``."""
    if not _OID_RE.match(text):
        raise ValueError(f"not a numeric OID: {text!r} (MIB names are not resolved)")
    return tuple(int(p) for p in text.lstrip(".").split("."))


def format_oid(oid: Oid) -> str:
    """``(1, 3, 6)`` -> ``"1.3.6"``."""
    return ".".join(str(p) for p in oid)


class SnmpPointSpec(TargetSpec):
    """Where one SNMP value goes, and how raw integers become a value."""

    name: str = ""
    wrap_bits: Literal[32, 64] = 32
    missing: list[int] | None = None  # None: the profile's default
    map: dict[str, Annotated[float, Field(ge=-1e12, le=1e12)]] = Field(default_factory=dict)
    map_default: Annotated[float, Field(ge=-1e12, le=1e12)] | None = None

    @field_validator("map")
    @classmethod
    def _int_keys(cls, v: dict[str, float]) -> dict[str, float]:
        for k in v:
            if not re.match(r"^-?\d+$", k):
                raise ValueError(f"map keys are the device's integer values, got {k!r}")
        return v

    @model_validator(mode="after")
    def _counter_has_no_map(self) -> SnmpPointSpec:
        if self.counter and self.map:
            raise ValueError("a counter cannot have a value map")
        return self


class ScalarSpec(SnmpPointSpec):
    """One scalar (or one fixed table instance) read by GET."""

    oid: str

    @field_validator("oid")
    @classmethod
    def _oid(cls, v: str) -> str:
        parse_oid(v)
        return v


class ColumnSpec(SnmpPointSpec):
    """One column of a table, read for every row by GETBULK."""

    column: int = Field(ge=1)
    where: dict[str, int] = Field(default_factory=dict)
    sum: bool = False

    @model_validator(mode="after")
    def _sum_not_counter(self) -> ColumnSpec:
        if self.sum and self.counter:
            raise ValueError("sum = true is for gauges; a counter's rows are summed by the store")
        return self


class TableSpec(BaseModel):
    """A conceptual table: its entry OID, index components and the columns to read."""

    model_config = STRICT

    name: str
    entry: str
    index: list[str] = Field(min_length=1)
    decimal_digits: str | None = None
    columns: list[ColumnSpec] = Field(min_length=1)

    @field_validator("entry", "decimal_digits")
    @classmethod
    def _oid(cls, v: str | None) -> str | None:
        if v is not None:
            parse_oid(v)
        return v

    @field_validator("index")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for n in v:
            if not _TAG_RE.match(n):
                raise ValueError(f"index component {n!r}: use lower_case names (leading _ = not a tag)")
        if len(set(v)) != len(v):
            raise ValueError("index component names must be unique")
        return v

    @model_validator(mode="after")
    def _where_names(self) -> TableSpec:
        for c in self.columns:
            unknown = set(c.where) - set(self.index)
            if unknown:
                raise ValueError(f"column {c.column}: where names {sorted(unknown)} not in index {self.index}")
        return self


class SnmpProfileModel(BaseModel):
    """The whole profile file."""

    model_config = STRICT

    protocol: Literal["snmp"]
    name: str
    description: str = ""
    vendor: str = ""
    sys_object_id: str | None = None  # informational: what sysObjectID the device reports
    max_repetitions: int = Field(25, ge=1, le=1000)
    missing: list[int] = []
    digits_refresh_s: float = Field(600.0, gt=0)  # decimal digits are configuration: re-read rarely
    scalars: list[ScalarSpec] = []
    tables: list[TableSpec] = []

    @model_validator(mode="after")
    def _something(self) -> SnmpProfileModel:
        if not self.scalars and not self.tables:
            raise ValueError("a profile needs at least one scalar or table")
        return self


@dataclass  # not frozen: the Profile protocol declares plain (settable) attributes
class SnmpProfile:
    """A parsed SNMP profile (the ``Profile`` of collectors/profiles.py)."""

    name: str
    path: Path
    spec: SnmpProfileModel
    protocol: str = "snmp"

    def describe(self) -> list[tuple[str, str, str]]:
        """Rows ``(point, metric, detail)`` for ``powerplane profiles show``."""
        rows = []
        for s in self.spec.scalars:
            rows.append((s.name or s.oid, s.metric, f"GET {s.oid}{_conv_text(s)}"))
        for t in self.spec.tables:
            digits = f", / 10^digits({t.decimal_digits})" if t.decimal_digits else ""
            for c in t.columns:
                where = "".join(f" {k}={v}" for k, v in c.where.items())
                tags = [n for n in t.index if not n.startswith("_") and n not in c.where]
                detail = (f"BULK {t.entry}.{c.column} per [{', '.join(tags) or '-'}]{where}"
                          f"{digits}{_conv_text(c)}{', +sum' if c.sum else ''}")
                rows.append((f"{t.name}.{c.name or c.column}", c.metric, detail))
        return rows


def _conv_text(p: SnmpPointSpec) -> str:
    out = ""
    if p.scale != 1.0:
        out += f" ×{p.scale:g}"
    if p.offset:
        out += f" {p.offset:+g}"
    if p.counter:
        out += f", counter/{p.wrap_bits}"
    if p.map:
        out += f", map {p.map}"
    return out


def parse_snmp_profile(path: Path, data: dict[str, Any]) -> SnmpProfile:
    """Validate an SNMP profile; every problem is a ProfileError naming its key path."""
    spec = validate_model(path, data, SnmpProfileModel)
    return SnmpProfile(spec.name, path, spec)
