"""Decoding against hand-computed register images: every type x byte order, plus round trips."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors.modbus.decode import (
    BYTE_ORDERS,
    FORMATS,
    decode,
    decode_bit,
    decode_string,
    is_sentinel,
    permutation,
)
from models.errors import DecodeError
from models.registers import encode

# (type, value, {order: registers}) — written out by hand from the value's big-endian bytes.
IMAGES: list[tuple[str, float, dict[str, list[int]]]] = [
    ("uint16", 0x1234, {"ABCD": [0x1234], "DCBA": [0x3412], "BADC": [0x3412], "CDAB": [0x1234]}),
    ("int16", -2, {"ABCD": [0xFFFE], "DCBA": [0xFEFF], "BADC": [0xFEFF], "CDAB": [0xFFFE]}),
    ("uint32", 0x12345678, {"ABCD": [0x1234, 0x5678], "DCBA": [0x7856, 0x3412],
                            "BADC": [0x3412, 0x7856], "CDAB": [0x5678, 0x1234]}),
    ("int32", -0x12345678, {  # 0xEDCBA988
        "ABCD": [0xEDCB, 0xA988], "DCBA": [0x88A9, 0xCBED], "BADC": [0xCBED, 0x88A9], "CDAB": [0xA988, 0xEDCB]}),
    ("float32", 1.0, {"ABCD": [0x3F80, 0x0000], "DCBA": [0x0000, 0x803F],
                      "BADC": [0x803F, 0x0000], "CDAB": [0x0000, 0x3F80]}),
    ("float32", -123.456, {  # 0xC2F6E979
        "ABCD": [0xC2F6, 0xE979], "DCBA": [0x79E9, 0xF6C2], "BADC": [0xF6C2, 0x79E9], "CDAB": [0xE979, 0xC2F6]}),
    ("uint64", 0x0102030405060708, {
        "ABCD": [0x0102, 0x0304, 0x0506, 0x0708], "DCBA": [0x0807, 0x0605, 0x0403, 0x0201],
        "BADC": [0x0201, 0x0403, 0x0605, 0x0807], "CDAB": [0x0708, 0x0506, 0x0304, 0x0102]}),
    ("int64", -2, {
        "ABCD": [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], "DCBA": [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        "BADC": [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], "CDAB": [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]}),
    ("float64", 1.0, {  # 0x3FF0000000000000
        "ABCD": [0x3FF0, 0, 0, 0], "DCBA": [0, 0, 0, 0xF03F], "BADC": [0xF03F, 0, 0, 0], "CDAB": [0, 0, 0, 0x3FF0]}),
    ("float64", -2.5, {  # 0xC004000000000000
        "ABCD": [0xC004, 0, 0, 0], "DCBA": [0, 0, 0, 0x04C0], "BADC": [0x04C0, 0, 0, 0], "CDAB": [0, 0, 0, 0xC004]}),
]
CASES = [(t, v, o, regs) for t, v, imgs in IMAGES for o, regs in imgs.items()]


def test_every_type_and_order_is_covered() -> None:
    assert {(t, o) for t, _, o, _ in CASES} == {(t, o) for t in FORMATS for o in BYTE_ORDERS}


@pytest.mark.parametrize(("reg_type", "value", "order", "regs"), CASES)
def test_decode_hand_computed_image(reg_type: str, value: float, order: str, regs: list[int]) -> None:
    got = decode(regs, reg_type, order)
    if reg_type == "float32":
        assert got == pytest.approx(value, rel=1e-7)
    else:
        assert got == value
    assert encode(value, reg_type, order) == regs


def test_bits_strings_and_errors() -> None:
    assert [decode_bit(0b1010_0000_0000_0101, b) for b in (0, 1, 2, 13, 15)] == [1, 0, 1, 1, 1]
    with pytest.raises(DecodeError):
        decode_bit(1, 16)
    assert decode_string([0x5375, 0x6E53, 0x0000]) == "SunS"
    assert decode_string([0x7553, 0x536E], "BADC") == "SunS"
    with pytest.raises(DecodeError, match="needs 4 bytes"):
        decode([1], "float32")
    with pytest.raises(DecodeError, match="register out of range"):
        decode([70000], "uint16")
    with pytest.raises(DecodeError, match="byte order"):
        permutation(4, "ACBD")


def test_sentinels() -> None:
    assert is_sentinel(-0x8000, (-0x8000,))
    assert not is_sentinel(5, (-0x8000,))
    assert is_sentinel(math.nan, (math.nan,))
    assert not is_sentinel(math.nan, ())  # a NaN is then the validator's business


_INT_BOUNDS = {"int16": 15, "uint16": 16, "int32": 31, "uint32": 32, "int64": 63, "uint64": 64}


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[str, float, str]:
    reg_type = draw(st.sampled_from(sorted(FORMATS)))
    order = draw(st.sampled_from(BYTE_ORDERS))
    if reg_type.startswith("float"):
        value = draw(st.floats(allow_nan=False, width=32 if reg_type == "float32" else 64))
    else:
        bits = _INT_BOUNDS[reg_type]
        lo = -(2**bits) if reg_type.startswith("int") else 0
        value = draw(st.integers(lo, 2**bits - 1))
    return reg_type, value, order


@given(typed_values())
def test_round_trip(case: tuple[str, float, str]) -> None:
    """Decoding what was encoded gives the value back (the images themselves are checked by hand in
    tests/models/test_registers.py)."""
    reg_type, value, order = case
    assert decode(encode(value, reg_type, order), reg_type, order) == value


@given(st.binary(min_size=8, max_size=8), st.sampled_from(BYTE_ORDERS))
def test_permutations_are_involutions(raw: bytes, order: str) -> None:
    perm = permutation(8, order)
    once = bytes(raw[p] for p in perm)
    assert bytes(once[p] for p in perm) == raw
    assert struct.unpack(">Q", bytes(raw[p] for p in permutation(8, "ABCD")))[0] == int.from_bytes(raw, "big")
