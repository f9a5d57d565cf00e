"""The Slurm adapter: hostlists, exact argv in dry-run, and a real (fake) scontrol on PATH in apply."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.hooks.payloads import HookEvent
from controllers.hooks.slurm import SlurmAdapter, default_node_name, expand_hostlist, hostlist, slurm_actions
from models.events import EV_CAP_CHANGED, EV_DR_END, EV_MOVE, Event

NODES = [f"r01/node-{i:03d}" for i in range(4)]


def move(action: str, nodes: list[str] = NODES, job: str = "4242") -> HookEvent:
    ev = Event(1, EV_MOVE, "warning", "controller", f"{action} {job}: r01 over its limit", job, {"value": 9000.0})
    return HookEvent(ev, {"action": action, "from_racks": ["r01"], "from_nodes": nodes, "to_racks": ["r03"]})


def dr_end() -> HookEvent:
    return HookEvent(Event(2, EV_DR_END, "info", "controller", "DR over", "dr-1"))


def test_node_name_and_hostlist() -> None:
    assert default_node_name("r01/node-000") == "node-000" and default_node_name("gpu7") == "gpu7"
    assert hostlist(["node-000", "node-001", "node-002", "node-003"]) == "node-[000-003]"
    assert hostlist(["node-007"]) == "node-007"
    assert hostlist(["node-003", "node-000", "node-001", "node-007", "node-001"]) == "node-[000-001,003,007]"
    assert hostlist(["b-1", "a-09", "a-10", "login", "a-9"]) == "a-9,a-[09-10],b-1,login"
    assert hostlist([]) == ""


@given(st.sets(st.tuples(st.sampled_from(["node-", "gpu", "r1n"]), st.integers(0, 300), st.sampled_from([1, 3]))))
def test_hostlist_round_trips(items: set[tuple[str, int, int]]) -> None:
    names = {f"{p}{n:0{w}d}" for p, n, w in items}
    assert sorted(expand_hostlist(hostlist(names))) == sorted(names)


def test_dry_run_argv() -> None:
    lines: list[str] = []
    a = SlurmAdapter(out=lines.append)
    a.handle(move("move"))
    a.handle(move("preempt", NODES[:1], "4243"))
    a.handle(HookEvent(Event(1, EV_CAP_CHANGED, "info", "controller", "cap", "4242", {"value": 500.0})))
    a.handle(dr_end())
    assert a.commands == [
        ["scontrol", "update", "nodename=node-[000-003]", "state=drain",
         "reason=powerplane: move 4242: move 4242: r01 over its limit"],
        ["scontrol", "update", "nodename=node-000", "state=drain",
         "reason=powerplane: preempt 4243: preempt 4243: r01 over its limit"],
        ["scontrol", "requeue", "4243"],
        ["scontrol", "update", "nodename=node-[000-003]", "state=resume"],
    ]
    assert lines[0] == ("scontrol update 'nodename=node-[000-003]' state=drain "
                        "'reason=powerplane: move 4242: move 4242: r01 over its limit'")
    assert lines[2] == "scontrol requeue 4243" and a.drained == set()
    assert a.stats.delivered == 4 and a.stats.failed == 0


def test_racks_map_to_nodes_and_checkpoint_signal() -> None:
    ev = HookEvent(move("preempt").event, {"action": "preempt", "from_racks": ["r02"], "checkpointable": True})
    assert slurm_actions(HookEvent(ev.event, {"action": "preempt"}), preempt_signal="USR1") == [
        ["scontrol", "requeue", "4242"]]  # not checkpointable: requeue even with a signal configured
    argv = slurm_actions(ev, rack_nodes={"r02": ["r02/gpu07", "r02/gpu08"]}, preempt_signal="USR1")
    assert argv == [["scontrol", "update", "nodename=gpu[07-08]", "state=drain",
                     "reason=powerplane: preempt 4242: preempt 4242: r01 over its limit"],
                    ["scancel", "--signal=USR1", "--batch", "4242"]]
    assert slurm_actions(dr_end()) == []  # nothing drained by us: nothing to resume


def fake_tool(tmp_path: Path, name: str, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_apply_runs_scontrol_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "argv.log"
    bin_dir = fake_tool(tmp_path, "scontrol", f'for a in "$@"; do printf "%s|" "$a" >> {log}; done; echo >> {log}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    a = SlurmAdapter("apply")
    a.handle(move("drain"))
    assert a.drained == {"node-000", "node-001", "node-002", "node-003"}
    a.handle(dr_end())
    assert log.read_text().splitlines() == [
        "update|nodename=node-[000-003]|state=drain|reason=powerplane: drain 4242: drain 4242: r01 over its limit|",
        "update|nodename=node-[000-003]|state=resume|",
    ]
    assert a.stats.delivered == 2 and a.stats.failed == 0 and a.drained == set()


def test_apply_failures_are_counted_never_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    bin_dir = fake_tool(tmp_path, "scontrol", 'echo "slurm_update error: Invalid node name" >&2; exit 1\n')
    fake_tool(tmp_path, "slowctl", "exec sleep 30\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    caplog.set_level("DEBUG", logger="powerplane.hooks.slurm")
    a = SlurmAdapter("apply")
    a.handle(move("move"))
    a.handle(move("move"))
    assert a.stats.failed == 2 and "Invalid node name" in a.stats.last_error and a.drained == set()
    assert [r.levelname for r in caplog.records] == ["ERROR", "DEBUG"]  # repeats do not flood the log
    b = SlurmAdapter("apply", scontrol="slowctl", timeout_s=0.2)
    b.handle(move("move"))
    assert b.stats.failed == 1 and "no answer within 0.2 s" in b.stats.last_error
    c = SlurmAdapter("apply", scontrol=str(tmp_path / "missing"))
    c.handle(move("move"))
    assert c.stats.failed == 1 and "FileNotFoundError" in c.stats.last_error
