"""The reading-batch wire format at its edge: series tables checked once per distinct text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import wire
from models.readings import ReadingBatch, SeriesRegistry

SITE = "demo"
NOW = 1_700_000_000_000_000_000


def message(reg: SeriesRegistry, rack: str, value: float) -> bytes:
    sids = [reg.id("power.power_w", 600e3, site=SITE, level="rack", id=rack),
            reg.id("power.power_w", 50e3, site=SITE, level="pdu", id=f"{rack}/a")]
    return wire.encode(ReadingBatch.of(NOW, sids, [value, value / 20], 0, reg), site=SITE, src=rack, seq=1)


def test_the_same_series_text_is_interned_once_and_decodes_the_same() -> None:
    sender, reg = SeriesRegistry(), SeriesRegistry()
    cache = wire.SeriesCache(reg)
    a = wire.decode(message(sender, "r01", 400e3), cache, site=SITE, now_ns=NOW)
    b = wire.decode(message(sender, "r01", 410e3), cache, site=SITE, now_ns=NOW)
    assert a.refused is None and b.refused is None
    assert len(cache._tables) == 1  # one text, one entry
    np.testing.assert_array_equal(a.batch.series, b.batch.series)
    assert b.batch.value.tolist() == [410e3, 20.5e3]
    assert reg.key(int(b.batch.series[0])).tags == (("id", "r01"), ("level", "rack"), ("site", SITE))
    c = wire.decode(message(sender, "r02", 1.0), cache, site=SITE, now_ns=NOW)
    assert len(cache._tables) == 2 and c.batch.series[0] not in a.batch.series


def test_a_malformed_series_table_is_refused_every_time() -> None:
    sender, reg = SeriesRegistry(), SeriesRegistry()
    cache = wire.SeriesCache(reg)
    good = json.loads(message(sender, "r01", 400e3))
    for bad in ([["power.power_w", {"id": "x" * 200}, 1.0]],  # a tag value over 128 characters
                [["power.power_w", {"id": "r01"}, -5.0]],  # a rating must be positive
                {"not": "a list"}):
        msg = json.dumps({**good, "series": bad}).encode()
        for _ in range(2):  # a refused text is never remembered as good
            d = wire.decode(msg, cache, site=SITE, now_ns=NOW)
            assert d.refused is wire.Refused.MALFORMED and not len(d.batch)
    assert not cache._tables
    assert wire.decode(message(sender, "r01", 1.0), cache, site=SITE, now_ns=NOW).refused is None


@pytest.mark.parametrize(("tables", "nbytes"), [(3, 8 << 20), (4096, 2_000)])
def test_the_table_memory_is_bounded_in_texts_and_bytes(monkeypatch: pytest.MonkeyPatch, tables: int,
                                                         nbytes: int) -> None:
    monkeypatch.setattr(wire, "MAX_TABLES", tables)
    monkeypatch.setattr(wire, "MAX_TABLE_BYTES", nbytes)
    sender, reg = SeriesRegistry(), SeriesRegistry()
    cache = wire.SeriesCache(reg)
    for i in range(50):  # ever new texts, as a collector batching whatever it polled sends
        assert wire.decode(message(sender, f"r{i:02d}", 1.0), cache, site=SITE, now_ns=NOW).refused is None
        assert len(cache._tables) <= tables
        assert cache._table_bytes == sum(len(k) + v.nbytes for k, v in cache._tables.items()) <= nbytes
