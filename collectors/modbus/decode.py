"""Decoding a whole Modbus read plan into readings (the register codec is ``models.registers``),
with SunSpec scale factors and "not implemented" sentinels."""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.readings import Reason
from models.registers import (
    BYTE_ORDERS,
    FORMATS,
    REG_TYPES,
    ByteOrder,
    RegType,
    decode,
    decode_bit,
    decode_bytes,
    decode_string,
    permutation,
    registers_to_bytes,
    width,
)

if TYPE_CHECKING:
    from collectors.modbus.plan import ReadPlan

# SunSpec scale factors are -10..10; a device sending more is broken (and 10.0 ** 400 overflows).
SF_LIMIT = 10

# SunSpec "not implemented" values per type (SunSpec Information Model, section 5.2).
SUNSPEC_SENTINELS: dict[str, int | float] = {
    "int16": -0x8000, "uint16": 0xFFFF, "int32": -0x80000000, "uint32": 0xFFFFFFFF,
    "int64": -0x8000000000000000, "uint64": 0xFFFFFFFFFFFFFFFF,
}


def is_sentinel(raw: int | float, sentinels: Sequence[int | float]) -> bool:
    """True if ``raw`` is one of the device's "not implemented" values (a NaN sentinel matches NaN)."""
    if isinstance(raw, float) and math.isnan(raw):
        return any(isinstance(s, float) and math.isnan(s) for s in sentinels)
    return raw in sentinels


# ---- decoding a whole read plan ---------------------------------------------------------

_K_NUM, _K_BIT, _K_STR, _K_COIL = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class _FieldCode:
    field: int
    kind: int
    byte_off: int  # registers: byte offset in the block; coils: bit offset
    fmt: str
    perm: tuple[int, ...] | None  # None when the bytes are already big-endian
    n_bytes: int
    bit: int
    order: str


@dataclass
class Decoded:
    """Values decoded from one poll's blocks."""

    series: list[int]
    values: list[float]
    rejected: Counter[Reason]
    raw: dict[int, int | float | str]  # field index -> raw value (counts, scale factors, info)


@dataclass(frozen=True, slots=True)
class _BlockCode:
    coils: bool
    words: struct.Struct  # the block's registers -> wire bytes
    whole: struct.Struct | None  # every big-endian numeric field of the block in one unpack
    whole_fields: tuple[int, ...]
    others: tuple[_FieldCode, ...]


