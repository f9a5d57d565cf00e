"""The durable spool: order, acknowledgement across reopen, torn tails, bound, exclusivity."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.errors import StoreError
from store.spool import Spool


def _drain(sp: Spool) -> list[bytes]:
    out = []
    while len(sp):
        recs = sp.peek(1)
        out += [sp.read(r) for r in recs]
        sp.ack(recs[-1])
    return out


def test_records_come_back_in_order_across_segments_and_reopen(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=100)
    for k in range(20):
        assert sp.append(f"line {k}\n".encode(), 1)
    first = sp.peek(5)
    assert [sp.read(r) for r in first] == [f"line {k}\n".encode() for k in range(5)]
    sp.ack(first[-1])
    sp.close()
    sp = Spool(tmp_path, segment_bytes=100)
    assert sp.pending_points == 15
    assert _drain(sp) == [f"line {k}\n".encode() for k in range(5, 20)]
    assert sp.pending_bytes == 0
    sp.close()
    sp = Spool(tmp_path)
    assert len(sp) == 0 and len(list(tmp_path.glob("seg-*.lp"))) <= 2  # delivered segments are deleted
    sp.close()


def test_a_torn_tail_is_cut_and_later_appends_survive(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append(b"a 1\n", 1)
    sp.append(b"b 2\n", 1)
    sp.close()
    seg = sorted(tmp_path.glob("seg-*.lp"))[-1]
    with seg.open("ab") as fh:  # a crash in the middle of an append
        fh.write(b"PLP1\x10\x00\x00\x00garbage")
    sp = Spool(tmp_path)
    assert sp.pending_points == 2
    sp.append(b"c 3\n", 1)
    sp.close()
    sp = Spool(tmp_path)
    assert _drain(sp) == [b"a 1\n", b"b 2\n", b"c 3\n"]
    sp.close()


def test_a_corrupted_record_ends_the_segment(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append(b"a 1\n", 1)
    sp.append(b"b 2\n", 1)
    sp.close()
    seg = sorted(tmp_path.glob("seg-*.lp"))[-1]
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0xFF  # flip a bit of the last payload: its CRC no longer matches
    seg.write_bytes(bytes(data))
    sp = Spool(tmp_path)
    assert _drain(sp) == [b"a 1\n"]
    sp.close()


def test_the_bound_refuses_new_records(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=100)
    assert sp.append(b"x" * 50, 1)
    assert not sp.append(b"y" * 50, 1)  # 16-byte headers: 132 > 100
    assert sp.pending_points == 1
    sp.ack(sp.peek(1)[-1])
    assert sp.append(b"y" * 50, 1)
    sp.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    with pytest.raises(StoreError, match="in use"):
        Spool(tmp_path)
    sp.close()
    Spool(tmp_path).close()
