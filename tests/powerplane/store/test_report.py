"""``powerplane report`` on an embedded store seeded from the demo twin."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from models.site import SiteConfig
from models.topology import Topology
from powerplane.store.embedded import EmbeddedStore
from powerplane.store.report import parse_time
from tests.powerplane.store.seed import T0_NS, seed
from tests.powerplane.test_cli import pp

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
    assert _row(r.stdout, "PUE \\(energy-weighted\\)") == f"{fac_kwh / it_kwh:.3f}"
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
    assert _row(r.stdout, "DR time in force") == "0 s"


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
    from models.readings import ReadingBatch, SeriesRegistry

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
