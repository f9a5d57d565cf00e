"""Encode values into 16-bit Modbus registers, in every type and byte order devices use.

Byte orders name where the bytes of a big-endian value ``A B C D`` end up on the wire:

    ABCD  big-endian words, big-endian bytes (Modbus "standard")
    DCBA  fully little-endian
    BADC  big-endian words, bytes swapped inside each word
    CDAB  word-swapped ("little-endian word order"), the common float32 quirk

For 64-bit values the same rules apply word-wise (CDAB reverses the four words).
This is the twin's *encoder*; the collectors have their own decoder, and the tests check
each against hand-computed register images, so one cannot hide a mistake in the other.
"""

from __future__ import annotations

import math
import struct
from typing import Literal

RegType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

_FMT: dict[str, tuple[str, int]] = {
    "int16": (">h", 1), "uint16": (">H", 1), "int32": (">i", 2), "uint32": (">I", 2),
    "int64": (">q", 4), "uint64": (">Q", 4), "float32": (">f", 2), "float64": (">d", 4),
}
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


def width(reg_type: RegType) -> int:
    """Number of registers a value of ``reg_type`` occupies."""
    return _FMT[reg_type][1]


def reorder(raw: bytes, order: ByteOrder) -> bytes:
    """Rearrange big-endian bytes ``raw`` into ``order``."""
    if order == "ABCD" or (len(raw) == 2 and order == "CDAB"):
        return raw
    if order == "DCBA":
        return raw[::-1]
    if order == "BADC":
        return b"".join(raw[i + 1:i + 2] + raw[i:i + 1] for i in range(0, len(raw), 2))
    if order == "CDAB":
        return b"".join(raw[i:i + 2] for i in range(len(raw) - 2, -1, -2))
    raise ValueError(f"unknown byte order {order!r}")


def encode(value: float, reg_type: RegType, order: ByteOrder = "ABCD") -> list[int]:
    """Registers holding ``value`` (integers are rounded and saturated to the type)."""
    fmt, n = _FMT[reg_type]
    if reg_type.startswith("float"):
        raw = struct.pack(fmt, float(value))
    else:
        lo, hi = _INT_RANGE[reg_type]
        v = 0 if not math.isfinite(value) else int(round(value))
        raw = struct.pack(fmt, min(hi, max(lo, v)))
    raw = reorder(raw, order)
    return [int.from_bytes(raw[2 * i:2 * i + 2], "big") for i in range(n)]


def encode_string(text: str, n_regs: int) -> list[int]:
    """ASCII ``text`` in ``n_regs`` registers, two characters each, NUL-padded."""
    raw = text.encode("ascii", "replace")[: 2 * n_regs].ljust(2 * n_regs, b"\0")
    return [int.from_bytes(raw[2 * i:2 * i + 2], "big") for i in range(n_regs)]


class Image:
    """A block of registers starting at ``start`` that values are written into."""

    def __init__(self, start: int, count: int, fill: int = 0) -> None:
        self.start = start
        self.regs = [fill] * count

    def put(self, address: int, value: float, reg_type: RegType, order: ByteOrder = "ABCD") -> None:
        """Write ``value`` at protocol ``address``."""
        words = encode(value, reg_type, order)
        i = address - self.start
        self.regs[i:i + len(words)] = words

    def put_words(self, address: int, words: list[int]) -> None:
        """Write raw register words at protocol ``address``."""
        i = address - self.start
        self.regs[i:i + len(words)] = words
