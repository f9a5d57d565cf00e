"""The flattened topology: membership, limits, gains, static loads, jobs; large sites."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from models.generate import generate_site
from models.site import load_site
from models.topology import (
    IDLE_PRIORITY,
    L_FEED,
    L_NODE,
    L_PDU,
    L_RACK,
    L_ROW,
    L_UPS,
    LEVELS,
    Topology,
    build_topology,
)


def test_counts(demo_topo: Topology) -> None:
    s = demo_topo.summary()
    assert (s["feeds"], s["ups"], s["halls"], s["rows"], s["racks"], s["pdus"], s["nodes"], s["gpus"]) == \
        (1, 2, 2, 4, 8, 16, 1152, 4608)


def test_membership_forms_a_tree(demo_topo: Topology) -> None:
    t = demo_topo
    for lv in range(1, len(LEVELS)):
        np.testing.assert_array_equal(t.node_parent[t.gpu_member[lv]], t.gpu_member[lv - 1])
        assert (t.node_level[t.gpu_member[lv]] == lv).all()
    assert (t.node_parent[t.level_slice(L_FEED)] == -1).all()
    # Rack r of the demo holds GPUs [576 r, 576 (r+1)).
    racks = t.gpu_member[L_RACK] - t.level_offset[L_RACK]
    np.testing.assert_array_equal(racks, np.repeat(np.arange(8), 576))


def test_two_hierarchies_do_not_nest(demo_topo: Topology) -> None:
    t = demo_topo
    hall_of_rack = t.node_parent[t.node_parent[t.level_slice(L_RACK)]]
    for k in range(t.n_loops):
        halls = set(hall_of_rack[t.rack_loop == k].tolist())
        assert len(halls) == 2  # each loop cools racks in both halls


def test_gains_and_static_loads_by_hand(demo_topo: Topology) -> None:
    t = demo_topo
    psu, base, overhead, ups_eff = 0.97, 350.0, 9000.0, 0.965
    rack = t.level_offset[L_RACK]
    assert t.node_gain[rack] == pytest.approx(1 / psu)
    assert t.node_static_w[rack] == pytest.approx(144 * base / psu + overhead)
    assert t.node_static_w[t.level_offset[L_PDU]] == pytest.approx(72 * base / psu)
    assert t.node_static_w[t.level_offset[L_NODE]] == pytest.approx(base / psu)
    row = t.level_offset[L_ROW]
    assert t.node_static_w[row] == pytest.approx(2 * (144 * base / psu + overhead))
    ups = t.level_offset[L_UPS]
    assert t.node_static_w[ups] == pytest.approx(4 * (144 * base / psu + overhead))
    feed = t.level_offset[L_FEED]
    assert t.node_gain[feed] == pytest.approx(1 / psu / ups_eff)
    assert t.node_static_w[feed] == pytest.approx(8 * (144 * base / psu + overhead) / ups_eff)
    # Loops: 95 % of each rack's power is liquid-cooled.
    assert t.loop_gain[0] == pytest.approx(0.95 / psu)
    assert t.loop_static_w[0] == pytest.approx(4 * 0.95 * (144 * base / psu + overhead))
    # GPU-space capacity of a row: (1100 kW - static) / gain.
    cap = t.gpu_space_limit_w()[row]
    assert cap == pytest.approx((1100e3 - 2 * (144 * base / psu + overhead)) * psu)


def test_limits_and_gpu_ranges(demo_topo: Topology) -> None:
    t = demo_topo
    assert t.node_limit_w[t.level_slice(L_RACK)].tolist() == [600e3] * 8
    assert t.node_limit_w[t.level_slice(L_PDU)].tolist() == [310e3] * 16
    assert np.isinf(t.node_limit_w[t.level_slice(L_NODE)]).all()  # no node PSU limit configured
    assert (t.gpu_min_w == 300).all() and (t.gpu_max_w == 880).all()


def test_jobs_and_priorities(demo_topo: Topology) -> None:
    t = demo_topo
    assert t.job_ids == ("inference-prod", "pretrain-llm", "finetune", "eval-sweep")
    per_rack = t.gpu_priority[::576].tolist()
    assert per_rack == [1, 1, 1, 1, 2, 3, 0, 0]
    # every GPU has a job but the second half of r06: the scheduler's (the demo's [[twin.jobs]])
    r06 = slice(5 * 576, 6 * 576)
    free = np.flatnonzero(t.gpu_job < 0)
    assert free.tolist() == list(range(r06.start + 288, r06.stop))
    assert (t.gpu_priority[free] == IDLE_PRIORITY).all()
    assert IDLE_PRIORITY > 15


def test_ids(demo_topo: Topology) -> None:
    t = demo_topo
    assert t.ids(L_PDU)[:3] == ["r01/pdu-a", "r01/pdu-b", "r02/pdu-a"]
    assert t.node_id(int(t.level_offset[L_NODE]) + 145) == "r02/node-001"
    assert t.index(L_RACK, "r03") == int(t.level_offset[L_RACK]) + 2


def test_generated_gigawatt_site_builds_quickly(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text(generate_site(1700))
    t0 = time.perf_counter()
    topo = build_topology(load_site(path))
    elapsed = time.perf_counter() - t0
    s = topo.summary()
    assert s["racks"] == 1700 and s["gpus"] == 979_200 and s["rack_limit_mw"] == pytest.approx(1020)
    for lv in range(1, len(LEVELS)):  # spot-check the tree on a sample of GPUs
        g = np.arange(0, topo.n_gpus, 997)
        np.testing.assert_array_equal(topo.node_parent[topo.gpu_member[lv, g]], topo.gpu_member[lv - 1, g])
    # Loops straddle rows: some loop serves racks of two rows.
    row_of_rack = topo.node_parent[topo.level_slice(L_RACK)]
    assert any(len(set(row_of_rack[topo.rack_loop == k].tolist())) > 1 for k in range(10))
    print(f"1,700-rack site: load + topology arrays in {elapsed:.2f} s")  # reported, not asserted
