"""``powerplane report`` on synthetic series with known answers, and on a store seeded from the demo twin."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dashboards.report import parse_time
from models.readings import ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.topology import Topology
from store.embedded import EmbeddedStore
from tests.powerplane.test_cli import pp
from tests.store.seed import T0_NS, seed

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, demo_site: SiteConfig, demo_topo: Topology) -> Path:
    d = tmp_path_factory.mktemp("store")
    store = EmbeddedStore(d)
    seed(store, demo_site, demo_topo, seconds=180, every_s=2)  # covers the start of the DR event (120 s)
    store.close()
    return d


def _row(out: str, label: str) -> str:
    m = re.search(rf"{label}\s*│\s*([^│]+?)\s*│", out)
    assert m, out
    return m.group(1)


def test_report_prints_the_summary_and_writes_plots(seeded: Path, tmp_path: Path) -> None:
    r = pp("report", "--data-dir", str(seeded), "--out", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    store = EmbeddedStore(seeded)
    fac = store.query("site.facility_w", 0, 2**62)
    it = store.query("site.it_w", 0, 2**62)
    store.close()
    t_s = (fac.index.asi8 - T0_NS) / 1e9
    fac_kwh = np.trapezoid(fac["value"].to_numpy(), t_s) / 3.6e6  # 2 s sampling, no gaps
    it_kwh = np.trapezoid(it["value"].to_numpy(), t_s) / 3.6e6
    assert _row(r.stdout, "facility energy") == f"{fac_kwh:,.2f} kWh"
    assert _row(r.stdout, "IT energy") == f"{it_kwh:,.2f} kWh"
    assert _row(r.stdout, "PUE \\(facility / IT energy\\)") == f"{fac_kwh / it_kwh:.3f} over 180 s"
    assert _row(r.stdout, "peak facility power") == f"{fac['value'].max() / 1e3:,.1f} kW"
    assert _row(r.stdout, "DR time in force") == "60 s"  # 120..180 s of the scenario
    for level in ("feed", "ups", "hall", "row", "rack", "pdu"):
        assert re.search(rf"│ {level}\s+│", r.stdout), r.stdout
    for name in ("site_power.png", "headroom.png", "pue.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


def test_report_window_by_iso_time(seeded: Path, tmp_path: Path) -> None:
    r = pp("report", "--data-dir", str(seeded), "--since", "2026-01-01T00:01:00Z", "--until", "2026-01-01 00:02:00",
           "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "00:01:00 – 2026-01-01 00:02:00 UTC" in r.stdout
    assert _row(r.stdout, "demand response") == "no event"


def test_report_errors_are_clear(tmp_path: Path, seeded: Path) -> None:
    r = pp("report", "--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no telemetry store here" in r.stderr and "Traceback" not in r.stderr
    r = pp("report", "--data-dir", str(seeded), "--since", "yesterday-ish")
    assert r.returncode == 2 and "not a time" in r.stderr and "Traceback" not in r.stderr
    r = pp("report", "--data-dir", str(seeded), "--site", "elsewhere", "--out", str(tmp_path))
    assert r.returncode == 1 and "not in the store" in r.stderr and "Traceback" not in r.stderr


def test_parse_time_forms() -> None:
    now = 10_000 * 10**9
    assert parse_time("now", now) == now
    assert parse_time("-15m", now) == now - 900 * 10**9
    assert parse_time("-2h", now) == now - 7200 * 10**9
    assert parse_time("-1.5d", now) == now - 129600 * 10**9
    assert parse_time("2026-01-01T00:00:00Z", now) == T0_NS
    assert parse_time("2026-01-01T01:00:00+01:00", now) == T0_NS
    assert parse_time("2026-01-01", now) == T0_NS
    with pytest.raises(ValueError, match="not a time"):
        parse_time("-15x", now)


def test_report_on_partial_telemetry(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    reg = SeriesRegistry()
    sid = reg.id("power.power_w", 100e3, site="lab", level="rack", id="r1")
    for k in range(10):
        store.write(ReadingBatch.of(T0_NS + k * 10**9, [sid], [50e3 + 1e3 * k], 0, reg))
    store.close()
    r = pp("report", "--data-dir", str(tmp_path), "--out", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    assert _row(r.stdout, "facility energy") == "—"
    assert re.search(r"│ rack\s+│\s+1 │\s+59\.0 kW │\s+41\.0 kW │ r1", r.stdout), r.stdout
    assert (tmp_path / "plots" / "headroom.png").read_bytes().startswith(PNG)


# ---- exact answers -----------------------------------------------------------------------------
FAC_W, IT_W, TARGET_W = 1.2e6, 1.0e6, 1.25e6
DR_S = (300, 420)  # grid.dr_active is 1 from 300 s, 0 again at 420 s
GAP_S = (340.7, 380.7)  # the site meter answers nothing in between: inside the DR event


def _write(store: EmbeddedStore, reg: SeriesRegistry, sid: int, t_s: np.ndarray, v: np.ndarray | float) -> None:
    ts = T0_NS + np.round(np.asarray(t_s) * 1e9).astype(np.int64)
    store.write(ReadingBatch.of(ts, np.full(ts.size, sid), np.broadcast_to(v, ts.shape), 0, reg))


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 s of a site whose every figure is known by hand (see the test below for the sums).

    site.facility_w: the site meter, every 2 s from 0.7 s, 1.2 MW, with a spike to 1.5 MW at
    100.7 s, an excursion to 1.35 MW at 320.7 s and nothing from 340.7 to 380.7 s.
    site.it_w: derived every control period (1 s, from 0.2 s), 1.0 MW.
    grid.limit_w: 5 MW, 4.5 MW from 300 s; grid.dr_*: the DR event, every 1 s from 0 s.
    A rack with per-phase sub-points that must not count as entities.
    """
    d = tmp_path_factory.mktemp("known")
    store = EmbeddedStore(d)
    reg = SeriesRegistry()
    t_fac = np.arange(0.7, 600, 2.0)
    t_fac = t_fac[(t_fac <= GAP_S[0] + 1e-9) | (t_fac >= GAP_S[1] - 1e-9)]
    fac = np.full(t_fac.size, FAC_W)
    fac[np.isclose(t_fac, 100.7)] = 1.5e6
    fac[np.isclose(t_fac, 320.7)] = 1.35e6
    _write(store, reg, reg.id("site.facility_w", site="lab"), t_fac, fac)
    _write(store, reg, reg.id("site.it_w", site="lab"), np.arange(0.2, 600, 1.0), IT_W)
    t = np.arange(0, 601, 1.0)
    on = ((t >= DR_S[0]) & (t < DR_S[1])).astype(float)
    _write(store, reg, reg.id("grid.limit_w", site="lab"), t, np.where(t >= 300, 4.5e6, 5e6))
    _write(store, reg, reg.id("grid.dr_active", site="lab"), t, on)
    _write(store, reg, reg.id("grid.dr_target_w", site="lab"), t, on * TARGET_W)
    _write(store, reg, reg.id("power.power_w", 100e3, site="lab", level="rack", id="r1"), t, 60e3)
    for ph in ("L1", "L2", "L3"):
        _write(store, reg, reg.id("power.power_w", 100e3, site="lab", level="rack", id="r1", phase=ph), t, 20e3)
    store.close()
    return d


