"""Render the dashboards and alert rules to the files we commit, and tell when they are stale.

Output is deterministic (sorted keys, fixed indentation, trailing newline), so
``powerplane dashboards build`` regenerates the committed files byte for byte and a test
can fail when someone edits a dashboard in Python and forgets to rebuild.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import alerts
from dashboards.boards import BOARDS

ROOT = Path(__file__).resolve().parent.parent
JSON_DIR = Path("dashboards/json")
ALERTS_FILE = Path("deploy/grafana/provisioning/alerting/powerplane.yaml")


def dashboard_json(uid: str) -> dict[str, Any]:
    """One dashboard as the plain JSON object Grafana stores."""
    for u, build in BOARDS:
        if u == uid:
            board = build()
            for i, panel in enumerate(board.panels or [], start=1):
                panel.id_val = i  # stable ids: panel links and "view panel" URLs survive a rebuild
            data: dict[str, Any] = json.loads(json.dumps(board, cls=JSONEncoder))
            return data
    raise KeyError(f"no dashboard {uid!r} (known: {', '.join(u for u, _ in BOARDS)})")


def render_json(data: dict[str, Any]) -> str:
    """Stable text of a JSON document."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def artifacts() -> dict[Path, str]:
    """Every generated file (path relative to the repository root) and its text."""
    out = {JSON_DIR / f"{uid}.json": render_json(dashboard_json(uid)) for uid, _ in BOARDS}
    out[ALERTS_FILE] = alerts.render()
    return out


def stale(root: Path = ROOT) -> list[Path]:
    """Generated files under ``root`` that are missing or differ from what the code builds."""
    out = []
    for rel, text in artifacts().items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(rel)
    return out


def write(root: Path = ROOT) -> list[Path]:
    """Write every generated file under ``root``; return those that changed."""
    changed = []
    for rel, text in artifacts().items():
        path = root / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        changed.append(rel)
    return changed


def load_committed(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """The committed dashboards, by uid."""
    out = {}
    for uid, _ in BOARDS:
        out[uid] = json.loads((root / JSON_DIR / f"{uid}.json").read_text(encoding="utf-8"))
    return out
