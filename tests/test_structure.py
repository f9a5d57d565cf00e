"""The shape of the house: powerplane/ is the only composition root, models/ holds no I/O, and
every command the README shows parses through the real CLI."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOMAIN = ("bus", "models", "collectors", "controllers", "dashboards", "store", "twin")
IO_LIBRARIES = ("pymodbus", "pysnmp", "paho", "sqlite3", "requests", "urllib3", "influxdb_client", "bus")


def imports(path: Path) -> set[str]:
    """Top-level package names ``path`` imports (at any depth of the file)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", DOMAIN)
def test_no_domain_package_imports_the_application(package: str) -> None:
    bad = [str(f.relative_to(ROOT)) for f in files(package) if "powerplane" in imports(f)]
    assert bad == [], f"{package} imports powerplane/ (the composition root): {bad}"


def test_models_imports_no_io_library() -> None:
    bad = {str(f.relative_to(ROOT)): sorted(imports(f) & set(IO_LIBRARIES)) for f in files("models")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_twin_and_the_store_stay_out_of_the_domain() -> None:
    for package in ("models", "collectors", "controllers"):
        bad = [str(f.relative_to(ROOT)) for f in files(package) if imports(f) & {"twin", "store", "dashboards"}]
        assert bad == [], f"{package} imports an application-side package: {bad}"


def readme_commands() -> list[tuple[str, ...]]:
    """Every ``powerplane COMMAND [SUBCOMMAND]`` the README shows."""
    seen: list[tuple[str, ...]] = []
    for line in (ROOT / "README.md").read_text().splitlines():
        for m in re.finditer(r"(?:^|[\s`(])(?:\.venv/bin/)?powerplane\s+([a-z][a-z-]*)(?:\s+([a-z][a-z-]*))?", line):
            key = tuple(x for x in m.groups() if x)
            if key not in seen:
                seen.append(key)
    return seen


def test_every_readme_command_parses_through_the_real_cli() -> None:
    from powerplane.cli import build_parser

    parser = build_parser()
    commands = readme_commands()
    assert len(commands) > 15
    bad = []
    for cmd in commands:
        for argv in ([*cmd, "--help"], [cmd[0], "--help"]):
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                if exc.code == 0:
                    break
        else:
            bad.append(" ".join(cmd))
    assert bad == [], f"README commands the CLI rejects: {bad}"


def test_help_runs_for_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "powerplane", "--help"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0 and "controller" in r.stdout and "agent" in r.stdout and "hooks" in r.stdout
