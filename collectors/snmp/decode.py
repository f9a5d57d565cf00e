"""Varbinds -> reading batches: sentinels, enumerations, decimal digits, counters, tags.

Pure: the decoder holds only the state decoding needs across polls — the decimal digits
of each sensor row (configuration, re-read rarely) and, per counter series, the last raw
value and the modulus multiples added so far. A counter that goes backwards is either a
wrap (``Validator.is_wrap``: it was near the top of its 32/64-bit range and is now near
zero), which is unwrapped so that energy keeps rising, or a reset (an operator cleared an
APC/Raritan energy meter): that is passed on as the drop it is, and the validator flags
it ``COUNTER_RESET`` instead of letting negative energy through.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from collectors.snmp.plan import ColumnPoint, Conversion, NoValue, Raw, SnmpPlan
from collectors.snmp.profile import Oid
from collectors.validate import Validator
from models.readings import ReadingBatch, Reason


class CounterUnwrapper:
    """Per-series counter continuity across polls: unwrap wraps, pass resets through."""

    def __init__(self) -> None:
        self._state: dict[int, tuple[float, float]] = {}  # sid -> (last raw, added multiples)
        self.wraps = 0
        self.resets = 0

    def __call__(self, sid: int, raw: float, modulus: float) -> float:
        """The continuous count for ``raw`` (still in device units)."""
        prev = self._state.get(sid)
        base = 0.0
        if prev is not None:
            last, base = prev
            if raw < last:
                if Validator.is_wrap(last, raw, modulus):
                    base += modulus
                    self.wraps += 1
                else:
                    base = 0.0
                    self.resets += 1
        self._state[sid] = (raw, base)
        return raw + base


def convert(conv: Conversion, raw: Raw) -> tuple[float, Reason]:
    """One raw value -> (value before counter handling, Reason.OK or why not)."""
    if isinstance(raw, NoValue):
        return math.nan, Reason.NOT_IMPLEMENTED
    if isinstance(raw, bytes):
        try:  # some agents serve numbers as DisplayString ("230.1")
            raw = float(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return math.nan, Reason.DECODE
    if isinstance(raw, int) and raw in conv.missing:
        return math.nan, Reason.NOT_IMPLEMENTED
    if conv.mapping:
        for k, v in conv.mapping:
            if raw == k:
                return v, Reason.OK
        if conv.map_default is None:
            return math.nan, Reason.DECODE
        return conv.map_default, Reason.OK
    return float(raw), Reason.OK


class Decoder:
    """Turns one poll's varbinds into a batch, with the cross-poll state that needs."""

    def __init__(self, plan: SnmpPlan) -> None:
        self.plan = plan
        self.counters = CounterUnwrapper()
        self.rows_without_digits = 0  # in the last decode: a sign the digits must be read again
        self.digits: dict[Oid, dict[Oid, int]] = {c: {} for c in plan.digit_columns}
        self._point_key = {id(p): k for k, p in enumerate(p for ps in plan.points.values() for p in ps)}

    def set_digits(self, column: Oid, rows: Sequence[tuple[Oid, Raw]]) -> None:
        """Store a walked decimal-digits column (index suffix -> digits)."""
        self.digits[column] = {suffix: int(raw) for suffix, raw in rows
                               if isinstance(raw, int) and 0 <= raw <= 9}

    def decode(self, ts_ns: int, scalars: Mapping[Oid, Raw],
               columns: Mapping[Oid, Sequence[tuple[Oid, Raw]]]) -> tuple[ReadingBatch, Counter[Reason]]:
        """Readings of one poll (``ts_ns`` = when the requests were sent) and what was refused."""
        sids: list[int] = []
        vals: list[float] = []
        rejected: Counter[Reason] = Counter()
        self.rows_without_digits = 0
        for s in self.plan.scalars:
            raw = scalars.get(s.oid)
            if raw is None:
                continue  # not asked for / that request failed: reported as a partial error
            v = self._value(s.sid, s.conv, raw, 0, rejected)
            if v is not None:
                sids.append(s.sid)
                vals.append(v)
        for col, pts in self.plan.points.items():
            rows = columns.get(col)
            if rows is None:
                continue
            for p in pts:
                self._column(p, rows, sids, vals, rejected)
        batch = ReadingBatch(np.full(len(sids), ts_ns, np.int64), np.asarray(sids, np.int32),
                             np.asarray(vals, np.float64), np.zeros(len(sids), np.uint8), self.plan.registry)
        return batch, rejected

    def _column(self, p: ColumnPoint, rows: Sequence[tuple[Oid, Raw]], sids: list[int], vals: list[float],
                rejected: Counter[Reason]) -> None:
        k = self._point_key[id(p)]
        digits = self.digits.get(p.digits) if p.digits is not None else None
        total = 0.0
        n_ok = 0
        complete = True
        for index, raw in rows:
            if len(index) < p.n_index or any(index[pos] != want for pos, want in p.where):
                continue
            d = 0
            if digits is not None:
                got = digits.get(index)
                if got is None:  # a row that appeared since the digits were read
                    rejected[Reason.DECODE] += 1
                    self.rows_without_digits += 1
                    complete = False
                    continue
                d = got
            sid = self.plan.row_series(k, p, index)
            v = self._value(sid, p.conv, raw, d, rejected)
            if v is None:
                complete = False
                continue
            sids.append(sid)
            vals.append(v)
            total += v
            n_ok += 1
        if p.sum_sid is not None and n_ok and complete:
            sids.append(p.sum_sid)
            vals.append(total)

    def _value(self, sid: int, conv: Conversion, raw: Raw, digits: int,
               rejected: Counter[Reason]) -> float | None:
        v, reason = convert(conv, raw)
        if reason:
            rejected[reason] += 1
            return None
        if conv.counter:
            v = self.counters(sid, v, conv.modulus)
        if digits:
            v = v / 10.0**digits
        return v * conv.scale + conv.offset
