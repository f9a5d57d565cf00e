"""Plan -> per-rack signed cap commands: what to send, and when.

Per rack, a command is sent when (vectorised over every GPU each period):

* any GPU's cap goes **down** (always, at once: the plan counts on it);
* a cap goes up by at least ``raise_deadband_w``, or back to the GPU's ceiling, and the
  rack's last command is ``raise_every_s`` old (a raise can wait: running below the plan
  is safe, and a ramp of caps would otherwise cost a message per rack per period);
* the last command is ``renew_every_s`` old (renews the lease);
* the rack never had one.

A command always carries every GPU of the rack (so a retained command is the rack's whole
state for an agent that restarts). Caps are sent rounded **down** to ``quantum_w`` (never
above the plan). Messages per period scale with racks: at most one per rack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from controllers.actuation.layout import Layouts
from controllers.actuation.messages import CapCommand, SiteKey, caps_topic
from controllers.plan import BIND_RAMP, RAMP, CapPlan
from models.clock import NS_PER_S
from models.site import SiteConfig
from models.topology import Topology

F64 = NDArray[np.float64]
Send = Callable[[str, bytes], None]


@dataclass
class PublishStats:
    """What the publisher sent (racks per reason; a rack counts once per command)."""

    plans: int = 0
    commands: int = 0
    lowered: int = 0
    raised: int = 0
    renewed: int = 0
    bytes: int = 0
    withheld: int = 0  # commands not sent because authority ended while the period ran


class CapPublisher:
    """Decides which racks get a command each period, signs and sends them."""

    def __init__(self, site: SiteConfig, topo: Topology, key: SiteKey, send: Send, *, epoch: int = 0,
                 layouts: Layouts | None = None, gate: Callable[[int], bool] | None = None) -> None:
        self.site_id = site.site.name
        self.cfg = site.actuation
        self.topo = topo
        self.key = key
        self._send = send
        self.epoch = int(epoch)
        self._seq = 0
        self.layouts = layouts if layouts is not None else Layouts(topo)
        self.racks = list(self.layouts.order)
        self.rack_first = topo.rack_first_gpu.astype(np.intp)
        self.first = topo.node_first_gpu.astype(np.intp)  # per server node: its first GPU
        self.count = topo.node_gpus.astype(np.intp)
        self.node_rack = np.repeat(np.arange(len(self.racks)), topo.rack_nodes)
        self.topics = [caps_topic(self.cfg.topic_prefix, self.site_id, r) for r in self.racks]
        n_nodes = int(self.first.shape[0])
        self.sent_w = np.full(topo.n_gpus, np.nan)  # per GPU: the cap last sent
        self.sent_ns = np.full(len(self.racks), -1, np.int64)  # per rack: when
        self.expires_ns = np.zeros(len(self.racks), np.int64)
        self.rack_order = np.zeros(len(self.racks), np.int64)  # per rack: (epoch, seq) of its last command
        self.lowered_ns = np.full(n_nodes, -1, np.int64)  # per node: when a cap last went down
        self.lowered_order = np.zeros(n_nodes, np.int64)  # ... by which command
        self.rack_first_node = np.concatenate([[0], np.cumsum(topo.rack_nodes)[:-1]]).astype(np.intp)
        self.stats = PublishStats()
        self.enabled = True
        # Asked before every command with its epoch: whether this controller still holds that
        # epoch's authority (controllers.authority); None: a single controller, always.
        self.gate = gate

    def take_over(self, epoch: int) -> None:
        """Publish under a new authority ``epoch`` from now on: seq restarts at 1 and every rack gets a
        command in the next period (as if none had been sent)."""
        self.epoch = int(epoch)
        self._seq = 0
        self.sent_w[:] = np.nan
        self.sent_ns[:] = -1
        self.expires_ns[:] = 0
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
        """The (rack index, command) pairs to send for ``plan`` at ``now_ns``; updates the send state."""
        t, cfg = self.topo, self.cfg
        caps = self.quantize(plan.caps_w)
        prev = self.sent_w
        never = np.isnan(prev)
        lower = never | (caps < prev - 1e-9)
        up = np.where(never, 0.0, caps - prev)
        to_max = (caps >= t.gpu_max_w) & ~never & (prev < t.gpu_max_w)
        rf = self.rack_first
        rack_lower = np.maximum.reduceat(lower.astype(np.int8), rf) > 0
        rack_raise = (np.maximum.reduceat(up, rf) >= cfg.raise_deadband_w) | \
            (np.maximum.reduceat(to_max.astype(np.int8), rf) > 0)
        age = now_ns - self.sent_ns
        rack_raise &= age >= int(cfg.raise_every_s * NS_PER_S)
        renew = (self.sent_ns < 0) | (age >= int(cfg.renew_every_s * NS_PER_S))
        send = np.flatnonzero(rack_lower | rack_raise | renew)
        if send.size == 0:
            return []
        node_lower = np.maximum.reduceat(lower.astype(np.int8), self.first) > 0
        expires = now_ns + int(cfg.lease_s * NS_PER_S)
        node_bind = plan.bind[self.first]
        why, local = self._reasons(plan.constraint_names, node_bind, send)
        seqs = self._seq + 1 + np.arange(send.size, dtype=np.int64)
        self._seq += int(send.size)
        orders = (np.int64(self.epoch) << np.int64(40)) | seqs
        out: list[tuple[int, CapCommand]] = []
        lays = self.layouts.racks
        for r, seq in zip(send.tolist(), seqs.tolist(), strict=True):
            lay = lays[self.racks[r]]
            g0 = lay.gpu0
            out.append((r, CapCommand(self.site_id, lay.rack, lay.digest, self.epoch, seq, plan.plan_id, now_ns,
                                      expires, caps[g0:g0 + lay.n_gpus], local[r], why[r])))
        # The send state, for every rack sent at once.
        rack_sent = np.zeros(len(self.racks), bool)
        rack_sent[send] = True
        rack_o = np.zeros(len(self.racks), np.int64)
        rack_o[send] = orders
        low = np.flatnonzero(node_lower & rack_sent[self.node_rack])
        self.lowered_ns[low] = now_ns
        self.lowered_order[low] = rack_o[self.node_rack[low]]
        lowered = rack_lower[send]
        self.stats.lowered += int(lowered.sum())
        self.stats.raised += int((~lowered & rack_raise[send]).sum())
        self.stats.renewed += int((~lowered & ~rack_raise[send]).sum())
        if send.size == len(self.racks):
            self.sent_w[:] = caps
        else:
            gpu_sent = np.repeat(rack_sent, t.rack_gpus)
            self.sent_w[gpu_sent] = caps[gpu_sent]
        self.sent_ns[send] = now_ns
        self.rack_order[send] = orders
        self.expires_ns[send] = expires
        return out

    def _reasons(self, names: tuple[str, ...], node_bind: NDArray[np.int32],
                 send: NDArray[np.intp]) -> tuple[list[tuple[str, ...]], list[NDArray[np.int16]]]:
        """Per rack (of ``send``): the names of what binds its nodes (by constraint index, then ``ramp``)
        and each node's index into them (-1 none), every rack at once.

        Bindings come in runs of nodes, so the distinct (rack, constraint) pairs are found among
        the runs, not by sorting every node.
        """
        n_r, n = len(self.racks), node_bind.shape[0]
        edge = np.empty(n, bool)
        edge[0] = True
        np.not_equal(node_bind[1:], node_bind[:-1], out=edge[1:])
        edge[self.rack_first_node] = True
        start = np.flatnonzero(edge)
        val, rack = node_bind[start], self.node_rack[start]
        bound = val >= 0
        key = rack[bound].astype(np.int64) * len(names) + val[bound]
        pairs = np.unique(key)  # (rack, constraint), sorted
        pair_rack = pairs // len(names)
        pair_c = (pairs % len(names)).tolist()
        first = np.searchsorted(pair_rack, np.arange(n_r + 1))
        run_local = np.full(start.size, -1, np.int64)
        run_local[bound] = np.searchsorted(pairs, key) - first[rack[bound]]
        ramp = val == BIND_RAMP
        run_local[ramp] = (first[1:] - first[:-1])[rack[ramp]]  # after the rack's constraints
        has_ramp = np.zeros(n_r, bool)
        has_ramp[rack[ramp]] = True
        local = np.repeat(run_local, np.diff(start, append=n)).astype(np.int16)
        local.flags.writeable = False
        why: list[tuple[str, ...]] = [()] * n_r
        locals_: list[NDArray[np.int16]] = [local[:0]] * n_r
        fs, rf, ramps = first.tolist(), self.rack_first_node.tolist(), has_ramp.tolist()
        nodes = self.topo.rack_nodes.tolist()
        for r in send.tolist():
            w = tuple(names[c] for c in pair_c[fs[r]:fs[r + 1]])
            why[r] = (*w, RAMP) if ramps[r] else w
            locals_[r] = local[rf[r]:rf[r] + nodes[r]]
        return why, locals_

    def publish(self, plan: CapPlan, now_ns: int) -> int:
        """Send this period's commands; return how many."""
        self.stats.plans += 1
        if not self.enabled:
            return 0
        cmds = self.commands(plan, now_ns)
        sent = 0
        for r, cmd in cmds:
            if self.gate is not None and not self.gate(self.epoch):
                # Authority ended while this period ran: not one more command under this epoch.
                self.stats.withheld += len(cmds) - sent
                self.enabled = False
                break
            msg = cmd.envelope(self.key)
            self.stats.bytes += len(msg)
            self._send(self.topics[r], msg)
            sent += 1
        self.stats.commands += sent
        return sent
