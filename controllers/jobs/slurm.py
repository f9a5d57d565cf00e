"""Slurm jobs: the prolog/epilog spool (``deploy/slurm``) and its document, read at one typed edge.

``PrologSlurmctld`` (``deploy/slurm/prolog.sh``) writes ``<spool>/<job id>.json`` atomically
(temp file, then ``mv``) when Slurm allocates a job; ``EpilogSlurmctld`` removes it. The same
document may be POSTed to the controller's jobs endpoint (``controllers.jobs.http``)::

    {"v": 2, "event": "start", "job": "4242", "nodes": "r01-node-[000-003]",
     "partition": "gpu", "qos": "high", "account": "llm", "user": "alice",
     "priority": 3, "checkpointable": true, "ts": 1777636800}

``v`` 1 (without ``qos``/``account``/``checkpointable``) is still read. ``priority`` and
``checkpointable`` are optional and are what the job asked for (``--comment
powerplane:priority=N``): the site's ``[scheduler]`` rules decide, and a job may only lower
its own priority. ``nodes`` is a Slurm hostlist, expanded with python-hostlist. An end is
``{"v": 2, "event": "end", "job": "4242"}`` (HTTP) or the file's removal (spool).

``SpoolReader.scan`` lists the spool and reads only files that are new or changed since the
last scan (by size, mtime and inode), so a spool of thousands of jobs costs one directory
listing per scan; files that are gone are ends. Every file is bounded (``MAX_DOC_BYTES``) and
decoded by one msgspec model; what fails is a counted ``Refused``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from controllers.jobs.table import JOB_ID_RE, End, Refused, Start, Update
from models.clock import NS_PER_S
from models.jobs import JobFacts

MAX_DOC_BYTES = 64 * 1024
MAX_SPOOL_FILES = 100_000  # a spool larger than this is read only this far (and says so)
SOURCE = "slurm"
_Word = Annotated[str, Meta(max_length=128)]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\.json$")


class JobDoc(msgspec.Struct, forbid_unknown_fields=False):
    """One prolog/epilog document (unknown fields are ignored: a newer prolog may add some)."""

    v: Annotated[int, Meta(ge=1, le=2)]
    event: Literal["start", "end"]
    job: Annotated[str, Meta(min_length=1, max_length=128)]
    nodes: Annotated[str, Meta(max_length=MAX_DOC_BYTES)] = ""
    partition: _Word = ""
    qos: _Word = ""
    account: _Word = ""
    user: _Word = ""
    priority: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    checkpointable: bool | None = None
    ts: Annotated[int, Meta(ge=0, le=2**33)] = 0


_DEC = msgspec.json.Decoder(JobDoc)


def expand_nodes(text: str) -> list[str]:
    """A Slurm hostlist (``r01-node-[000-003],r02-node-007``) as node names (python-hostlist); ValueError
    when it is not one (or names more than python-hostlist's bound of 100,000 nodes)."""
    import hostlist

    try:
        return list(hostlist.expand_hostlist(text))
    except hostlist.BadHostlist as exc:
        raise ValueError(f"bad hostlist {text[:80]!r}: {exc}") from None


def decode(payload: bytes, source: str = SOURCE) -> Update:
    """One document (a spool file, an HTTP body) as an update, or why it was refused. Never raises."""
    if len(payload) > MAX_DOC_BYTES:
        return Refused(source, "malformed", f"{len(payload)} bytes (at most {MAX_DOC_BYTES})")
    try:
        d = _DEC.decode(payload)
    except msgspec.ValidationError as exc:
        return Refused(source, "malformed", str(exc))
    except msgspec.DecodeError as exc:
        return Refused(source, "malformed", f"not JSON: {exc}")
    if not JOB_ID_RE.match(d.job):
        return Refused(source, "malformed", f"job id {d.job[:80]!r}")
    if d.event == "end":
        return End(source, d.job)
    try:
        nodes = expand_nodes(d.nodes)
    except ValueError as exc:
        return Refused(source, "malformed", f"job {d.job}: {exc}")
    if not nodes:
        return Refused(source, "malformed", f"job {d.job}: no nodes")
    prio = None if d.priority is None else min(d.priority, 1_000)
    return Start(JobFacts(d.job, source, tuple(nodes), partition=d.partition, qos=d.qos, account=d.account,
                          user=d.user, priority=prio, checkpointable=d.checkpointable, ts_ns=d.ts * NS_PER_S))


class SpoolReader:
    """Reads a prolog/epilog spool directory incrementally (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen: dict[str, tuple[int, int, int]] = {}  # file name -> (size, mtime_ns, inode)
        self._live: dict[str, str] = {}  # file name -> job id it started
        self.files = 0
        self.scans = 0
        self.errors = 0
        self.last_error = ""

    def scan(self) -> list[Update]:
        """What changed since the last scan: starts (new or rewritten files), ends (removed files),
        refusals. Never raises: an unreadable spool is an error (``errors``), and nothing ends."""
        self.scans += 1
        out: list[Update] = []
        present: dict[str, tuple[int, int, int]] = {}
        try:
            with os.scandir(self.path) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(".") or not name.endswith(".json"):
                        continue  # the prolog's temp files, editors' leftovers
                    if len(present) >= MAX_SPOOL_FILES:
                        out.append(Refused(SOURCE, "too_many_jobs", f"spool holds more than {MAX_SPOOL_FILES} files"))
                        break
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed between listing and stat: an end, seen as missing
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    present[name] = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError as exc:
            self.errors += 1
            self.last_error = f"{self.path}: {exc.strerror or exc}"
            return out
        self.files = len(present)
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]
            job = self._live.pop(name, None)
            if job is not None:
                out.append(End(SOURCE, job))
        for name, sig in present.items():
            if self._seen.get(name) == sig:
                continue
            self._seen[name] = sig
            out.append(self._read(name, sig[0]))
        return out

    def _read(self, name: str, size: int) -> Update:
        if not _NAME_RE.match(name):
            return Refused(SOURCE, "malformed", f"spool file name {name[:80]!r}")
        if size > MAX_DOC_BYTES:
            return Refused(SOURCE, "malformed", f"{name}: {size} bytes (at most {MAX_DOC_BYTES})")
        try:
            with open(self.path / name, "rb") as f:
                payload = f.read(MAX_DOC_BYTES + 1)
        except OSError as exc:
            return Refused(SOURCE, "malformed", f"{name}: {exc.strerror or exc}")
        u = decode(payload)
        stem = name[: -len(".json")]
        if isinstance(u, Start) and u.facts.id != stem:
            return Refused(SOURCE, "malformed", f"{name} holds job {u.facts.id[:80]!r}")
        if isinstance(u, End):
            return Refused(SOURCE, "malformed", f"{name}: an end event in the spool (the epilog removes the file)")
        if isinstance(u, Start):
            self._live[name] = u.facts.id
        return u
