"""The fate of every request: Retry-After, 413 splits, 4xx rejects, auth errors, spool bound.

A fault-injecting proxy sits in front of a real VictoriaMetrics (see ``faultproxy``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.events import Event
from models.readings import SeriesRegistry
from models.retry import parse_retry_after
from store.influx import InfluxSink
from testbed.realservers import VictoriaMetrics
from tests.store.faultproxy import FaultProxy, Rule
from tests.store.writer_proc import SERIES, T0_MS, batch_of

pytestmark = pytest.mark.servers


@pytest.fixture
def proxy_for(victoriametrics: VictoriaMetrics) -> Iterator[type[FaultProxy]]:
    made: list[FaultProxy] = []

    class Bound(FaultProxy):
        def __init__(self, rule: Rule) -> None:
            super().__init__(victoriametrics.url, rule)
            made.append(self)

    yield Bound
    for p in made:
        p.close()


def _stored(vm: VictoriaMetrics) -> list[tuple[str, int, float]]:
    return sorted((s["metric"]["id"], t, v) for s in vm.export('{__name__="power_power_w"}')
                  for t, v in zip(s["timestamps"], s["values"], strict=True))


def _expected(ks: range) -> list[tuple[str, int, float]]:
    return sorted((f"n{i}", T0_MS + k, k * 1000.0 + i) for k in ks for i in range(SERIES))


def _sink(url: str, tmp_path: Path, **kw: object) -> InfluxSink:
    return InfluxSink(url, "tok", "org", "db", spool_dir=tmp_path / "spool", flush_interval_s=0.02,
                      max_backoff_s=0.2, **kw)  # type: ignore[arg-type]


def test_retry_after_is_honoured(proxy_for: type[FaultProxy], victoriametrics: VictoriaMetrics,
                                 tmp_path: Path) -> None:
    def rule(n: int, lines: list[bytes]) -> tuple[int, dict[str, str], bytes] | None:
        if n == 1:
            return 429, {"Retry-After": "1"}, b'{"code":"too many requests"}'
        if n == 2:
            return 503, {"Retry-After": "1"}, b"overloaded"
        return None

    proxy = proxy_for(rule)
    reg = SeriesRegistry()
    sink = _sink(proxy.url, tmp_path)
    sink.write(batch_of(0, reg))
    sink.flush(30)
    st = sink.stats()
    sink.close()
    assert [s.status for s in proxy.seen] == [429, 503, 204]
    # The server asked for a second between attempts; a lower bound cannot flake.
    assert proxy.seen[1].t_s - proxy.seen[0].t_s >= 0.99
    assert proxy.seen[2].t_s - proxy.seen[1].t_s >= 0.99
    assert (st.written_points, st.rejected_points, st.spooled_points) == (SERIES, 0, 0)
    assert _stored(victoriametrics) == _expected(range(1))


def test_too_large_requests_are_split_until_they_fit(proxy_for: type[FaultProxy], victoriametrics: VictoriaMetrics,
                                                     tmp_path: Path) -> None:
    proxy = proxy_for(lambda n, lines: (413, {}, b"request too large") if len(lines) > 40 else None)
    reg = SeriesRegistry()
    sink = _sink(proxy.url, tmp_path, batch_size=1000)
    for k in range(6):
        sink.write(batch_of(k, reg))
    sink.flush(30)
    st = sink.stats()
    sink.close()
    assert (st.written_points, st.rejected_points, st.spooled_points) == (6 * SERIES, 0, 0)
    assert all(len(s.lines) <= 40 for s in proxy.seen if s.status == 204)
    assert _stored(victoriametrics) == _expected(range(6))


def test_a_bad_request_is_rejected_with_its_line_and_never_retried(proxy_for: type[FaultProxy],
                                                                   victoriametrics: VictoriaMetrics,
                                                                   tmp_path: Path) -> None:
    def rule(n: int, lines: list[bytes]) -> tuple[int, dict[str, str], bytes] | None:
        if n == 1:
            return 400, {}, b'{"code":"invalid","message":"failed to parse line 3: invalid field format"}'
        return None

    proxy = proxy_for(rule)
    events: list[Event] = []
    reg = SeriesRegistry()
    sink = _sink(proxy.url, tmp_path, on_event=events.append)
    sink.write(batch_of(0, reg))
    sink.flush(30)
    sink.write(batch_of(1, reg))
    sink.flush(30)
    st = sink.stats()
    sink.close()
    assert [s.status for s in proxy.seen] == [400, 204]
    assert (st.written_points, st.rejected_points, st.spooled_points) == (SERIES, SERIES, 0)
    assert st.last_error is not None and st.last_error.endswith(f"(line: {proxy.seen[0].lines[2].decode()})")
    assert [e.kind for e in events] == ["store_rejected"]
    assert _stored(victoriametrics) == _expected(range(1, 2))


def test_an_authorization_error_keeps_the_data_until_it_is_fixed(proxy_for: type[FaultProxy],
                                                                 victoriametrics: VictoriaMetrics,
                                                                 tmp_path: Path) -> None:
    proxy = proxy_for(lambda n, lines: (401, {}, b'{"code":"unauthorized"}') if n <= 3 else None)
    reg = SeriesRegistry()
    sink = _sink(proxy.url, tmp_path)
    sink.write(batch_of(0, reg))
    sink.flush(30)
    st = sink.stats()
    sink.close()
    assert [s.status for s in proxy.seen] == [401, 401, 401, 204]
    assert (st.written_points, st.rejected_points) == (SERIES, 0)
    assert _stored(victoriametrics) == _expected(range(1))


def test_the_spool_bound_drops_counts_and_alerts(proxy_for: type[FaultProxy], tmp_path: Path) -> None:
    proxy = proxy_for(lambda n, lines: (503, {}, b"down"))
    events: list[Event] = []
    reg = SeriesRegistry()
    one = len(batch_of(0, reg).ts_ns)
    sink = _sink(proxy.url, tmp_path, spool_max_bytes=9000, on_event=events.append)
    for k in range(10):
        sink.write(batch_of(k, reg))
    st = sink.stats()
    health = sink.health_batch(123, "demo").to_frame()
    sink.close()
    assert st.spooled_points + st.dropped_points == 10 * one
    assert st.dropped_points > 0 and st.written_points == 0
    assert st.last_error is not None and "full" in st.last_error
    assert {e.kind for e in events} == {"spool_full"}
    assert sum(e.fields["points"] for e in events) == st.dropped_points
    assert health.set_index("metric")["value"].astype(float).to_dict() == {
        "store.written_points": 0.0, "store.spooled_points": float(st.spooled_points),
        "store.rejected_points": 0.0, "store.dropped_points": float(st.dropped_points)}


def test_retry_after_forms() -> None:
    assert parse_retry_after("7", 0.0) == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=1445412470.0) == 10.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None
