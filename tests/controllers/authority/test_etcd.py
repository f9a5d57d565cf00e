"""Authority through a real etcd: exactly one holder, epochs raised once per change, a resign hands over
at once, a crash after the TTL, and a holder cut off from etcd stops before anyone else starts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import etcd3gw
import pytest

from controllers.authority.etcd import EtcdAuthority, parse_endpoints
from models.errors import ConfigError
from testbed.realservers import Etcd
from testbed.tcpproxy import CuttableProxy

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]
TTL_S = 2
SITE = "demo-hall"


def wait(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {timeout_s:g} s", pytrace=False)
        time.sleep(0.02)


@pytest.fixture
def make(etcd: Etcd) -> Iterator[Callable[..., EtcdAuthority]]:
    made: list[EtcdAuthority] = []

    def _make(holder: str, port: int | None = None, **kw: object) -> EtcdAuthority:
        a = EtcdAuthority([("http", "127.0.0.1", port or etcd.port)], SITE, holder, ttl_s=TTL_S, **kw)  # type: ignore[arg-type]
        a.start()
        made.append(a)
        return a

    yield _make
    for a in made:
        a.stop(resign=False)


def test_endpoints() -> None:
    assert parse_endpoints("etcd://a:1,b,https://c:3") == [("http", "a", 1), ("http", "b", 2379), ("https", "c", 3)]
    for bad in ("", "ftp://a", "etcd://user:pw@a:1", "etcd://a:x"):
        with pytest.raises(ConfigError, match="--authority"):
            parse_endpoints(bad)


def test_exactly_one_holds_and_a_resign_hands_over_at_once(make: Callable[..., EtcdAuthority], etcd: Etcd) -> None:
    a, b = make("ctl-a"), make("ctl-b")
    wait(lambda: a.current() is not None or b.current() is not None, 10, "someone holds authority")
    time.sleep(3 * a.poll_s)
    held = [x for x in (a, b) if x.current() is not None]
    assert len(held) == 1 and held[0].current() == 1
    first, other = (a, b) if held[0] is a else (b, a)
    wait(lambda: other.status().holder == first.holder, 5, "the standby sees the holder")
    # Renewals keep it: several TTLs later the same holder, the same epoch.
    time.sleep(2.5 * TTL_S)
    assert first.current() == 1 and other.current() is None
    first.stop(resign=True)
    assert first.current() is None
    t0 = time.monotonic()
    wait(lambda: other.current() is not None, TTL_S, "the standby takes over before the old lease could expire")
    assert other.current() == 2 and time.monotonic() - t0 < TTL_S
    client = etcd3gw.client(host="127.0.0.1", port=etcd.port)
    assert client.get(f"/powerplane/{SITE}/authority/epoch") == [b"2"]
    st = other.status()
    assert (st.role, st.epoch, st.acquisitions) == ("authority", 2, 1)
    assert [t.kind for t in first.status().transitions] == ["acquired", "lost"]


def test_a_crashed_holder_is_replaced_after_its_lease_with_a_higher_epoch(make: Callable[..., EtcdAuthority]) -> None:
    a = make("ctl-a", floor=lambda: 41)  # agents reported epoch 41: never hand out one they would refuse
    wait(lambda: a.current() is not None, 10, "a holds")
    assert a.current() == 42
    b = make("ctl-b")
    time.sleep(3 * b.poll_s)
    assert b.current() is None
    a.stop(resign=False)  # a crash: no revoke, the lease runs out at etcd
    wait(lambda: b.current() is not None, 3 * TTL_S, "b takes over after the lease")
    assert b.current() == 43


def test_a_holder_cut_off_from_etcd_stops_before_the_other_starts(make: Callable[..., EtcdAuthority],
                                                                 etcd: Etcd) -> None:
    proxy = CuttableProxy(etcd.port)
    try:
        a = make("ctl-a", port=proxy.port)
        wait(lambda: a.current() is not None, 10, "a holds through the proxy")
        b = make("ctl-b")
        time.sleep(3 * b.poll_s)
        assert a.current() == 1 and b.current() is None
        proxy.cut()
        gone: list[float] = []
        started: list[float] = []

        def both() -> bool:
            now = time.monotonic()
            if not gone and a.current() is None:
                gone.append(now)
            if not started and b.current() is not None:
                started.append(now)
            return bool(gone and started)

        wait(both, 4 * TTL_S, "a steps down and b takes over")
        # Same host, same monotonic clock: a stopped publishing strictly before b could start.
        assert gone[0] < started[0]
        assert b.current() == 2
        lost = a.status().transitions[-1]
        assert lost.kind == "lost" and lost.epoch == 1
        # Healed, a stays a standby: b holds the key.
        proxy.heal()
        time.sleep(TTL_S)
        assert a.current() is None and b.current() == 2
        wait(lambda: a.status().holder == "ctl-b", 5, "a sees b")
    finally:
        proxy.close()
