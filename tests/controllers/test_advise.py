"""Placement advisor: ranking on the tiny site, and ``powerplane advise`` on the demo hall."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controllers.advise import advise, by_hall
from models.errors import ConfigError
from powerplane.cli import main
from tests.conftest import DEMO_SITE
from tests.controllers.test_moves import job, make_plan, small_site


def test_ranks_by_the_tightest_constraint_after_placement() -> None:
    # a1 is busy (16 x 400 W) on row ra (12 kW): a2 would leave the row 2 kW; b1's row is empty.
    topo = small_site([job("busy", 3, ["a1"])], row_kw=(12.0, 100.0))
    ranked = advise(topo, make_plan(topo), gpus=8, power_per_gpu_w=400.0)
    assert [(p.where, p.scope, p.fits) for p in ranked] == [("b1", "rack", True), ("a2", "rack", True)]
    b1, a2 = ranked
    # b1: rack 16 x 50 idle + 8 x 350 = 3.6 kW of 10 kW.
    assert b1.binding == "rack b1" and b1.remaining_w == pytest.approx(6400.0)
    assert b1.min_share == pytest.approx(0.64)
    # a2: row 6.4 + 0.8 + 2.8 = 10 kW of 12 kW.
    assert a2.binding == "row ra" and a2.remaining_w == pytest.approx(2000.0)
    assert b1.it_w == pytest.approx(2800.0) and "row ra with 2.0 kW" in a2.reason
    assert by_hall(ranked) == {"h1": b1}
    assert json.loads(json.dumps(b1.detail()))["racks"] == ["b1"]


def test_a_higher_priority_job_counts_lower_priority_work_at_its_floor() -> None:
    topo = small_site([job("busy", 3, ["a1"])], row_kw=(12.0, 100.0))
    ranked = advise(topo, make_plan(topo), gpus=8, power_per_gpu_w=400.0, priority=1)
    a2 = next(p for p in ranked if p.where == "a2")
    # busy (p3) at its 100 W floor: row ra carries 1.6 + 0.8 + 2.8 = 5.2 kW of 12 kW (not 10 kW).
    assert a2.binding == "row ra" and a2.remaining_w == pytest.approx(6800.0)
    same = advise(topo, make_plan(topo), gpus=8, power_per_gpu_w=400.0, priority=3)
    assert next(p for p in same if p.where == "a2").remaining_w == pytest.approx(2000.0)  # equal priority stays


def test_spreads_over_a_row_or_hall_only_when_no_rack_is_big_enough() -> None:
    topo = small_site([job("busy", 3, ["a1"])])
    ranked = advise(topo, make_plan(topo), gpus=24, power_per_gpu_w=300.0)
    # Row ra has 16 free GPUs (a2), row rb 16 (b1): only the hall holds 24.
    assert [(p.scope, p.where, p.racks, p.gpus) for p in ranked] == [("hall", "h1", ("a2", "b1"), 24)]
    assert "spread over 2 racks of hall h1" in ranked[0].reason
    topo2 = small_site([job("x", 3, ["a1:0-1"])])
    ranked2 = advise(topo2, make_plan(topo2), gpus=24, power_per_gpu_w=300.0)
    assert ranked2[0].scope == "row" and ranked2[0].where == "ra" and ranked2[0].racks == ("a2", "a1")


def test_nothing_fits_is_ranked_and_flagged() -> None:
    topo = small_site([job("busy", 3, ["a1"])], rack_kw=5.0)
    ranked = advise(topo, make_plan(topo), gpus=16, power_per_gpu_w=500.0)
    assert ranked and not any(p.fits for p in ranked)
    assert ranked[0].binding.startswith("rack") and ranked[0].remaining_w < 0 and "does not fit" in ranked[0].reason


@pytest.mark.parametrize(("gpus", "watts", "message"), [
    (33, 400.0, "33 GPUs requested but the site has only 32 free"),
    (0, 400.0, "must be >= 1"),
    (8, 900.0, "the largest GPU TDP"),
])
def test_impossible_requests_are_rejected(gpus: int, watts: float, message: str) -> None:
    topo = small_site([job("busy", 3, ["a1"])])
    with pytest.raises(ConfigError, match=message):
        advise(topo, make_plan(topo), gpus=gpus, power_per_gpu_w=watts)


# ---- CLI --------------------------------------------------------------------------------------

@pytest.fixture
def cli() -> None:
    """``powerplane`` as an operator runs it (``advise`` is one of its commands)."""


@pytest.fixture
def site_with_room(tmp_path: Path) -> Path:
    """The demo hall with part of r05 and r06 free (the demo itself leaves only half of r06 free, for the
    scheduler's jobs)."""
    text = DEMO_SITE.read_text().replace('placement = ["r05"]', 'placement = ["r05:0-99"]')
    assert 'placement = ["r06:0-71"]' in text
    text = text.replace('placement = ["r06:0-71"]', 'placement = ["r06:0-35"]')
    path = tmp_path / "room.toml"
    path.write_text(text)
    return path


@pytest.mark.usefixtures("cli")
def test_advise_prints_a_ranked_table(site_with_room: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--site", str(site_with_room), "--gpus", "200", "--power-per-gpu", "700"]) == 0
    out = capsys.readouterr().out
    assert "placements" in out and "r06" in out and "best per hall" in out and "hall-b" in out


@pytest.mark.usefixtures("cli")
def test_advise_json_spreads_and_lists_dr_moves(site_with_room: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["advise", "--site", str(site_with_room), "--gpus", "500", "--power-per-gpu", "300", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == (0 if doc["placements"][0]["fits"] else 1)
    assert doc["placements"][0]["scope"] == "row" and set(doc["placements"][0]["racks"]) == {"r05", "r06"}
    assert doc["moves"] == []


@pytest.mark.usefixtures("cli")
@pytest.mark.parametrize(("argv", "message"), [
    (["--gpus", "100000", "--power-per-gpu", "700"], "100,000 GPUs requested but the site has only 608 free"),
    (["--gpus", "0", "--power-per-gpu", "700"], "--gpus: must be >= 1"),
    (["--gpus", "8", "--power-per-gpu", "-5"], "--power-per-gpu: must be > 0"),
])
def test_advise_bad_input_exits_2_with_a_message(site_with_room: Path, argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["advise", "--site", str(site_with_room), *argv])
    except SystemExit as exc:  # a number out of range is a usage error, refused by its argparse type
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.usefixtures("cli")
def test_advise_on_a_missing_site_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--site", str(tmp_path / "nope.toml"), "--gpus", "1", "--power-per-gpu", "500"]) == 2
    assert "file not found" in capsys.readouterr().err
