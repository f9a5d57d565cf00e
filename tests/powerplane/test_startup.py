"""Every process builds the whole command line: building it must not import the heavy stacks.

An agent or a collector that imports pandas, numba and the dashboards SDK to parse its flags
takes tens of seconds to start on a loaded machine (seen: a collector still importing pandas
25 s after it was started, its devices lost).
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("pandas", "numba", "matplotlib", "grafana_foundation_sdk", "scipy", "influxdb_client", "pysnmp", "pymodbus")


def test_building_the_parser_imports_no_heavy_stack() -> None:
    code = ("import sys; from powerplane.cli import build_parser; build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported while building the parser: {r.stdout.strip()}"
