"""Finding 7: the seq could lock nodes out. A controller's seq was its wall clock, not persisted:
after one forward clock step every later command was ``stale_seq``.

Now commands are ordered by (epoch, seq): the epoch is persisted in ``--state-dir`` and raised at
every start, the seq counts within it, and the agent persists the last (epoch, seq) it applied.
The drill steps the wall clock of a whole site (controller and agent, ``--clock``) an hour
forward, lets the agent obey a controller there, then crashes the controller, restarts both
with the clock back where it was, and checks the agent obeys the new controller at once
whatever the issue times say: no lockout, no ``stale_seq`` streak.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.security.wirerig import Rig, Statuses, clock_anchor, rig_running, until

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]
UP_S = 90.0
STEP_S = 3600.0


@pytest.fixture
def rig(tmp_path: Any) -> Iterator[Rig]:
    with rig_running(tmp_path) as rig:
        rig.twin()
        yield rig


def test_a_controller_restarted_after_a_clock_step_forward_and_back_is_obeyed(rig: Rig) -> None:
    statuses: Statuses = rig.statuses()
    try:
        ahead = clock_anchor(STEP_S)  # the site's clock, an hour ahead
        c1 = rig.controller("controller-1", clock=ahead)
        a1 = rig.agent("r01", name="agent-1", clock=ahead)
        until(lambda: (s := statuses.latest("r01")) is not None and s["mode"] == "controlled", UP_S,
              "the agent obeys the controller an hour ahead", rig.logs)
        until(lambda: rig.summary("controller-1").get("plans", 0) > 0, 30, "controller-1's summary")
        first = rig.summary("controller-1")
        c1.stop(signal.SIGKILL)  # a crash: no goodbye
        a1.stop()
        # The clock is stepped back an hour; both come back on the same state directories.
        n_before = len(statuses.history("r01"))
        rig.controller("controller-2")
        rig.agent("r01", name="agent-2")
        epoch2: list[int] = []

        def obeys_the_new_controller() -> bool:
            epoch2[:] = [rig.summary("controller-2").get("epoch", 0)]
            return any(s["mode"] == "controlled" and s["epoch"] == epoch2[0] > 0
                       for s in statuses.history("r01")[n_before:])

        until(obeys_the_new_controller, UP_S, "the agent obeys the restarted controller, clock stepped back",
              lambda: f"{statuses.latest('r01')}\n{rig.logs()}")
        assert epoch2[0] == first["epoch"] + 1  # persisted and raised: it orders after the old one
        until(lambda: rig.summary("controller-2").get("plans", 0) >= 3, 30, "the controller keeps planning")
        last = statuses.latest("r01")
        assert last is not None and last["mode"] == "controlled" and last["epoch"] == epoch2[0]
        # The agent keeps what it applied across restarts: (epoch, seq) of the new controller.
        kept = json.loads((rig.dir / "agent-r01-state" / "r01.json").read_text())
        assert kept["epoch"] == epoch2[0]
        # At most the old controller's retained command, once, as the agent came back: never a streak.
        assert last["rejected"].get("stale_seq", 0) <= 1 and last["stale_streak"] == 0, last["rejected"]
        assert "future" not in last["rejected"] and "stale commands in a row" not in \
            next(p for p in rig.procs if p.name == "agent-2").log.read_text()
        assert rig.summary("controller-2")["control_errors"] == 0
    finally:
        statuses.close()
