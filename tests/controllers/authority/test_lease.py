"""The local deadline of an authority lease, with plain numbers: it counts from when a request was sent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controllers.authority import FixedAuthority, LocalLease


def test_authority_ends_before_the_server_can_expire_the_lease() -> None:
    lease = LocalLease(drift=0.02, margin_s=0.05)
    assert lease.current(0.0) is None
    lease.granted(7, sent_s=100.0, ttl_s=3.0)
    assert lease.current(100.0) == 7
    assert lease.current(102.88) == 7
    assert lease.current(102.89) is None  # 100 + 3 * 0.98 - 0.05: before the server's 103 at the earliest
    lease.renewed(sent_s=102.0, ttl_s=3.0)
    assert lease.current(104.5) == 7
    lease.renewed(sent_s=101.0, ttl_s=3.0)  # an older keep-alive answered late: the deadline never moves back
    assert lease.current(104.5) == 7
    lease.lost()
    assert lease.current(102.5) is None and lease.epoch == 0


@given(st.floats(0, 1e6), st.integers(1, 60), st.lists(st.floats(0, 30), max_size=10))
def test_the_local_deadline_is_never_after_the_servers(sent: float, ttl: int, later: list[float]) -> None:
    # The server starts (or restarts) its TTL when it receives a request, never before it was sent.
    lease = LocalLease()
    lease.granted(1, sent, float(ttl))
    server_end = sent + ttl
    t = sent
    for dt in later:
        t += dt
        if lease.current(t) is None:
            break
        lease.renewed(t, float(ttl))
        server_end = max(server_end, t + ttl)
    assert lease.deadline_s < server_end


def test_a_single_controller_always_holds_its_epoch() -> None:
    a = FixedAuthority(4)
    assert a.current() == 4 and a.status().role == "authority" and a.status().epoch == 4
