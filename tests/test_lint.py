"""Static checks run with the suite, so CI enforces them: ruff, and mypy in strict mode."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ["models", "powerplane", "collectors", "controllers", "dashboards", "bus", "store", "twin"]


def test_ruff() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
