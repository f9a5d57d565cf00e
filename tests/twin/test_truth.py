"""The twin's truth series: one row per site second, written and read back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.site import SiteConfig
from models.topology import Topology
from models.twin.sim import TwinSim
from models.twin.truth import Truth, append_series, energy_over, read_series

T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z, on a second


def test_the_series_holds_energy_loops_and_dr_per_second(demo_site: SiteConfig, demo_topo: Topology,
                                                         tmp_path: Path) -> None:
    sim = TwinSim(demo_site, demo_topo, start_ns=T0_NS, seed=7)
    truth = Truth(sim)
    path = tmp_path / "truth.series.csv"
    heat, ret = [], []
    for _ in range(3):  # written in two appends, as the twin does
        for _ in range(5):
            sim.step(10)  # one second of site time
            heat.append(sim.loop_heat_w.copy())
            ret.append(sim.loop_return_c.copy())
        append_series(path, truth.take_rows(), truth.columns)
    s = read_series(path)
    loops = demo_topo.loop_ids
    assert s.dtype.names == ("t_ns", "facility_wh", "it_wh", "facility_max_w", "it_max_w",
                             *(f"heat_w {k}" for k in loops), *(f"return_c {k}" for k in loops), "dr_target_w")
    assert s["t_ns"].tolist() == [T0_NS + k * 10**9 for k in range(16)]  # exact ns, the start and 15 seconds
    assert s["facility_wh"][0] == 0.0 and (np.diff(s["facility_wh"]) > 0).all()  # since the start, rising
    assert energy_over(s, [(T0_NS, T0_NS + 15 * 10**9)]) == pytest.approx(s["facility_wh"][-1] / 1e3, rel=1e-12)
    for i, k in enumerate(loops):
        assert s[f"heat_w {k}"][1:].tolist() == [float(h[i]) for h in heat]  # the end of each second, exactly
        assert s[f"return_c {k}"][1:].tolist() == [float(r[i]) for r in ret]
    assert np.isnan(s["dr_target_w"]).all()  # the demo's DR event is later
