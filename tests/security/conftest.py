"""Helpers of the security drills: run the real CLI in-process and as a process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence

import pytest

from powerplane.cli import main
from tests.conftest import ROOT

CliResult = tuple[int, str, str]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], CliResult]:
    """Run ``powerplane ARGV`` in this process: ``(exit status, stdout, stderr)``; usage errors included."""

    def run(argv: Sequence[str]) -> CliResult:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse refuses a bad flag with exit status 2
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_process(argv: Sequence[str], env: dict[str, str] | None = None, timeout_s: float = 120) -> CliResult:
    """Run ``python -m powerplane ARGV`` as its own process (what an operator sees, tracebacks included)."""
    r = subprocess.run([sys.executable, "-m", "powerplane", *argv], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=timeout_s)
    return r.returncode, r.stdout, r.stderr


def no_traceback(text: str) -> bool:
    """Whether ``text`` holds no Python traceback and no rich markup error."""
    return "Traceback" not in text and "MarkupError" not in text and "internal error" not in text
