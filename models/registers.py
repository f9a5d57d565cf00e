"""The one Modbus register codec: values <-> 16-bit registers, for every type and byte order.

Byte orders name where the bytes of the big-endian value ``A B C D`` sit on the wire:

    ABCD  big-endian words, big-endian bytes (the Modbus standard)
    DCBA  fully little-endian
    BADC  big-endian words, bytes swapped inside each word
    CDAB  word-swapped ("little-endian word order"), the common float32 quirk

For 64-bit values CDAB reverses all four words and BADC swaps bytes within each word.
Every rearrangement is its own inverse, so decoding applies the same permutation to the
wire bytes that encoding applied to the value's big-endian bytes. The collectors decode
with it (``collectors.modbus.decode``), the twin's devices encode with it; tests check it
against register images computed by hand. Pure: no I/O.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Literal, get_args

from models.errors import DecodeError

RegType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bit"]
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]
REG_TYPES: tuple[str, ...] = get_args(RegType)
BYTE_ORDERS: tuple[str, ...] = get_args(ByteOrder)

FORMATS: dict[str, tuple[str, int]] = {
    "int16": (">h", 1), "uint16": (">H", 1), "int32": (">i", 2), "uint32": (">I", 2),
    "int64": (">q", 4), "uint64": (">Q", 4), "float32": (">f", 2), "float64": (">d", 4),
}
INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}

def width(reg_type: str, length: int = 1) -> int:
    """Registers a value of ``reg_type`` occupies (``length`` registers for strings, 1 for bits)."""
    if reg_type == "string":
        return length
    if reg_type == "bit":
        return 1
    try:
        return FORMATS[reg_type][1]
    except KeyError:
        raise DecodeError(f"unknown register type {reg_type!r}") from None


def permutation(n_bytes: int, order: str) -> tuple[int, ...]:
    """Byte positions: big-endian byte ``k`` of the value is wire byte ``perm[k]``."""
    idx = list(range(n_bytes))
    if order == "ABCD" or (n_bytes == 2 and order == "CDAB"):
        return tuple(idx)
    if order == "DCBA":
        return tuple(reversed(idx))
    if order == "BADC":
        return tuple(i ^ 1 for i in idx)
    if order == "CDAB":
        n_words = n_bytes // 2
        return tuple(2 * (n_words - 1 - i // 2) + i % 2 for i in idx)
    raise DecodeError(f"unknown byte order {order!r}")


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """The wire bytes of ``registers`` (each big-endian, as Modbus sends them)."""
    try:
        return struct.pack(f">{len(registers)}H", *registers)
    except struct.error as exc:
        raise DecodeError(f"register out of range: {exc}") from None


def decode_bytes(wire: bytes, reg_type: str, order: str = "ABCD") -> int | float:
    """Decode one numeric value from its wire bytes."""
    fmt, n_regs = FORMATS[reg_type]
    if len(wire) != 2 * n_regs:
        raise DecodeError(f"{reg_type} needs {2 * n_regs} bytes, got {len(wire)}")
    perm = permutation(len(wire), order)
    raw = bytes(wire[p] for p in perm)
    return struct.unpack(fmt, raw)[0]  # type: ignore[no-any-return]


def decode(registers: Sequence[int], reg_type: str, order: str = "ABCD") -> int | float:
    """Decode one numeric value from its registers."""
    return decode_bytes(registers_to_bytes(registers), reg_type, order)


def decode_bit(register: int, bit: int) -> int:
    """Bit ``bit`` (0 = least significant) of a register."""
    if not 0 <= bit <= 15:
        raise DecodeError(f"bit index {bit} outside 0..15")
    return (register >> bit) & 1


def decode_string(registers: Sequence[int], order: str = "ABCD") -> str:
    """ASCII text, two characters per register, NUL/space padding stripped (BADC/DCBA swap bytes)."""
    wire = registers_to_bytes(registers)
    if order in ("BADC", "DCBA"):
        wire = bytes(wire[i ^ 1] for i in range(len(wire)))
    return wire.split(b"\0", 1)[0].decode("ascii", "replace").strip()


def encode(value: float, reg_type: str, order: str = "ABCD") -> list[int]:
    """Registers holding ``value`` (inverse of ``decode``); integers are rounded and saturated to the
    type, a non-finite value in an integer type is 0."""
    fmt, n_regs = FORMATS[reg_type]
    if reg_type.startswith("float"):
        raw = struct.pack(fmt, float(value))
    else:
        lo, hi = INT_RANGE[reg_type]
        v = 0 if not math.isfinite(value) else int(round(value))
        raw = struct.pack(fmt, min(hi, max(lo, v)))
    perm = permutation(len(raw), order)
    wire = bytearray(len(raw))
    for k, p in enumerate(perm):
        wire[p] = raw[k]
    return [int.from_bytes(wire[2 * i:2 * i + 2], "big") for i in range(n_regs)]


def encode_string(text: str, n_regs: int) -> list[int]:
    """ASCII ``text`` in ``n_regs`` registers, two characters each, NUL-padded."""
    raw = text.encode("ascii", "replace")[: 2 * n_regs].ljust(2 * n_regs, b"\0")
    return [int.from_bytes(raw[2 * i:2 * i + 2], "big") for i in range(n_regs)]


class Image:
    """A block of registers starting at ``start`` that values are written into (a device's memory)."""

    def __init__(self, start: int, count: int, fill: int = 0) -> None:
        self.start = start
        self.regs = [fill] * count

    def put(self, address: int, value: float, reg_type: str, order: str = "ABCD") -> None:
        """Write ``value`` at protocol ``address``."""
        words = encode(value, reg_type, order)
        i = address - self.start
        self.regs[i:i + len(words)] = words

    def put_words(self, address: int, words: list[int]) -> None:
        """Write raw register words at protocol ``address``."""
        i = address - self.start
        self.regs[i:i + len(words)] = words