class PlanDecoder:
    """Decodes the registers of a plan's blocks into readings; keeps the last scale factors.

    Compiled once per plan: the big-endian numeric fields of a block (the common case) are
    unpacked with one precompiled ``struct`` per block; byte-swapped, bit and string
    fields are decoded one by one.
    """

    def __init__(self, plan: ReadPlan) -> None:
        self.plan = plan
        per_block: list[list[_FieldCode]] = [[] for _ in plan.blocks]
        for i, f in enumerate(plan.fields):
            p = f.point
            if p.table in ("coil", "discrete"):
                code = _FieldCode(i, _K_COIL, f.offset, "", None, 0, 0, p.order)
            elif p.reg_type == "bit":
                code = _FieldCode(i, _K_BIT, 2 * f.offset, "", None, 2, p.bit or 0, p.order)
            elif p.reg_type == "string":
                code = _FieldCode(i, _K_STR, 2 * f.offset, "", None, 2 * p.n_regs, 0, p.order)
            else:
                fmt, n = FORMATS[p.reg_type]
                perm = permutation(2 * n, p.order)
                code = _FieldCode(i, _K_NUM, 2 * f.offset, fmt, None if perm == tuple(range(2 * n)) else perm,
                                  2 * n, 0, p.order)
            per_block[f.block].append(code)
        self._blocks = [self._compile(b.count, b.table in ("coil", "discrete"), codes)
                        for b, codes in zip(plan.blocks, per_block, strict=True)]
        self._sf_fields: list[tuple[int, tuple[float, ...], bool]] = []
        self._value_fields: list[tuple[int, int, int, float, float, tuple[float, ...], bool]] = []
        for i, f in enumerate(plan.fields):
            p = f.point
            sents = tuple(x for x in p.sentinels if not math.isnan(x))
            nan_sent = any(math.isnan(x) for x in p.sentinels)
            if p.reg_type == "string":
                continue
            if f.series < 0:
                self._sf_fields.append((i, sents, nan_sent))
            else:
                t = p.target
                assert t is not None
                self._value_fields.append((i, f.series, f.sf_field, t.scale, t.offset, sents, nan_sent))
        self._string_fields = [i for i, f in enumerate(plan.fields) if f.point.reg_type == "string"]
        self._n = len(plan.fields)
        self.scale_factors: dict[int, int | float] = {}

    @staticmethod
    def _compile(count: int, coils: bool, codes: list[_FieldCode]) -> _BlockCode:
        words = struct.Struct(f">{count}H")
        if coils:
            return _BlockCode(True, words, None, (), tuple(codes))
        plain = sorted((c for c in codes if c.kind == _K_NUM and c.perm is None), key=lambda c: c.byte_off)
        fmt, pos, whole_fields, others = ">", 0, [], [c for c in codes if not (c.kind == _K_NUM and c.perm is None)]
        for c in plain:
            if c.byte_off < pos:  # overlaps the previous field: decode it on its own
                others.append(c)
                continue
            fmt += "x" * (c.byte_off - pos) + c.fmt[1:]
            pos = c.byte_off + c.n_bytes
            whole_fields.append(c.field)
        whole = struct.Struct(fmt) if whole_fields else None
        return _BlockCode(False, words, whole, tuple(whole_fields), tuple(others))

    def decode(self, data: Mapping[int, Sequence[int] | Sequence[bool]]) -> Decoded:
        """Decode the blocks in ``data`` (block index -> registers or bits); missing blocks are skipped."""
        raw: list[int | float | str | None] = [None] * self._n
        for b, words in data.items():
            blk = self._blocks[b]
            if blk.coils:
                for c in blk.others:
                    raw[c.field] = int(bool(words[c.byte_off]))
                continue
            buf = blk.words.pack(*words)
            if blk.whole is not None:
                for i, v in zip(blk.whole_fields, blk.whole.unpack_from(buf), strict=True):
                    raw[i] = v
            for c in blk.others:
                if c.kind == _K_NUM:
                    o = c.byte_off
                    raw[c.field] = struct.unpack(c.fmt, bytes(buf[o + k] for k in c.perm or ()))[0]
                elif c.kind == _K_BIT:
                    raw[c.field] = (int.from_bytes(buf[c.byte_off:c.byte_off + 2], "big") >> c.bit) & 1
                else:
                    n = c.n_bytes // 2
                    o = c.byte_off // 2
                    raw[c.field] = decode_string(words[o:o + n], c.order)  # type: ignore[arg-type]
        sfs = self.scale_factors
        extra: dict[int, int | float | str] = {}
        for i, sents, nan_sent in self._sf_fields:  # scale factors first: values below may use this poll's
            r = raw[i]
            if r is None:
                continue
            extra[i] = r
            if r in sents or (nan_sent and r != r):
                sfs.pop(i, None)
            else:
                sfs[i] = r  # type: ignore[assignment]  # strings are never scale factors
        rejected: Counter[Reason] = Counter()
        series: list[int] = []
        values: list[float] = []
        for i, sid, sf_i, scale, offset, sents, nan_sent in self._value_fields:
            r = raw[i]
            if r is None:  # block not read this poll (slow, or failed)
                continue
            if (sents and r in sents) or (nan_sent and r != r):
                rejected[Reason.NOT_IMPLEMENTED] += 1
                continue
            v = float(r)  # type: ignore[arg-type]  # strings never have a series (profile check)
            if sf_i >= 0:
                sf = sfs.get(sf_i)
                if sf is None:
                    rejected[Reason.NOT_IMPLEMENTED] += 1
                    continue
                if not -SF_LIMIT <= sf <= SF_LIMIT:  # 10.0 ** 400 raises; SunSpec allows -10..10
                    rejected[Reason.DECODE] += 1
                    continue
                v *= 10.0 ** sf
            series.append(sid)
            values.append(v * scale + offset)
        for sid, srcs, scale, offset in self.plan.derived:
            parts = [raw[i] for i in srcs]
            if all(isinstance(x, int | float) for x in parts):
                series.append(sid)
                values.append(float(sum(parts)) * scale + offset)  # type: ignore[arg-type]
        for i in self._string_fields:
            r = raw[i]
            if r is not None:
                extra[i] = r
        return Decoded(series, values, rejected, extra)


__all__ = ["BYTE_ORDERS", "FORMATS", "REG_TYPES", "SF_LIMIT", "SUNSPEC_SENTINELS", "ByteOrder", "PlanDecoder",
           "RegType", "decode", "decode_bit", "decode_bytes", "decode_string", "is_sentinel", "permutation",
           "registers_to_bytes", "width"]
