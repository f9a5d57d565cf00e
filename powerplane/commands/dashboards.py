"""``powerplane dashboards build|provision``: generate the committed files, or push them to Grafana."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from models.errors import ConfigError, PowerplaneError


def _require_extra() -> None:
    """Fail with an instruction, not a traceback, when the ``dashboards`` extra is missing."""
    import importlib.util

    missing = [m for m in ("grafana_foundation_sdk", "grafana_client", "yaml") if importlib.util.find_spec(m) is None]
    if missing:
        raise PowerplaneError(f"missing {', '.join(missing)}: pip install 'powerplane[dashboards]'")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dashboards`` command to the ``powerplane`` parser."""
    p = sub.add_parser("dashboards", help="Grafana dashboards and alert rules")
    dsub = p.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")
    b = dsub.add_parser("build", help="regenerate dashboards/json/*.json and the alert rules (byte-identical)")
    b.add_argument("--root", default=None, metavar="DIR", help="repository root to write under (default: this one)")
    b.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    b.set_defaults(handler=cmd_build)
    v = dsub.add_parser("provision", help="create/update folder, datasource and dashboards in a running Grafana")
    v.add_argument("--grafana-url", required=True, metavar="URL", help="e.g. http://localhost:3000")
    v.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"),
                   help="service-account token (default: $GRAFANA_TOKEN)")
    v.add_argument("--user", default=None, help="basic-auth user instead of a token")
    v.add_argument("--password", default=os.environ.get("GRAFANA_PASSWORD"), help="(default: $GRAFANA_PASSWORD)")
    v.add_argument("--influx-url", default="http://influxdb:8086", metavar="URL",
                   help="InfluxDB URL as Grafana reaches it (default http://influxdb:8086)")
    v.add_argument("--database", default="powerplane", help="InfluxQL database (v2: DBRP-mapped bucket)")
    v.add_argument("--influx-token", default=os.environ.get("INFLUX_TOKEN"),
                   help="InfluxDB 2.x token (default: $INFLUX_TOKEN)")
    v.add_argument("--influx-user", default=None, help="InfluxDB 1.x user")
    v.add_argument("--influx-password", default=os.environ.get("INFLUX_PASSWORD"), help="(default: $INFLUX_PASSWORD)")
    v.add_argument("--folder", default="powerplane", help="folder title and uid")
    v.add_argument("--force-secrets", action="store_true", help="rewrite the datasource secrets even if set")
    v.set_defaults(handler=cmd_provision)


def cmd_build(args: argparse.Namespace, console: Console) -> int:
    """Regenerate (or check) the committed dashboards JSON and alert rules."""
    _require_extra()
    from dashboards.build import ROOT, stale, write

    root = Path(args.root) if args.root else ROOT
    if not root.is_dir():
        raise ConfigError(root, [("", "not a directory")])
    if args.check:
        old = stale(root)
        for rel in old:
            console.print(f"stale: {rel}", highlight=False, markup=False)
        if not old:
            console.print("dashboards: up to date")
        return 1 if old else 0
    changed = write(root)
    for rel in changed:
        console.print(f"wrote {rel}", highlight=False, markup=False)
    console.print(f"dashboards: {len(changed)} file(s) changed", highlight=False)
    return 0


def cmd_provision(args: argparse.Namespace, console: Console) -> int:
    """Provision folder, datasource and dashboards through Grafana's API."""
    _require_extra()
    from dashboards.boards import BOARDS
    from dashboards.build import dashboard_json
    from dashboards.provision import InfluxSource, connect, provision

    if not args.token and not args.user:
        raise ConfigError("--token", [("", "give --token (or $GRAFANA_TOKEN), or --user/--password")])
    api = connect(args.grafana_url, args.token, user=args.user, password=args.password)
    source = InfluxSource(args.influx_url, args.database, user=args.influx_user, password=args.influx_password,
                          token=args.influx_token)
    report = provision(api, source, [dashboard_json(uid) for uid, _ in BOARDS], folder_uid=args.folder,
                       folder_title=args.folder, force_secrets=args.force_secrets)
    console.print(f"folder {args.folder}: {report.folder}", highlight=False, markup=False)
    console.print(f"datasource: {report.datasource}", highlight=False, markup=False)
    for uid, outcome in report.dashboards.items():
        console.print(f"dashboard {uid}: {outcome}", highlight=False, markup=False)
    return 0
