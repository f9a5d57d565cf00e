"""Plan -> per-node signed cap commands: what to send, and when.

Per node, a command is sent when (vectorised over every node each period):

* any GPU's cap goes **down** (always, at once: the plan counts on it);
* a cap goes up by at least ``raise_deadband_w``, or back to the GPU's ceiling, and the
  node's last command is ``raise_every_s`` old (a raise can wait: running below the plan
  is safe, and a ramp of caps would otherwise cost a message per node per period);
* the last command is ``renew_every_s`` old (renews the lease);
* the node never had one.

Caps are sent rounded **down** to ``quantum_w`` (never above the plan), so a cap that
moves by a watt does not cost a message per node per period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from controllers.actuation.messages import CapCommand, SiteKey, caps_topic
from controllers.plan import CapPlan
from models.clock import NS_PER_S
from models.site import SiteConfig
from models.topology import L_NODE, Topology

F64 = NDArray[np.float64]
Send = Callable[[str, bytes], None]


@dataclass
class PublishStats:
    """What the publisher sent."""

    plans: int = 0
    commands: int = 0
    lowered: int = 0
    raised: int = 0
    renewed: int = 0


class CapPublisher:
    """Decides which nodes get a command each period, signs and sends them."""

    def __init__(self, site: SiteConfig, topo: Topology, key: SiteKey, send: Send) -> None:
        self.site_id = site.site.name
        self.cfg = site.actuation
        self.topo = topo
        self.key = key
        self._send = send
        self.nodes = topo.ids(L_NODE)
        self.first = topo.node_first_gpu.astype(np.intp)
        self.count = topo.node_gpus.astype(np.intp)
        self.topics = [caps_topic(self.cfg.topic_prefix, self.site_id, n) for n in self.nodes]
        n = len(self.nodes)
        self.sent_w = np.full(topo.n_gpus, np.nan)  # per GPU: the cap last sent
        self.sent_ns = np.full(n, -1, np.int64)  # per node: when
        self.seq = np.zeros(n, np.int64)  # per node: seq of the last command
        self.expires_ns = np.zeros(n, np.int64)
        self.lowered_ns = np.full(n, -1, np.int64)  # per node: when a cap last went down
        self.lowered_seq = np.zeros(n, np.int64)
        self._last_seq = 0
        self.stats = PublishStats()
        self.enabled = True

    def quantize(self, caps_w: F64) -> F64:
        """Caps as sent: rounded down to the quantum, never below the GPU's floor or above the plan."""
        q = self.cfg.quantum_w
        t = self.topo
        if q <= 0:
            return caps_w.copy()
        down = np.floor(caps_w / q + 1e-9) * q
        return np.where(caps_w >= t.gpu_max_w, t.gpu_max_w, np.clip(np.maximum(down, t.gpu_min_w), None, caps_w))

    def commands(self, plan: CapPlan, now_ns: int) -> list[tuple[int, CapCommand]]:
        """The (node index, command) pairs to send for ``plan`` at ``now_ns``; updates the send state."""
        t, cfg = self.topo, self.cfg
        caps = self.quantize(plan.caps_w)
        prev = self.sent_w
        never = np.isnan(prev)
        lower = np.where(never, True, caps < prev - 1e-9)
        up = np.where(never, 0.0, caps - prev)
        to_max = (caps >= t.gpu_max_w) & ~never & (prev < t.gpu_max_w)
        first = self.first
        node_lower = np.maximum.reduceat(lower.astype(np.int8), first) > 0
        node_raise = (np.maximum.reduceat(up, first) >= cfg.raise_deadband_w) | \
            (np.maximum.reduceat(to_max.astype(np.int8), first) > 0)
        age = now_ns - self.sent_ns
        node_raise &= age >= int(cfg.raise_every_s * NS_PER_S)
        renew = (self.sent_ns < 0) | (age >= int(cfg.renew_every_s * NS_PER_S))
        send = np.flatnonzero(node_lower | node_raise | renew)
        if send.size == 0:
            return []
        expires = now_ns + int(cfg.lease_s * NS_PER_S)
        names = plan.constraint_names
        out: list[tuple[int, CapCommand]] = []
        for k in send.tolist():
            lo, hi = int(first[k]), int(first[k] + self.count[k])
            self._last_seq = max(self._last_seq + 1, now_ns)
            b = int(plan.bind[lo])
            reason = f"{names[b]} binding" if b >= 0 else "no limit binding"
            cmd = CapCommand(self.site_id, self.nodes[k], self._last_seq, plan.plan_id, now_ns, expires,
                             tuple(caps[lo:hi].tolist()), reason)
            out.append((k, cmd))
            if node_lower[k]:
                self.lowered_ns[k] = now_ns
                self.lowered_seq[k] = cmd.seq
                self.stats.lowered += 1
            elif node_raise[k]:
                self.stats.raised += 1
            else:
                self.stats.renewed += 1
            self.sent_w[lo:hi] = caps[lo:hi]
            self.sent_ns[k] = now_ns
            self.seq[k] = cmd.seq
            self.expires_ns[k] = expires
        return out

    def publish(self, plan: CapPlan, now_ns: int) -> int:
        """Send this period's commands; return how many."""
        self.stats.plans += 1
        if not self.enabled:
            return 0
        cmds = self.commands(plan, now_ns)
        for k, cmd in cmds:
            self._send(self.topics[k], cmd.envelope(self.key))
        self.stats.commands += len(cmds)
        return len(cmds)
