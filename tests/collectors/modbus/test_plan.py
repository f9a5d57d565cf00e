"""Read planning: coalescing, gap fill, block limits, fast/slow classes, groups, scale factors."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from collectors.base import DeviceConfig
from collectors.modbus.decode import PlanDecoder
from collectors.modbus.plan import Layout, build_plan, coalesce, naive_plan
from collectors.modbus.profile import ModbusProfile, parse_modbus_profile
from collectors.profiles import find_profile
from models.errors import ConfigError
from models.readings import Reason, SeriesRegistry
from models.registers import encode


def dev(**options: Any) -> DeviceConfig:
    return DeviceConfig("d1", "modbus", "p", "127.0.0.1", 502, tags=(("site", "s"), ("level", "row"), ("id", "row-1")),
                        options=MappingProxyType(options))


def test_coalesce_gap_and_block_limits() -> None:
    spans = [(0, 2), (2, 2), (10, 1), (40, 2), (41, 1)]
    assert coalesce(spans, max_gap=0, max_block=125) == [(0, 4, [0, 1]), (10, 1, [2]), (40, 2, [3, 4])]
    assert coalesce(spans, max_gap=8, max_block=125) == [(0, 11, [0, 1, 2]), (40, 2, [3, 4])]
    assert coalesce(spans, max_gap=100, max_block=125) == [(0, 42, [0, 1, 2, 3, 4])]
    assert coalesce(spans, max_gap=100, max_block=11) == [(0, 11, [0, 1, 2]), (40, 2, [3, 4])]
    # never more than the limit, even for a long contiguous map
    many = [(2 * i, 2) for i in range(200)]
    blocks = coalesce(many, max_gap=0, max_block=125)
    assert all(n <= 125 for _, n, _ in blocks) and sum(len(m) for _, _, m in blocks) == 200
    assert [n for _, n, _ in blocks] == [124, 124, 124, 28]  # a 2-register value never straddles
    with pytest.raises(ValueError, match="cannot fit"):
        coalesce([(0, 4)], max_gap=0, max_block=2)


def test_generic_meter_plan_few_requests_and_device_max_block() -> None:
    prof = find_profile("generic-meter-f32")
    assert isinstance(prof, ModbusProfile)
    reg = SeriesRegistry()
    plan = build_plan(prof, dev(), reg)
    assert plan.requests(slow=False) == 2  # 3000..3086 and the energy at 3204
    assert plan.requests(slow=True) == 3  # + frequency (slow)
    assert plan.n_readings == 20
    small = build_plan(prof, dev(max_block=16), reg)
    assert all(b.count <= 16 for b in small.blocks)
    assert small.requests(slow=False) > plan.requests(slow=False)
    assert naive_plan(plan).requests(slow=True) == 20
    with pytest.raises(ConfigError, match="max_block"):
        build_plan(prof, dev(max_block=1), reg)


def test_groups_children_and_counts() -> None:
    prof = find_profile("busway-tapoff")
    assert isinstance(prof, ModbusProfile)
    reg = SeriesRegistry()
    plan = build_plan(prof, dev(children=["r1", "r2"]), reg, Layout(0, {"tapoff": 3}))
    ids = {dict(reg.key(f.series).tags).get("id") for f in plan.fields if f.series >= 0}
    assert {"row-1", "r1", "r2"} <= ids
    third = [dict(reg.key(f.series).tags) for f in plan.fields if f.series >= 0 and f.address == 140]
    assert third == [{"site": "s", "level": "row", "id": "row-1", "tapoff": "3"}]  # no child id: sub-point
    assert plan.requests(slow=False) == 2  # run totals, then all tap-offs (gaps <= 16)


SF_PROFILE = {
    "protocol": "modbus", "name": "sf", "sentinels": "sunspec",
    "points": [
        {"name": "W", "address": 0, "type": "int16", "metric": "power.power_w", "scale_factor": "W_SF"},
        {"name": "Wh", "address": 1, "type": "uint32", "metric": "power.energy_wh", "scale_factor": "W_SF",
         "byte_order": "CDAB", "class": "slow"},
        {"name": "W_SF", "address": 3, "type": "int16", "class": "slow"},
        {"name": "leak", "address": 4, "type": "bit", "bit": 3, "metric": "cooling.leak"},
    ],
}


def test_scale_factor_read_with_fast_points_and_sentinels(tmp_path: Path) -> None:
    prof = parse_modbus_profile(tmp_path / "sf.toml", SF_PROFILE)
    reg = SeriesRegistry()
    plan = build_plan(prof, dev(), reg)
    fast = [b for b in plan.blocks if not b.slow]
    assert len(fast) == 1 and fast[0].address == 0 and fast[0].count == 5  # W_SF moved to the fast read
    dec = PlanDecoder(plan)
    regs = [1234, *encode(987654, "uint32", "CDAB"), 0xFFFE, 0b1000]  # W_SF = -2
    by_block = {i: regs[b.address:b.address + b.count] for i, b in enumerate(plan.blocks)}
    out = dec.decode(by_block)
    vals = {reg.key(s).metric: v for s, v in zip(out.series, out.values, strict=True)}
    assert vals == {"power.power_w": pytest.approx(12.34), "power.energy_wh": pytest.approx(9876.54),
                    "cooling.leak": 1.0}
    regs[0] = 0x8000  # not implemented
    regs[3] = 0x8000  # scale factor not implemented either
    out = dec.decode({i: regs[b.address:b.address + b.count] for i, b in enumerate(plan.blocks)})
    assert out.rejected == {Reason.NOT_IMPLEMENTED: 2}
    assert [reg.key(s).metric for s in out.series] == ["cooling.leak"]


def test_metric_map_renames_entity_totals_only() -> None:
    prof = find_profile("sunspec-meter-int")
    assert isinstance(prof, ModbusProfile)
    reg = SeriesRegistry()
    plan = build_plan(prof, dev(metric_map={"power.power_w": "site.facility_w"}), reg, Layout(40072))
    metrics = [(reg.key(f.series).metric, dict(reg.key(f.series).tags).get("phase")) for f in plan.fields
               if f.series >= 0 and f.point.name in ("W", "WphA")]
    assert metrics == [("site.facility_w", None), ("power.power_w", "L1")]
    assert min(f.address for f in plan.fields) == 40072
