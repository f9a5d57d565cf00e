"""Line protocol: escaping checked by an independent parser, values and timestamps exact."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import Event
from models.readings import Quality, ReadingBatch, SeriesRegistry
from store.lineproto import encode, encode_batch, encode_events, series_prefix
from testbed.lpparse import parse, parse_line

# Names with every character the syntax cares about, plus unicode; a line break or a
# trailing backslash cannot be carried and is tested separately.
_ALPHABET = st.sampled_from([" ", ",", "=", '"', "\\", "'", "a", "Z", "0", "_", "-", ".", "é", "☃", "電", "🔌"])
names = st.text(_ALPHABET, min_size=1, max_size=12).filter(lambda s: not s.endswith("\\"))
floats = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(tag_key=names, tag_value=names, site=names, value=floats,
       ts_ns=st.integers(-(2**62), 2**62), quality=st.integers(0, 31))
def test_readings_round_trip_through_an_independent_parser(tag_key: str, tag_value: str, site: str,
                                                             value: float, ts_ns: int, quality: int) -> None:
    reg = SeriesRegistry()
    tags = {"site": site, tag_key: tag_value} if tag_key != "site" else {"site": site}
    sid = reg.id("power.power_w", **tags)
    batch = ReadingBatch.of(np.array([ts_ns]), [sid], [value], np.array([quality], np.uint8), reg)
    (line,) = parse(encode(batch))
    assert line.measurement == "power"
    assert line.tags == tags
    assert line.ts_ns == ts_ns
    got = line.fields["power_w"]
    assert isinstance(got, float) and got == value and math.copysign(1, got) == math.copysign(1, value)
    if quality:
        assert line.fields == {"power_w": value, "power_w_quality": float(quality)}
    else:
        assert line.fields == {"power_w": value}


@settings(max_examples=200, deadline=None)
@given(kind=names, source=names, entity=names, site=names, message=st.text(max_size=40),
       extra=st.dictionaries(names, floats, max_size=3))
def test_events_round_trip(kind: str, source: str, entity: str, site: str, message: str,
                           extra: dict[str, float]) -> None:
    extra = {k: v for k, v in extra.items() if k != "message"}
    ev = Event(123, kind, "warning", source, message, entity=entity, fields=extra)
    (line,) = parse(encode_events([ev], site))
    assert line.measurement == "events"
    assert line.tags == {"site": site, "kind": kind, "severity": "warning", "source": source, "entity": entity}
    # A line break is written as backslash-n (two characters), which reads back as such.
    assert line.fields["message"] == message.replace("\n", "\\n").replace("\r", "\\r")
    assert {k: v for k, v in line.fields.items() if k != "message"} == extra
    assert line.ts_ns == 123


def test_escaping_matches_the_reference_examples() -> None:
    reg = SeriesRegistry()
    sid = reg.id("cooling.flow_lpm", site="hall a", loop="cdu=1,north")
    assert series_prefix(reg.key(sid)) == ("cooling,loop=cdu\\=1\\,north,site=hall\\ a flow_lpm=", ",flow_lpm_quality=")
    ev = Event(1, "note", "info", "x", 'he said "hi" \\o/')
    assert encode_events([ev], "s").decode() == \
        'events,site=s,kind=note,severity=info,source=x message="he said \\"hi\\" \\\\o/" 1\n'


def test_every_value_is_written_as_a_float() -> None:
    reg = SeriesRegistry()
    sid = reg.id("cooling.pumps_running", site="s", loop="l")
    text = encode(ReadingBatch.of(5, [sid, sid], [2.0, 1e300], 0, reg)).decode()
    assert text == "cooling,loop=l,site=s pumps_running=2.0 5\ncooling,loop=l,site=s pumps_running=1e+300 5\n"
    for ln in text.splitlines():
        assert isinstance(parse_line(ln).fields["pumps_running"], float)


def test_unencodable_readings_are_skipped_and_counted() -> None:
    reg = SeriesRegistry()
    good = reg.id("site.pue", site="s")
    trailing = reg.id("site.pue", site="bad\\")
    newline = reg.id("site.pue", site="two\nlines")
    batch = ReadingBatch.of(np.array([1, 2, 3, 4, 5]), [good, good, trailing, newline, good],
                            [1.1, math.nan, 1.2, 1.3, math.inf], Quality.GOOD, reg)
    enc = encode_batch(batch)
    assert enc.lines == 1 and enc.skipped_non_finite == 2 and enc.skipped_bad_name == 2
    assert enc.first_error is not None and "backslash" in enc.first_error
    assert [ln.fields["pue"] for ln in parse(enc.data)] == [1.1]


def test_prefix_cache_follows_a_growing_registry() -> None:
    reg = SeriesRegistry()
    a = reg.id("site.it_w", site="one")
    assert encode(ReadingBatch.of(1, [a], [1.0], 0, reg)) == b"site,site=one it_w=1.0 1\n"
    b = reg.id("site.it_w", site="two")
    assert encode(ReadingBatch.of(2, [b, a], [2.0, 3.0], 0, reg)) == \
        b"site,site=two it_w=2.0 2\nsite,site=one it_w=3.0 2\n"


def test_events_at_the_same_time_stay_distinct_points() -> None:
    """InfluxDB would overwrite the second of two events with the same tags and timestamp."""
    from models.events import Event
    from store.lineproto import encode_events

    evs = [Event(1_000, "lease_fallback", "warning", "agent", f"m{i}", "r01") for i in range(3)]
    evs.append(Event(1_000, "lease_fallback", "warning", "agent", "other rack", "r02"))
    lines = encode_events(evs, "s").decode().splitlines()
    assert [ln.rsplit(" ", 1)[1] for ln in lines] == ["1000", "1001", "1002", "1000"]
