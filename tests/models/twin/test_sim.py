"""The twin's physics: deterministic, conservative of power, and responsive to caps and events."""

from __future__ import annotations

import numpy as np
import pytest

from models.site import SiteConfig
from models.topology import L_FEED, L_HALL, L_NODE, L_PDU, L_RACK, L_ROW, L_UPS, Topology
from models.twin.sim import TwinSim

START = 1_784_000_000 * 10**9


def _run(site: SiteConfig, topo: Topology, seed: int, steps: int) -> TwinSim:
    sim = TwinSim(site, topo, start_ns=START, seed=seed)
    sim.step(steps)
    return sim


def test_same_seed_same_trajectory(demo_site: SiteConfig, demo_topo: Topology) -> None:
    a, b = _run(demo_site, demo_topo, 3, 300), _run(demo_site, demo_topo, 3, 300)
    np.testing.assert_array_equal(a.gpu_power_w, b.gpu_power_w)
    np.testing.assert_array_equal(a.loop_return_c, b.loop_return_c)
    assert a.frequency_hz == b.frequency_hz and a.price_per_mwh == b.price_per_mwh
    c = _run(demo_site, demo_topo, 4, 300)
    assert not np.array_equal(a.gpu_power_w, c.gpu_power_w)


def test_power_sums_up_the_tree_with_losses(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = _run(demo_site, demo_topo, 1, 50)
    t, p = demo_topo, sim.node_power_w
    servers = np.bincount(t.gpu_member[L_NODE] - t.level_offset[L_NODE], weights=sim.gpu_power_w)
    np.testing.assert_allclose(p[t.level_slice(L_NODE)], (servers + 350.0) / 0.97)
    np.testing.assert_allclose(p[t.level_slice(L_PDU)].reshape(8, 2).sum(1) + 9000.0, p[t.level_slice(L_RACK)])
    np.testing.assert_allclose(p[t.level_slice(L_RACK)].reshape(4, 2).sum(1), p[t.level_slice(L_ROW)])
    np.testing.assert_allclose(p[t.level_slice(L_ROW)].reshape(2, 2).sum(1), p[t.level_slice(L_HALL)])
    np.testing.assert_allclose(p[t.level_slice(L_HALL)], p[t.level_slice(L_UPS)])
    assert p[t.level_offset[L_FEED]] == pytest.approx(p[t.level_slice(L_UPS)].sum() / 0.965)
    assert sim.it_w == pytest.approx(p[t.level_slice(L_UPS)].sum())
    assert sim.facility_w == pytest.approx(sim.overhead.facility_w(sim.it_w))
    assert 1.05 < sim.facility_w / sim.it_w < 1.25


def test_gpus_follow_their_caps(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = _run(demo_site, demo_topo, 1, 10)
    sim.set_caps(np.full(demo_topo.n_gpus, 100.0))  # below the hardware floor: clamped to 300 W
    assert (sim.gpu_cap_w == 300.0).all()
    sim.step(20)  # 2 s: 13 lag time constants, within 0.01 W of the cap
    assert sim.gpu_power_w.max() <= 300.01
    sim.set_caps(np.full(demo_topo.n_gpus, 880.0))
    sim.step(20)
    assert sim.gpu_power_w.max() > 600.0


def test_energy_counters_integrate_power(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = TwinSim(demo_site, demo_topo, start_ns=START, seed=1)
    e0, f0 = sim.node_energy_wh.copy(), sim.facility_energy_wh
    node_wh, facility_wh = np.zeros_like(e0), 0.0
    for _ in range(3000):  # five minutes, integrating what each step reports
        sim.step()
        node_wh += sim.node_power_w * sim.step_s / 3600
        facility_wh += sim.facility_w * sim.step_s / 3600
    np.testing.assert_allclose(sim.node_energy_wh - e0, node_wh, rtol=1e-9)
    assert sim.facility_energy_wh - f0 == pytest.approx(facility_wh, rel=1e-9)
    rack_mwh = (sim.node_energy_wh - e0)[demo_topo.level_slice(L_RACK)].sum() / 1e6
    assert 0.1 < rack_mwh < 0.4  # ~4 MW of racks for 1/12 h
    sim.reset_energy(int(demo_topo.level_offset[L_PDU]))
    assert sim.node_energy_wh[demo_topo.level_offset[L_PDU]] == 0.0


def test_pump_failure_cuts_flow_and_capacity(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = TwinSim(demo_site, demo_topo, start_ns=START, seed=1)
    pf = demo_site.twin.pump_failures[0]
    k = demo_topo.loop_ids.index(pf.loop)
    sim.step(int((pf.start_s - 5) / sim.step_s))
    flow0, cap0 = sim.loop_flow_lpm[k], sim.loop_capacity_w[k]
    sim.step(int(30 / sim.step_s))
    assert sim.loop_pumps_running[k] == 1
    assert sim.loop_flow_lpm[k] == pytest.approx(flow0 * 0.5**0.85, rel=0.01)
    assert sim.loop_capacity_w[k] < cap0 * 0.8
    assert sim.loop_return_c[k] > sim.loop_supply_c[k]
    sim.step(int(pf.duration_s / sim.step_s))
    assert sim.loop_pumps_running[k] == 2


def test_return_temperature_follows_the_heat_balance(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = TwinSim(demo_site, demo_topo, start_ns=START, seed=1)
    sim.step(300)
    heat = []
    for _ in range(600):  # a minute; the return (tau 8 s) averages the 0.5 Hz training swings
        sim.step()
        heat.append(sim.loop_heat_w.copy())
    t = demo_topo
    m_cp = sim.loop_flow_lpm * t.loop_density_kg_per_l / 60 * t.loop_cp_j_per_kg_k
    mean_heat = np.mean(heat[-300:], axis=0)
    np.testing.assert_allclose(sim.loop_return_c, sim.loop_supply_c + mean_heat / m_cp, atol=0.15)


def test_supply_excursion_raises_supply_and_cuts_capacity(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = TwinSim(demo_site, demo_topo, start_ns=START, seed=1)
    ex = demo_site.twin.supply_excursions[0]
    k = demo_topo.loop_ids.index(ex.loop)
    sim.step(int((ex.start_s + ex.duration_s - 1) / sim.step_s))
    assert sim.loop_supply_c[k] > 30 + 0.9 * ex.delta_c
    assert sim.loop_capacity_w[k] < 2.4e6 * 0.8


def test_demand_response_timeline(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = TwinSim(demo_site, demo_topo, start_ns=START, seed=1)
    dr = demo_site.twin.demand_response[0]
    assert sim.grid().events == ()
    sim.step(int((dr.start_s - dr.notice_s + 1) / sim.step_s))
    g = sim.grid()
    assert g.events[0].state(g.ts_ns) == "announced" and g.dr_target_w() is None
    sim.step(int(dr.notice_s / sim.step_s))
    g = sim.grid()
    assert g.dr_target_w() == dr.target_kw * 1e3
    assert g.facility_limit_w() == dr.target_kw * 1e3
    sim.step(int(dr.duration_s / sim.step_s))
    assert sim.grid().dr_target_w() is None


def test_training_swings_at_its_frequency(demo_site: SiteConfig, demo_topo: Topology) -> None:
    sim = TwinSim(demo_site, demo_topo, start_ns=START, seed=1)
    r01 = []
    for _ in range(200):  # 20 s at 10 Hz
        sim.step()
        r01.append(sim.rack_power_w()[0])
    x = np.asarray(r01) - np.mean(r01)
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(len(x), d=sim.step_s)
    assert freqs[np.argmax(spectrum)] == pytest.approx(0.5, abs=0.06)  # the job's swing_hz
    assert np.ptp(r01) > 50e3  # a 600 kW rack swings by tens of kW
