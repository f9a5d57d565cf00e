"""The register codec against hand-computed images for every type and byte order (both directions)."""

from __future__ import annotations

import pytest

from models.registers import decode, encode, encode_string, width

# value, type -> big-endian ABCD words, computed by hand.
CASES = [
    (1.0, "float32", [0x3F80, 0x0000]),
    (-2.5, "float32", [0xC020, 0x0000]),
    (600000.0, "float32", [0x4912, 0x7C00]),
    (1.0, "float64", [0x3FF0, 0, 0, 0]),
    (-1, "int16", [0xFFFF]),
    (40000, "uint16", [0x9C40]),
    (-2, "int32", [0xFFFF, 0xFFFE]),
    (600000, "uint32", [0x0009, 0x27C0]),
    (0x0102030405060708, "uint64", [0x0102, 0x0304, 0x0506, 0x0708]),
    (-1, "int64", [0xFFFF] * 4),
]


def _bytes(words: list[int]) -> bytes:
    return b"".join(w.to_bytes(2, "big") for w in words)


@pytest.mark.parametrize(("value", "reg_type", "abcd"), CASES)
def test_every_type_and_byte_order(value: float, reg_type: str, abcd: list[int]) -> None:
    raw = _bytes(abcd)
    assert encode(value, reg_type, "ABCD") == abcd  # type: ignore[arg-type]
    dcba = raw[::-1]
    badc = b"".join(raw[i + 1:i + 2] + raw[i:i + 1] for i in range(0, len(raw), 2))
    cdab = b"".join(raw[i:i + 2] for i in range(len(raw) - 2, -1, -2))
    for order, expect in (("DCBA", dcba), ("BADC", badc), ("CDAB", cdab)):
        words = encode(value, reg_type, order)  # type: ignore[arg-type]
        assert _bytes(words) == expect, order
        assert decode(words, reg_type, order) == value, order
    assert len(abcd) == width(reg_type)  # type: ignore[arg-type]


def test_word_swapped_float_by_hand() -> None:
    # 1.0f = 3F 80 00 00: CDAB puts the low word first.
    assert encode(1.0, "float32", "CDAB") == [0x0000, 0x3F80]
    assert encode(1.0, "float32", "BADC") == [0x803F, 0x0000]
    assert encode(1.0, "float32", "DCBA") == [0x0000, 0x803F]


def test_integers_saturate_and_round() -> None:
    assert encode(70000, "int16") == [0x7FFF]
    assert encode(-5, "uint16") == [0]
    assert encode(2.6, "int16") == [3]
    assert encode(float("nan"), "int32") == [0, 0]


def test_strings() -> None:
    assert encode_string("SunS", 2) == [0x5375, 0x6E53]
    assert encode_string("abc", 3) == [0x6162, 0x6300, 0]
