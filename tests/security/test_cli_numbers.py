"""Finding 14: every numeric flag is finite and in range, refused as a usage error (exit 2) before anything runs.

``plan --at nan`` and ``advise --at nan`` waited forever for ``t >= nan``; ``demo --speed
nan`` was an internal error; ``plan --at -5`` was silently 0.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.site import MAX_RACKS, load_site
from powerplane.argtypes import finite_number
from tests.conftest import DEMO_SITE
from tests.security.conftest import CliResult, no_traceback

Cli = Callable[[Sequence[str]], CliResult]
SITE = str(DEMO_SITE)


@pytest.mark.parametrize(("argv", "message"), [
    (["plan", "--site", SITE, "--at", "nan"], "argument --at: must be a finite number, got 'nan'"),
    (["plan", "--site", SITE, "--at", "inf"], "argument --at: must be a finite number"),
    (["plan", "--site", SITE, "--at", "-5"], "argument --at: must be >= 0, got '-5'"),
    (["plan", "--site", SITE, "--at", "1e999"], "argument --at: must be a finite number"),
    (["plan", "--site", SITE, "--seed", "-1"], "argument --seed: must be >= 0"),
    (["advise", "--site", SITE, "--gpus", "8", "--power-per-gpu", "500", "--at", "nan"],
     "argument --at: must be a finite number"),
    (["advise", "--site", SITE, "--gpus", "8", "--power-per-gpu", "nan"], "argument --power-per-gpu: must be a finite"),
    (["advise", "--site", SITE, "--gpus", "1.5", "--power-per-gpu", "500"], "argument --gpus: not an integer"),
    (["advise", "--site", SITE, "--gpus", "8", "--power-per-gpu", "500", "--priority", "99"],
     "argument --priority: must be <= 15"),
    (["demo", "--speed", "nan"], "argument --speed: must be a finite number, got 'nan'"),
    (["demo", "--speed", "0"], "argument --speed: must be > 0"),
    (["demo", "--duration", "inf"], "argument --duration: must be a finite number"),
    (["demo", "--collect-interval", "-1"], "argument --collect-interval: must be > 0"),
    (["demo", "--agent-procs", "0"], "argument --agent-procs: must be >= 1"),
    (["demo", "--outage", "nan:30"], "argument --outage: AT must be in"),
    (["twin", "--site", SITE, "--speed=-inf"], "argument --speed: must be a finite number"),
    (["twin", "--site", SITE, "--snmp-port", "70000"], "argument --snmp-port: must be <= 65535"),
    (["site", "generate", "--racks", "0", "--out", "x.toml"], "argument --racks: must be >= 1"),
    (["site", "generate", "--racks", "1e3", "--out", "x.toml"], "argument --racks: not an integer"),
    (["site", "generate", "--racks", str(MAX_RACKS + 1), "--out", "x.toml"], f"must be <= {MAX_RACKS}"),
    (["collect", "--endpoints", "x.json", "--duration", "nan"], "argument --duration: must be a finite number"),
    (["collect", "--endpoints", "x.json", "--interval", "0"], "argument --interval: must be > 0"),
    (["hooks", "receive", "--secret-file", "s", "--port", "-1"], "argument --port: must be >= 0"),
    (["hooks", "test", "--url", "http://x/", "--secret-file", "s", "--tries", "0"], "argument --tries: must be >= 1"),
    (["hooks", "test", "--url", "http://x/", "--secret-file", "s", "--timeout", "nan"], "argument --timeout: must be"),
])
def test_bad_numbers_are_usage_errors(cli: Cli, argv: list[str], message: str) -> None:
    code, out, err = cli(argv)
    assert code == 2, (out, err)
    assert message in err and no_traceback(err), err


def test_plan_at_zero_and_a_good_value_still_run(cli: Cli) -> None:
    code, out, _err = cli(["plan", "--site", SITE, "--at", "0", "--json"])
    assert code == 0 and '"t_s": 0.0' in out


@pytest.mark.parametrize("racks", [1700, MAX_RACKS])
def test_the_largest_sites_generate_and_load(cli: Cli, tmp_path: Path, racks: int) -> None:
    out = tmp_path / "big.toml"
    code, _stdout, err = cli(["site", "generate", "--racks", str(racks), "--out", str(out)])
    assert code == 0, err  # site generate loads what it writes: within every site limit
    assert len(load_site(out).racks) == racks


@given(st.text(max_size=30))
def test_finite_number_returns_a_bounded_finite_value_or_a_usage_error(text: str) -> None:
    for kind, parse in ((float, finite_number(float, ge=-5, le=1e6)), (int, finite_number(int, gt=0, lt=100))):
        try:
            v = parse(text)
        except argparse.ArgumentTypeError as exc:
            assert str(exc)  # a message argparse prints after "argument --x:"
            continue
        assert type(v) is kind and math.isfinite(v)
        assert (-5 <= v <= 1e6) if kind is float else (0 < v < 100)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_finite_number_on_any_float_text(x: float) -> None:
    parse = finite_number(float, gt=0)
    try:
        v = parse(repr(x))
    except argparse.ArgumentTypeError:
        assert not (math.isfinite(x) and x > 0)
    else:
        assert v == x and math.isfinite(v) and v > 0