def _json(*args: str) -> dict[str, Any]:
    r = pp("report", *args, "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_report_json_gives_the_known_answers(known: Path) -> None:
    r = _json("--data-dir", str(known))
    window_s = 600 + 1e-9  # first reading (0 s) to just after the last (600 s)
    assert r["site"] == "lab" and r["window_s"] == pytest.approx(window_s, abs=1e-9) and r["gap_factor"] == 3.0
    # Facility: 1.2 MW over the 560 s covered (the 40 s gap is missing; the edges, 0.7 s and
    # 1.3 s, are within 3 intervals and held), plus the spike (0.3 MW × 4 s / 2) and the
    # excursion (0.15 MW × 4 s / 2).
    fac_ws = FAC_W * (window_s - 40) + 0.3e6 * 2 + 0.15e6 * 2
    assert r["facility_energy_kwh"] == pytest.approx(fac_ws / 3.6e6, rel=1e-9)
    assert r["it_energy_kwh"] == pytest.approx(IT_W * window_s / 3.6e6, rel=1e-9)
    cov = r["coverage"]["facility"]
    assert cov["missing_s"] == pytest.approx(40.0, abs=1e-6) and cov["share"] == pytest.approx(560 / 600)
    assert cov["interval_s"] == pytest.approx(2.0) and cov["gap_count"] == 1
    assert cov["gaps"] == [{"start": "2026-01-01T00:05:40.700000Z", "end": "2026-01-01T00:06:20.700000Z",
                            "seconds": pytest.approx(40.0)}]
    assert r["coverage"]["it"]["share"] == 1.0 and r["coverage"]["it"]["gaps"] == []
    # PUE over the same 560 s for both: not facility over 560 s against IT over 600 s.
    assert r["pue_basis_s"] == pytest.approx(window_s - 40, abs=1e-6)
    assert r["pue"] == pytest.approx(fac_ws / (IT_W * (window_s - 40)), rel=1e-9)
    assert r["peak_facility_kw"] == 1500.0
    assert r["grid_limit_min_kw"] == 4500.0
    assert r["min_site_headroom_kw"] == pytest.approx(4500.0 - 1350.0)  # the excursion under the lowered limit
    # DR: 120 s in force; 40 s of it in the meter's gap (unknown); the excursion crosses
    # 1.25 MW on the way up at 318.7 + 2 × 0.05 / 0.15 s and down 2 × 0.05 / 0.15 s before 322.7 s.
    dr = r["dr"]
    over_s = 2 * 2.0 * (0.10 / 0.15)
    assert (dr["status"], dr["events"]) == ("exceeded", 1)
    assert dr["active_s"] == pytest.approx(120.0) and dr["unknown_s"] == pytest.approx(40.0)
    assert dr["over_s"] == pytest.approx(over_s) and dr["compliant_s"] == pytest.approx(80.0 - over_s)
    assert dr["compliance"] == pytest.approx((80.0 - over_s) / 120.0)
    assert dr["max_excess_kw"] == pytest.approx(100.0)
    assert dr["excess_kwh"] == pytest.approx(0.1e6 * over_s / 2 / 3.6e6)
    assert dr["signal_missing_s"] == pytest.approx(0.0, abs=1e-6)
    assert r["levels"] == [{"level": "rack", "entities": 1, "peak_kw": 60.0, "min_headroom_kw": 40.0,
                            "tightest": "r1"}]


def test_report_json_window_without_dr_says_no_event(known: Path, tmp_path: Path) -> None:
    r = _json("--data-dir", str(known), "--since", "2026-01-01T00:00:10Z", "--until", "2026-01-01T00:04:00Z",
              "--out", str(tmp_path))
    assert r["dr"]["status"] == "no event" and r["dr"]["compliance"] is None and r["dr"]["active_s"] == 0.0
    # 10..240 s: facility is interpolated between its samples on either side of the window.
    assert r["coverage"]["facility"]["share"] == 1.0
    assert r["facility_energy_kwh"] == pytest.approx((FAC_W * 230 + 0.3e6 * 2) / 3.6e6, rel=1e-9)
    assert r["pue"] == pytest.approx((FAC_W * 230 + 0.3e6 * 2) / (IT_W * 230), rel=1e-9)
    assert {p.name for p in tmp_path.iterdir()} == {"site_power.png", "headroom.png", "pue.png"}


def test_report_table_shows_coverage_and_dr(known: Path, tmp_path: Path) -> None:
    r = pp("report", "--data-dir", str(known), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert _row(r.stdout, "facility power data") == "93.3 % of 600 s (40.0 s missing in 1 gap)"
    assert _row(r.stdout, "DR compliance") == "64.4 % (exceeded: over 3 s, unknown 40 s)"


def test_the_report_commands_default_gap_factor_is_the_analytics() -> None:
    from dashboards.analytics import MAX_GAP_FACTOR
    from powerplane.commands.report import GAP_FACTOR

    assert GAP_FACTOR == MAX_GAP_FACTOR
