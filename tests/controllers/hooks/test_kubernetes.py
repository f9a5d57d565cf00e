"""The Kubernetes adapter: the kubectl lines of dry-run, and apply without the client installed."""

from __future__ import annotations

import importlib.util

import pytest

from controllers.hooks.kubernetes import KubernetesAdapter, k8s_marks
from controllers.hooks.payloads import HookEvent
from models.events import EV_DR_END, EV_LEASE_FALLBACK, EV_MOVE, Event


def move() -> HookEvent:
    ev = Event(1, EV_MOVE, "warning", "controller", "move job-7", "job-7", {"value": 9000.0})
    return HookEvent(ev, {"action": "move", "from_nodes": ["r01/node-001", "r01/node-000"]})


def test_dry_run_prints_kubectl() -> None:
    lines: list[str] = []
    k = KubernetesAdapter(out=lines.append)
    k.handle(move())
    k.handle(HookEvent(Event(2, EV_LEASE_FALLBACK, "warning", "agent", "fallback", "r02/node-005", {"value": 400.0})))
    assert k.marked == {"node-000", "node-001", "node-005"}
    k.handle(HookEvent(Event(3, EV_DR_END, "info", "controller", "DR over", "dr-1")))
    assert lines == [
        "kubectl taint nodes node-000 powerplane.io/power=drain:NoSchedule --overwrite",
        "kubectl label nodes node-000 powerplane.io/power=drain --overwrite",
        "kubectl taint nodes node-001 powerplane.io/power=drain:NoSchedule --overwrite",
        "kubectl label nodes node-001 powerplane.io/power=drain --overwrite",
        "kubectl taint nodes node-005 powerplane.io/power=capped:PreferNoSchedule --overwrite",
        "kubectl label nodes node-005 powerplane.io/power=capped --overwrite",
        "kubectl taint nodes node-000 powerplane.io/power-",
        "kubectl label nodes node-000 powerplane.io/power-",
        "kubectl taint nodes node-001 powerplane.io/power-",
        "kubectl label nodes node-001 powerplane.io/power-",
        "kubectl taint nodes node-005 powerplane.io/power-",
        "kubectl label nodes node-005 powerplane.io/power-",
    ]
    assert k.marked == set() and k.stats.delivered == 6 and k.lines == lines
    assert k8s_marks(HookEvent(Event(1, "cap_changed", "info", "c", "m", "job-1"))) == []


@pytest.mark.skipif(importlib.util.find_spec("kubernetes") is not None, reason="kubernetes client installed")
def test_apply_without_client_says_so_once_then_dry_runs(caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    k = KubernetesAdapter("apply", out=lines.append)
    k.handle(move())
    k.handle(move())
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "not installed" in errors[0].getMessage()
    assert k.mode == "dry-run" and len(lines) == 8 and k.stats.failed == 0
