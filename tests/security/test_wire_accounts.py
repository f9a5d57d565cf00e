"""Findings 1-4 on the wire, with the real processes: who may speak for a node, what a status may
carry, where passwords live, and whose session is whose.

One rig for the module: the shipped mosquitto configuration with the drill site's generated
ACL, the twin (on the demo-only anonymous listener), ``powerplane controller --readings``, a
rack agent for r01 and ``powerplane collect --publish`` as collector-0, each logging in with a
password file. Racks r02-r04 have no agent: their accounts are the test's to use. Every drill
reads the controller's ``--summary-out`` (rewritten every second) before and after: plans keep
rising, ``control_errors`` stays 0, and what was refused is counted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controllers.actuation.messages import AgentStatus, status_topic
from models.clock import NS_PER_S
from tests.security.conftest import CliResult
from tests.security.wirerig import (
    NOT_AUTHORIZED,
    SITE,
    Rig,
    Statuses,
    rig_running,
    until,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]
UP_S = 90.0  # deadline for the processes to come up on a busy machine
PLANS_MORE = 3  # "keeps planning": at least this many more plans after the drill


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig_running(tmp_path_factory.mktemp("accounts")) as rig:
        rig.twin()
        ctl = rig.controller(extra=("--readings",))
        rig.agent("r01")
        until(lambda: rig.endpoints.exists(), UP_S, "the twin's endpoints", rig.logs)
        rig.collector()
        statuses = rig.statuses()
        try:
            until(lambda: rig.summary().get("plans", 0) > 0 and ctl.alive, UP_S, "the controller plans", rig.logs)
            until(lambda: (s := statuses.latest("r01")) is not None and s["mode"] == "controlled", UP_S,
                  "r01's agent under control", rig.logs)
            until(lambda: rig.summary().get("readings_in", 0) > 0, UP_S, "the collector's readings arrive", rig.logs)
        finally:
            statuses.close()
        yield rig


@pytest.fixture
def statuses(rig: Rig) -> Iterator[Statuses]:
    s = rig.statuses()
    yield s
    s.close()


def keeps_planning(rig: Rig, before: dict[str, Any]) -> dict[str, Any]:
    """Wait until the controller made PLANS_MORE more plans; it must still be failure-free."""
    until(lambda: rig.summary().get("plans", 0) >= before["plans"] + PLANS_MORE, 30,
          "the controller keeps planning", rig.logs)
    after = rig.summary()
    assert after["control_errors"] == 0 and after["last_error"] == "", after["last_error"]
    assert after["periods"] - after["missed_periods"] >= after["plans"] > before["plans"]
    return after


def rejected(doc: dict[str, Any]) -> dict[str, int]:
    return dict(doc["actuation"]["statuses_rejected"])


def forged_status(rack: str, nodes: Sequence[int], raw: dict[str, str] | None = None, **over: Any) -> bytes:
    """A well-formed status claiming ``nodes`` of ``rack`` are controlled at the lowest cap; ``over``
    replaces fields, ``raw`` splices raw JSON text (literals JSON has no value for) into them."""
    now = time.time_ns()
    n = 4 * len(nodes)
    st = AgentStatus(SITE, rack, list(nodes), now, "controlled", now, 9, 2**39, 1, now + 60 * NS_PER_S,
                     np.full(n, 300.0), np.full(n, 100.0), backend="sim")
    doc = json.loads(st.to_json())
    doc.update(over)
    for k in raw or {}:
        doc[k] = f"@@{k}@@"
    text = json.dumps(doc, separators=(",", ":"))
    for k, v in (raw or {}).items():
        text = text.replace(f'"@@{k}@@"', v)
    return text.encode()


def controller(rig: Rig) -> Any:
    return next(p for p in rig.procs if p.name == "controller")


# ---- finding 1: any account could speak for any node ---------------------------------------------

def test_a_status_forged_from_any_non_agent_account_never_reaches_the_controller(
        rig: Rig, statuses: Statuses) -> None:
    before = rig.summary()
    unknown = before["actuation"]["modes"].get("unknown")
    assert unknown == 6  # r02-r04 have no agent: two nodes each
    topic = status_topic("powerplane", SITE, "r02")
    payload = forged_status("r02", [0, 1])
    verdicts = {}
    # (The controller's own account may not write statuses either -- test_wire_acl -- but logging in
    # as "controller" here would replace the running controller's session: one account, one connection.)
    for account in ("operator", "collector-0"):
        w = rig.wire(account)
        verdicts[account] = w.publish(topic, payload)
        w.close()
    anon = rig.wire(None, anonymous_listener=True)  # the demo-only listener grants nothing under powerplane/
    verdicts["anonymous (demo listener)"] = anon.publish(topic, payload)
    anon.close()
    assert verdicts == dict.fromkeys(verdicts, NOT_AUTHORIZED)  # the broker refused every one
    after = keeps_planning(rig, before)
    assert statuses.history("r02") == []  # the operator reads everything: nothing was ever on the topic
    assert after["actuation"]["modes"].get("unknown") == 6  # r02 is still nobody's: the forgery never arrived
    assert rejected(after) == rejected(before)  # nothing even reached the controller to be refused


def test_a_rack_account_speaking_for_another_racks_nodes_is_refused_and_counted(rig: Rig) -> None:
    before = rig.summary()
    r02 = rig.wire("r02")
    # On r01's topic: the broker refuses it.
    assert r02.publish(status_topic("powerplane", SITE, "r01"), forged_status("r01", [0, 1])) == NOT_AUTHORIZED
    # On its own topic, speaking for r01's nodes, or for a node r02 does not have: the broker lets a
    # rack account write its topic, and the controller binds the status to it.
    for payload in (forged_status("r01", [0, 1]), forged_status("r01", [0])):
        assert r02.publish(status_topic("powerplane", SITE, "r02"), payload) in (0, 16)
    assert r02.publish(status_topic("powerplane", SITE, "r02"), forged_status("r02", [7])) in (0, 16)
    r02.close()
    until(lambda: rejected(rig.summary()).get("wrong_topic", 0) >= rejected(before).get("wrong_topic", 0) + 2, 15,
          "the controller refuses and counts them", rig.logs)
    after = keeps_planning(rig, before)
    got = {k: v - rejected(before).get(k, 0) for k, v in rejected(after).items()}
    assert {k: v for k, v in got.items() if v} == {"wrong_topic": 2, "unknown_node": 1}
    assert after["actuation"]["modes"].get("unknown") == 6 and after["actuation"]["modes"].get("controlled") == 2


# ---- finding 2: one malformed status killed the loop ---------------------------------------------

def hostile_statuses() -> dict[str, tuple[bytes, str]]:
    """Payloads for r03's own topic and the reason each must be counted under ("dropped": too big to
    be parsed at all; the network thread drops it and counts it)."""
    deep = b'{"v": 2, "site": "drill", "rack": "r03", "nodes": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    return {
        "seq 2^63": (forged_status("r03", [0], seq=2**63), "malformed"),
        "ts_ns 2^64": (forged_status("r03", [0], ts_ns=2**64), "malformed"),
        "seq 1e300": (forged_status("r03", [0], seq=1e300), "malformed"),
        "seq Infinity": (forged_status("r03", [0], raw={"seq": "Infinity"}), "malformed"),
        "apply_ms NaN": (forged_status("r03", [0], raw={"apply_ms": "NaN"}), "malformed"),
        "epoch -1": (forged_status("r03", [0], epoch=-1), "malformed"),
        "5000-digit ts_ns": (forged_status("r03", [0], raw={"ts_ns": "9" * 5000}), "malformed"),
        "apply_ms 1e308": (forged_status("r03", [0], apply_ms=1e308), "malformed"),
        "deep nesting": (deep, "malformed"),
        "70,000 nodes": (forged_status("r03", list(range(70_000))), "dropped"),
        "not JSON": (b"\xff\xfe{", "malformed"),
        "a year ahead": (forged_status("r03", [0], ts_ns=time.time_ns() + 365 * 86_400 * NS_PER_S), "timestamp"),
    }


def test_out_of_range_numbers_and_deep_nesting_leave_the_controller_planning(rig: Rig) -> None:
    before = rig.summary()
    cases = hostile_statuses()
    r03 = rig.wire("r03")
    for _name, (payload, _reason) in cases.items():
        assert r03.publish(status_topic("powerplane", SITE, "r03"), payload) in (0, 16)
    r03.close()
    want: dict[str, int] = {}
    for _, reason in cases.values():
        want[reason] = want.get(reason, 0) + 1
    dropped = want.pop("dropped")

    def counted() -> dict[str, int]:
        now = rig.summary()
        out = {k: v - rejected(before).get(k, 0) for k, v in rejected(now).items()}
        return {k: v for k, v in out.items() if v}

    until(lambda: counted() == want, 20, "every hostile status refused and counted by reason",
          lambda: f"{counted()} != {want}\n{rig.logs()}")
    after = keeps_planning(rig, before)
    assert after["actuation"]["statuses_dropped"] - before["actuation"]["statuses_dropped"] == dropped
    assert after["actuation"]["modes"].get("unknown") == 6  # none of them was believed
    assert controller(rig).alive


# ---- finding 3: passwords in argv ------------------------------------------------------------------

def test_no_password_or_key_in_any_process_command_line(rig: Rig) -> None:
    secrets = [*rig.passwords.values(), rig.key_file.read_text()]
    assert {p.name for p in rig.procs} >= {"twin", "controller", "agent-r01", "collector-0"}
    for p in rig.procs:
        assert p.alive, p.tail()
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace")
        environ = Path(f"/proc/{p.pid}/environ").read_bytes().decode(errors="replace")
        log = p.log.read_text(errors="replace")
        for s in secrets:
            assert s not in cmdline, f"{p.name}: a secret in its command line"
            assert s not in environ, f"{p.name}: a secret in its environment"
            assert s not in log, f"{p.name}: a secret in its output"
        if p.name != "twin":  # the twin is on the demo-only anonymous listener
            assert "--mqtt-password-file" in cmdline.split("\0")


def test_a_url_that_carries_a_password_is_refused(rig: Rig, cli: Callable[[Sequence[str]], CliResult]) -> None:
    url = f"mqtt://r01:hunter2hunter2@127.0.0.1:{rig.broker.port}"
    site = str(rig.site_file)
    for argv in (["controller", "--site", site, "--mqtt", url, "--state-dir", str(rig.dir / "no-state")],
                 ["agent", "--site", site, "--backend", "sim", "--rack", "r01", "--mqtt", url],
                 ["collect", "--endpoints", str(rig.endpoints), "--site", site, "--publish", url],
                 ["twin", "--site", site, "--mqtt", url]):
        code, out, err = cli(argv)
        assert code == 2 and "--mqtt-password-file" in err and "hunter2" not in out + err, (argv[0], err)


# ---- finding 4: client ids could be taken over ---------------------------------------------------

def test_a_connection_with_the_controllers_client_id_does_not_take_over_its_session(rig: Rig) -> None:
    before = rig.summary()
    assert before["mqtt"] == {"connected": True, "connects": 1, "disconnects": 0}
    intruders = [rig.wire("operator", client_id="controller", v5=False), rig.wire("operator", client_id="controller"),
                 rig.wire("collector-0", client_id="controller"), rig.wire("r04", client_id="controller")]
    assert all(w.ok for w in intruders)  # each got a session of its own (named after its user)
    after = keeps_planning(rig, before)  # two seconds of summaries at least
    for w in intruders:
        w.close()
    assert after["mqtt"] == {"connected": True, "connects": 1, "disconnects": 0}
    assert "Client controller already connected" not in rig.broker.log.read_text(errors="replace")
    # ... and the controller still hears its agent and sends it commands.
    assert after["actuation"]["statuses"] > before["actuation"]["statuses"]
    assert after["actuation"]["commands"] > before["actuation"]["commands"]
    assert os.path.exists(f"/proc/{controller(rig).pid}")
