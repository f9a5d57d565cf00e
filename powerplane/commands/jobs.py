"""``powerplane jobs list|show``: the controller's live job table, its caps and what each job loses to them.

The table comes from a running controller: its ``--summary-out`` file (every job), or its
retained state topic on the broker (``--mqtt`` with ``--site``: the jobs that lose the most,
at most 200). Each row says where the job came from (``site`` file, ``slurm``,
``kubernetes``), its priority and weight under the ``[scheduler]`` rules, its nodes, and from
the controller's last plan its mean cap per GPU, its predicted demand and the part of it the
caps hold back.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from models.errors import ConfigError
from powerplane.commands.common import mqtt_address

STATE_WAIT_S = 10.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``jobs`` to the CLI."""
    j = sub.add_parser("jobs", help="the controller's live job table: sources, caps, what jobs lose to caps")
    jsub = j.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")
    for name, help_text in (("list", "every job, one line each"), ("show", "one job, every field")):
        p = jsub.add_parser(name, help=help_text)
        if name == "show":
            p.add_argument("job", help="job id")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--summary", default=None, metavar="FILE", help="a controller's --summary-out file")
        src.add_argument("--mqtt", default=None, metavar="URL",
                         help="read the controller's retained state topic on this broker (with --site)")
        p.add_argument("--mqtt-password-file", default=None, metavar="FILE", help="the MQTT user's password")
        p.add_argument("--site", default=None, help="with --mqtt: the site file (site id, topic prefix)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=cmd_jobs)


def cmd_jobs(args: argparse.Namespace, console: Console) -> int:
    """Print the job table (``list``) or one job (``show``)."""
    doc = _state(args)
    rows: list[dict[str, Any]] = list(doc.get("jobs") or [])
    if args.jobs_command == "show":
        row = next((r for r in rows if r.get("id") == args.job), None)
        if row is None:
            raise ConfigError(args.job, [("", f"no such job in the controller's table ({len(rows)} jobs)")])
        if args.json:
            print(json.dumps(row, indent=2))
            return 0
        tab = Table(title=f"job {escape(args.job)}", show_header=False)
        for k, v in row.items():
            tab.add_row(escape(k), escape(_fmt(k, v)))
        console.print(tab)
        return 0
    if args.json:
        print(json.dumps({"plan_id": doc.get("plan_id"), "jobs_version": doc.get("jobs_version"), "jobs": rows}))
        return 0
    console.print(jobs_table(rows, doc))
    return 0


def jobs_table(rows: list[dict[str, Any]], doc: dict[str, Any]) -> Table:
    """One line per job."""
    total = doc.get("jobs_total", len(rows))
    tab = Table(title=f"jobs ({len(rows)} of {total}; job table version {doc.get('jobs_version', 0)}, "
                      f"plan {doc.get('plan_id') or (doc.get('plan') or {}).get('plan_id', '?')})")
    for col in ("job", "source", "priority", "nodes", "GPUs", "cap/GPU", "demand", "loses to caps", "from"):
        tab.add_column(col, justify="right" if col in ("priority", "GPUs", "cap/GPU", "demand", "loses to caps")
                       else "left")
    for r in rows:
        where = " ".join(f"{k}={r[k]}" for k in ("partition", "qos", "namespace", "priority_class", "user") if r.get(k))
        tab.add_row(escape(str(r.get("id"))), escape(str(r.get("source"))), str(r.get("priority")),
                    escape(str(r.get("nodes") or r.get("n_nodes", ""))), str(r.get("gpus", "")),
                    _fmt("cap_per_gpu_w", r.get("cap_per_gpu_w")), _fmt("demand_w", r.get("demand_w")),
                    _fmt("cut_w", r.get("cut_w")), escape(where))
    return tab


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and key.endswith("_w"):
        return f"{v:,.0f} W" if key == "cap_per_gpu_w" else f"{v / 1e3:,.1f} kW"
    return str(v)


def _state(args: argparse.Namespace) -> dict[str, Any]:
    if args.summary:
        from models.files import read_json

        doc = read_json(args.summary)
        if not isinstance(doc, dict):
            raise ConfigError(args.summary, [("", "not a controller summary (--summary-out) file")])
        return doc
    if not args.site:
        raise ConfigError("--mqtt", [("", "needs --site (the site id and topic prefix)")])
    return _from_broker(args)


def _from_broker(args: argparse.Namespace) -> dict[str, Any]:
    import os
    import threading

    from bus.mqtt import Inbox, MqttLink
    from models.site import load_site

    site = load_site(args.site)
    topic = f"{site.actuation.topic_prefix}/{site.site.name}/controller/state"
    link = MqttLink(mqtt_address(args), f"powerplane-jobs-{os.getpid()}", clean_session=True)
    box = link.subscribe(topic, qos=0, inbox=Inbox(4, 8 << 20))
    got = threading.Event()
    link.start()
    try:
        end = STATE_WAIT_S
        while end > 0 and not got.is_set():
            msgs = box.drain()
            if msgs:
                try:
                    doc = json.loads(msgs[-1][1])
                except ValueError as exc:
                    raise ConfigError(topic, [("", f"the controller's state is not JSON: {exc}")]) from None
                if isinstance(doc, dict):
                    return doc
            got.wait(0.1)
            end -= 0.1
    finally:
        link.stop()
    raise ConfigError(topic, [("", f"no controller state within {STATE_WAIT_S:g} s (is the controller running?)")])
