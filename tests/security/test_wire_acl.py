"""Findings 1 and 4 at the broker: who may publish and subscribe what, and whose session is whose.

A real mosquitto runs deploy/mosquitto/mosquitto.conf with the ACL ``powerplane acl``
generates for the drill site (rack and node agents) and a hashed password file. MQTT 5
clients see the broker's verdict in every PUBACK and SUBACK: 135 is "not authorized".
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.security.wirerig import NOT_AUTHORIZED, PREFIX, SITE, Rig, Wire, rig_running, until

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]
ACCEPTED = (0, 16)  # success, or "no matching subscribers": either way the broker took it


@pytest.fixture(scope="module")
def rack_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig_running(tmp_path_factory.mktemp("acl-rack")) as rig:
        yield rig


@pytest.fixture(scope="module")
def node_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig_running(tmp_path_factory.mktemp("acl-node"), agents="node") as rig:
        yield rig


def verdicts(w: Wire, topics: list[str]) -> dict[str, str]:
    out = {}
    for t in topics:
        rc = w.publish(t, b"{}")
        out[t] = "ok" if rc in ACCEPTED else "refused" if rc == NOT_AUTHORIZED else f"rc {rc}"
    w.close()
    return out


TOPICS = {
    "caps": f"{PREFIX}/caps/r01",
    "status": f"{PREFIX}/status/r01",
    "other status": f"{PREFIX}/status/r02",
    "node status": f"{PREFIX}/status/r01@node-000",
    "own readings": f"{PREFIX}/readings/collector-0",
    "other readings": f"{PREFIX}/readings/collector-1",
    "events": f"{PREFIX}/events/move_recommendation",
    "state": f"{PREFIX}/controller/state",
    "grid": f"grid/{SITE}/limit",
    "twin set": f"twin/{SITE}/gpu/set",
}
# account -> the topics (keys of TOPICS) the broker lets it publish; everything else is refused.
MAY_PUBLISH = {
    "controller": {"caps", "events", "state"},
    "collector-0": {"own readings"},
    "operator": set(),
    "r01": {"status", "twin set"},  # twin set: the drill ACL is generated with --twin (the sim backend)
    None: {"grid"},  # anonymous, on the demo-only listener: the twin's signals, nothing under powerplane/
}


@pytest.mark.parametrize("account", list(MAY_PUBLISH), ids=lambda a: a or "anonymous")
def test_each_account_publishes_only_what_its_block_grants(rack_rig: Rig, account: str | None) -> None:
    w = rack_rig.wire(account, anonymous_listener=account is None)
    got = verdicts(w, list(TOPICS.values()))
    want = {TOPICS[k]: "ok" if k in MAY_PUBLISH[account] else "refused" for k in TOPICS}
    assert got == want


def test_no_anonymous_client_on_the_authenticated_listener(rack_rig: Rig) -> None:
    w = rack_rig.wire(None)
    assert not w.ok and w.connect_rc is not None and w.connect_rc.value == NOT_AUTHORIZED
    w.client.loop_stop()
    wrong = Wire(rack_rig.broker.port, "controller", "not-its-password")
    assert not wrong.ok
    wrong.client.loop_stop()


def test_messages_reach_only_what_an_account_may_read(rack_rig: Rig) -> None:
    """mosquitto 2.0 grants any subscription and checks every delivery against the ACL: however wide
    an agent or a collector subscribes, it receives only what its block lets it read."""
    r01 = rack_rig.wire("r01")
    col = rack_rig.wire("collector-0")
    op = rack_rig.wire("operator")
    for t in (f"{PREFIX}/caps/r01", f"{PREFIX}/caps/r02", f"{PREFIX}/caps/+", f"{PREFIX}/status/+", "#"):
        r01.subscribe(t)
        col.subscribe(t)
    op.subscribe("#")
    ctl, r02 = rack_rig.wire("controller"), rack_rig.wire("r02")
    assert ctl.publish(f"{PREFIX}/caps/r02", b"r02's") in ACCEPTED
    assert r02.publish(f"{PREFIX}/status/r02", b"r02 status") in ACCEPTED
    assert ctl.publish(f"{PREFIX}/caps/r01", b"r01's") in ACCEPTED  # last: when r01 has it, it had the rest
    until(lambda: bool(r01.received(f"{PREFIX}/caps/r01")), 10, "r01 gets its own command")
    until(lambda: len({t for t, _ in op.messages}) >= 3, 10, "the operator sees everything")
    assert {t for t, _ in r01.messages} == {f"{PREFIX}/caps/r01"}
    assert col.messages == []
    for w in (r01, col, op, ctl, r02):
        w.close()


def test_node_accounts_speak_only_for_their_node(node_rig: Rig) -> None:
    assert "r01" not in node_rig.passwords  # node mode: no rack accounts
    n0 = node_rig.wire("r01@node-000")
    for t in (f"{PREFIX}/caps/r01", f"{PREFIX}/caps/r02"):
        n0.subscribe(t)
    ctl = node_rig.wire("controller")
    ctl.publish(f"{PREFIX}/caps/r02", b"r02's")
    ctl.publish(f"{PREFIX}/caps/r01", b"r01's")  # its rack's command carries its caps
    until(lambda: bool(n0.received(f"{PREFIX}/caps/r01")), 10, "the node gets its rack's command")
    assert {t for t, _ in n0.messages} == {f"{PREFIX}/caps/r01"}
    ctl.close()
    got = verdicts(n0, [f"{PREFIX}/status/r01@node-000", f"{PREFIX}/status/r01@node-001", f"{PREFIX}/status/r01",
                        f"{PREFIX}/caps/r01"])
    assert got == {f"{PREFIX}/status/r01@node-000": "ok", f"{PREFIX}/status/r01@node-001": "refused",
                   f"{PREFIX}/status/r01": "refused", f"{PREFIX}/caps/r01": "refused"}


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_no_account_takes_over_another_accounts_session(rack_rig: Rig, v5: bool) -> None:
    """Finding 4: use_username_as_clientid makes the client id the user name, so connecting with
    another account's client id opens one's own session and leaves theirs alone."""
    # (victim, intruder account): every intruder connects with the victim's client id. The controller's
    # own credentials cannot take over an agent either (a second "controller" login would replace
    # the controller's own session: one account, one connection).
    for victim, intruder in (("controller", "operator"), ("controller", "collector-0"), ("controller", "r01"),
                             ("r02", "operator"), ("r02", "collector-0"), ("r02", "controller")):
        v = rack_rig.wire(victim, client_id=victim, v5=False)  # as our processes connect
        w = rack_rig.wire(intruder, client_id=victim, v5=v5)
        assert w.ok
        time.sleep(0.3)  # a takeover closes the old session at once; give the broker time to have done so
        assert v.disconnects == 0 and w.disconnects == 0, f"{intruder} took over {victim}'s session"
        w.close()
        v.close()
    log = rack_rig.broker.log.read_text(errors="replace")
    assert "already connected, closing old connection" not in log
