"""The Kubernetes adapter: taint and label nodes so the scheduler places work elsewhere.

=================  ============================================================================
event              effect on each node (``kubectl`` equivalent printed in dry-run)
=================  ============================================================================
move/drain/preempt ``kubectl taint nodes N powerplane.io/power=drain:NoSchedule --overwrite``
                   ``kubectl label nodes N powerplane.io/power=drain --overwrite``
lease_fallback     ``kubectl taint nodes N powerplane.io/power=capped:PreferNoSchedule --overwrite``
                   ``kubectl label nodes N powerplane.io/power=capped --overwrite``
DR end             ``kubectl taint nodes N powerplane.io/power-`` and
                   ``kubectl label nodes N powerplane.io/power-`` for every node we marked
=================  ============================================================================

``NoSchedule`` keeps running pods (the job is not killed, as with Slurm's drain);
evicting is left to the workload's operator. ``apply`` talks to the API server through
the ``kubernetes`` client, imported only then; if it is not installed the adapter says so
once and carries on in dry-run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from controllers.hooks.payloads import HookEvent, move_from_nodes
from controllers.hooks.slurm import default_node_name
from controllers.hooks.webhook import SinkStats
from models.events import EV_DR_END, EV_LEASE_FALLBACK, EV_MOVE

log = logging.getLogger("powerplane.hooks.kubernetes")

KEY = "powerplane.io/power"
Mode = Literal["dry-run", "apply"]


@dataclass(frozen=True, slots=True)
class NodeMark:
    """Set (``value`` = drain|capped) or clear (``value`` None) our taint and label on one node."""

    node: str
    value: str | None
    effect: str = "NoSchedule"

    def kubectl(self) -> list[str]:
        """The equivalent ``kubectl`` command lines."""
        if self.value is None:
            return [f"kubectl taint nodes {self.node} {KEY}-", f"kubectl label nodes {self.node} {KEY}-"]
        return [f"kubectl taint nodes {self.node} {KEY}={self.value}:{self.effect} --overwrite",
                f"kubectl label nodes {self.node} {KEY}={self.value} --overwrite"]


def k8s_marks(hev: HookEvent, marked: Sequence[str] = (), *, node_name: Callable[[str], str] = default_node_name,
              rack_nodes: Mapping[str, Sequence[str]] | None = None) -> list[NodeMark]:
    """The node marks one hook event turns into (``marked``: nodes we marked before)."""
    ev = hev.event
    if ev.kind == EV_MOVE:
        return [NodeMark(n, "drain") for n in sorted({node_name(x) for x in move_from_nodes(hev, rack_nodes)})]
    if ev.kind == EV_LEASE_FALLBACK and ev.entity:
        return [NodeMark(node_name(ev.entity), "capped", "PreferNoSchedule")]
    if ev.kind == EV_DR_END:
        return [NodeMark(n, None) for n in sorted(set(marked))]
    return []


def _patched_taints(taints: Sequence[Any], mark: NodeMark, taint_cls: Any) -> list[Any]:
    kept = [t for t in taints or () if t.key != KEY]
    if mark.value is not None:
        kept.append(taint_cls(key=KEY, value=mark.value, effect=mark.effect))
    return kept


class KubernetesAdapter:
    """Marks nodes (``apply``) or prints the ``kubectl`` lines that would (``dry-run``)."""

    def __init__(self, mode: Mode = "dry-run", *, node_name: Callable[[str], str] = default_node_name,
                 rack_nodes: Mapping[str, Sequence[str]] | None = None,
                 out: Callable[[str], None] | None = None, api: Any = None) -> None:
        self.mode = mode
        self.node_name = node_name
        self.rack_nodes = rack_nodes
        self.out = out
        self.marked: set[str] = set()
        self.lines: list[str] = []  # every kubectl line applied or, in dry-run, that would have been
        self.stats = SinkStats()
        self._api = api
        self._failing = False

    def _client(self) -> Any:
        if self._api is not None or self.mode != "apply":
            return self._api
        try:
            from kubernetes import client, config  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            log.error("hooks: kubernetes = \"apply\" but the kubernetes client is not installed "
                      "(pip install kubernetes); printing kubectl commands instead")
            self.mode = "dry-run"
            return None
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self._api = client.CoreV1Api()
        return self._api

    def handle(self, hev: HookEvent) -> None:
        """Act on one hook event; never raises."""
        for mark in k8s_marks(hev, sorted(self.marked), node_name=self.node_name, rack_nodes=self.rack_nodes):
            if self._apply(mark):
                if mark.value is None:
                    self.marked.discard(mark.node)
                else:
                    self.marked.add(mark.node)

    def _apply(self, mark: NodeMark) -> bool:
        lines = mark.kubectl()
        self.lines += lines
        try:
            api = self._client()
            if api is None:
                for line in lines:
                    log.info("hooks: kubernetes dry-run: %s", line)
                    if self.out is not None:
                        self.out(line)
            else:
                from kubernetes import client  # type: ignore[import-not-found, unused-ignore]

                node = api.read_node(mark.node)
                taints = _patched_taints(node.spec.taints, mark, client.V1Taint)
                api.patch_node(mark.node, {"metadata": {"labels": {KEY: mark.value}}, "spec": {"taints": taints}})
        except Exception as exc:  # any API failure is counted, never raised into the loop
            self.stats.failed += 1
            self.stats.last_error = f"{mark.node}: {type(exc).__name__}: {exc}"
            log.log(logging.DEBUG if self._failing else logging.ERROR, "hooks: kubernetes: %s", self.stats.last_error)
            self._failing = True
            return False
        self._failing = False
        self.stats.delivered += 1
        return True
