"""An independent line-protocol parser, written from the reference, to check our encoder.

Reference (InfluxDB line protocol, "Special characters"): in measurements a backslash
escapes comma and space; in tag keys, tag values and field keys it escapes comma, equals
sign and space; in string field values it escapes double quote and backslash. A
backslash before any other character is a literal backslash.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Line:
    """One parsed line."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | str]
    ts_ns: int


def _token(s: str, i: int, specials: str, stops: str) -> tuple[str, int]:
    out = []
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in specials:
            out.append(s[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def _string(s: str, i: int) -> tuple[str, int]:
    assert s[i] == '"'
    i += 1
    out = []
    while True:
        c = s[i]
        if c == "\\" and s[i + 1] in '"\\':
            out.append(s[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1


def parse_line(s: str) -> Line:
    """Parse one line (without its newline)."""
    meas, i = _token(s, 0, ", ", ", ")
    tags: dict[str, str] = {}
    while s[i] == ",":
        k, i = _token(s, i + 1, ",= ", "=")
        assert s[i] == "="
        v, i = _token(s, i + 1, ",= ", ", ")
        tags[k] = v
    assert s[i] == " ", (s, i)
    i += 1
    fields: dict[str, float | str] = {}
    while True:
        k, i = _token(s, i, ",= ", "=")
        assert s[i] == "="
        i += 1
        if s[i] == '"':
            v, i = _string(s, i)
            fields[k] = v
        else:
            j = i
            while s[j] not in ", ":
                j += 1
            raw = s[i:j]
            assert not raw.endswith("i"), f"integer field {raw!r}"
            fields[k] = float(raw)
            i = j
        if s[i] == ",":
            i += 1
            continue
        break
    assert s[i] == " "
    return Line(meas, tags, fields, int(s[i + 1:]))


def parse(data: bytes) -> list[Line]:
    """Parse a payload of newline-terminated lines."""
    text = data.decode()
    assert text == "" or text.endswith("\n")
    return [parse_line(ln) for ln in text.split("\n")[:-1]]
