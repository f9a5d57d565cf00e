"""The Slurm adapter: move recommendations and DR end as ``scontrol`` actions.

=================  ===========================================================================
event              argv (no shell; ``<nodes>`` is a Slurm hostlist such as ``node-[000-003]``)
=================  ===========================================================================
move               ``scontrol update nodename=<nodes> state=drain reason=powerplane: ...``
drain              the same
preempt            the same, then ``scontrol requeue <job>``
                   (checkpointable + ``preempt_signal``: ``scancel --signal=<SIG> --batch <job>``)
DR end             ``scontrol update nodename=<nodes we drained> state=resume``
=================  ===========================================================================

A *move* only drains: the running job is not killed, it finishes (or checkpoints at its
own boundary) and Slurm places the next work elsewhere. A *preempt* requeues, which
kills and resubmits the job (it must be requeue-able, Slurm's default for batch jobs);
a job the recommendation marks ``checkpointable`` is better served, when the site sets
``preempt_signal="USR1"``, by ``scancel --signal=USR1 --batch``: the batch script traps
it, checkpoints and requeues itself, the way Slurm's own preemption ``GraceTime`` works.
It is not the default because a script that does not trap the signal simply dies. Only nodes this adapter
drained are resumed, never nodes an operator drained.

Dry-run (the default) logs and records exactly the argv it would run; ``apply`` runs it
with a timeout. Failures are logged (first at ERROR, repeats at DEBUG) and counted; they
never raise into the control loop.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

from controllers.hooks.payloads import HookEvent, move_action, move_from_nodes
from controllers.hooks.webhook import SinkStats
from models.events import EV_DR_END, EV_MOVE

log = logging.getLogger("powerplane.hooks.slurm")

Mode = Literal["dry-run", "apply"]
REASON_MAX_CHARS = 120
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def default_node_name(node_id: str) -> str:
    """Our node id to a scheduler node name: the part after the last ``/`` (``r01/node-000`` -> ``node-000``)."""
    return node_id.rsplit("/", 1)[-1]


def hostlist(names: Iterable[str]) -> str:
    """Compress node names into Slurm hostlist syntax: ``node-000..003, node-007`` -> ``node-[000-003,007]``.

    Names are grouped by prefix and digit count (so zero padding is kept exactly);
    names without a trailing number are listed as they are.
    """
    groups: dict[tuple[str, int], set[int]] = {}
    plain: set[str] = set()
    for name in names:
        m = _NUMBERED.match(name)
        if m is None:
            plain.add(name)
        else:
            groups.setdefault((m.group(1), len(m.group(2))), set()).add(int(m.group(2)))
    parts: list[str] = []
    for (prefix, width), nums in sorted(groups.items()):
        ranges: list[str] = []
        ordered = sorted(nums)
        start = prev = ordered[0]
        for n in [*ordered[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            ranges.append(f"{start:0{width}d}" if start == prev else f"{start:0{width}d}-{prev:0{width}d}")
            if n is not None:
                start = prev = n
        if len(ranges) == 1 and "-" not in ranges[0]:
            parts.append(f"{prefix}{ranges[0]}")
        else:
            parts.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(parts + sorted(plain))


def slurm_actions(hev: HookEvent, drained: Iterable[str] = (), *,
                  node_name: Callable[[str], str] = default_node_name,
                  rack_nodes: Mapping[str, Sequence[str]] | None = None, scontrol: str = "scontrol",
                  scancel: str = "scancel", preempt_signal: str | None = None) -> list[list[str]]:
    """The argv lists one hook event turns into (``drained``: Slurm names we drained before)."""
    ev = hev.event
    if ev.kind == EV_DR_END:
        names = sorted(set(drained))
        return [[scontrol, "update", f"nodename={hostlist(names)}", "state=resume"]] if names else []
    if ev.kind != EV_MOVE:
        return []
    action = move_action(hev)
    names = sorted({node_name(n) for n in move_from_nodes(hev, rack_nodes)})
    job = ev.entity or ""
    out: list[list[str]] = []
    if names:
        reason = f"powerplane: {action} {job}: {ev.message}"[:REASON_MAX_CHARS]
        out.append([scontrol, "update", f"nodename={hostlist(names)}", "state=drain", f"reason={reason}"])
    if action == "preempt" and job:
        if preempt_signal and hev.detail.get("checkpointable"):
            out.append([scancel, f"--signal={preempt_signal}", "--batch", job])
        else:
            out.append([scontrol, "requeue", job])
    return out


class SlurmAdapter:
    """Runs (``apply``) or records and logs (``dry-run``) the Slurm actions of hook events."""

    def __init__(self, mode: Mode = "dry-run", *, node_name: Callable[[str], str] = default_node_name,
                 rack_nodes: Mapping[str, Sequence[str]] | None = None, scontrol: str = "scontrol",
                 scancel: str = "scancel", preempt_signal: str | None = None, timeout_s: float = 10.0,
                 out: Callable[[str], None] | None = None) -> None:
        self.mode = mode
        self.node_name = node_name
        self.rack_nodes = rack_nodes
        self.scontrol = scontrol
        self.scancel = scancel
        self.preempt_signal = preempt_signal
        self.timeout_s = timeout_s
        self.out = out
        self.drained: set[str] = set()
        self.commands: list[list[str]] = []  # every argv run or, in dry-run, that would have run
        self.stats = SinkStats()
        self._failing = False

    def actions(self, hev: HookEvent) -> list[list[str]]:
        """The argv lists for ``hev`` given what this adapter drained so far."""
        return slurm_actions(hev, self.drained, node_name=self.node_name, rack_nodes=self.rack_nodes,
                             scontrol=self.scontrol, scancel=self.scancel, preempt_signal=self.preempt_signal)

    def handle(self, hev: HookEvent) -> None:
        """Act on one hook event; never raises."""
        for argv in self.actions(hev):
            if self._run(argv):
                self._track(argv)

    def _track(self, argv: list[str]) -> None:
        if len(argv) > 3 and argv[1] == "update" and argv[2].startswith("nodename="):
            names = set(expand_hostlist(argv[2].removeprefix("nodename=")))
            if argv[3] == "state=drain":
                self.drained |= names
            elif argv[3] == "state=resume":
                self.drained -= names

    def _run(self, argv: list[str]) -> bool:
        self.commands.append(argv)
        line = shlex.join(argv)
        if self.mode != "apply":
            log.info("hooks: slurm dry-run: %s", line)
            if self.out is not None:
                self.out(line)
            self.stats.delivered += 1
            return True
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s, check=False)
            err = "" if r.returncode == 0 else f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[:200]}"
        except subprocess.TimeoutExpired:
            err = f"no answer within {self.timeout_s:g} s"
        except OSError as exc:
            err = f"{type(exc).__name__}: {exc.strerror or exc}"
        if not err:
            self.stats.delivered += 1
            if self._failing:
                self._failing = False
                log.info("hooks: slurm: %s works again", argv[0])
            return True
        self.stats.failed += 1
        self.stats.last_error = f"{line}: {err}"
        log.log(logging.DEBUG if self._failing else logging.ERROR, "hooks: slurm: %s: %s", line, err)
        self._failing = True
        return False


def expand_hostlist(text: str) -> list[str]:
    """Inverse of ``hostlist`` for the syntax it produces (``p[a-b,c]`` groups and plain names)."""
    out: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?", text):
        prefix, body = m.group(1), m.group(2)
        if body is None:
            out.append(prefix)
            continue
        for part in body.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            out += [f"{prefix}{n:0{width}d}" for n in range(int(lo), int(hi or lo) + 1)]
    return out
