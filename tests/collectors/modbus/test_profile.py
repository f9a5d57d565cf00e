"""Shipped Modbus profiles load; bad ones name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collectors.modbus.profile import ModbusProfile, parse_modbus_profile
from collectors.profiles import find_profile, list_profiles, load_profile
from models.errors import ProfileError

SHIPPED = ["sunspec-meter-int", "sunspec-meter-float", "generic-meter-f32", "busway-tapoff", "cdu-aalc"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_describe(name: str) -> None:
    prof = find_profile(name, "modbus")
    assert isinstance(prof, ModbusProfile)
    rows = prof.describe()
    assert rows and all(len(r) == 3 for r in rows)
    assert name in {i.name for i in list_profiles()}


def base(**extra: Any) -> dict[str, Any]:
    return {"protocol": "modbus", "name": "t", **extra}


@pytest.mark.parametrize(("data", "key", "problem"), [
    (base(points=[{"name": "a", "address": 0, "type": "float16", "metric": "power.power_w"}]),
     "points[0].type", "Input should be"),
    (base(points=[{"name": "a", "address": 0, "metric": "power.watts"}]), "points[0].metric", "unknown metric"),
    (base(points=[{"name": "a", "address": 0, "metric": "power.power_w", "scale_factor": "nope"}]),
     "points[0].scale_factor", "no point named 'nope'"),
    (base(points=[{"name": "a", "address": 0}, {"name": "a", "address": 1}]), "points[1].name", "duplicate"),
    (base(points=[{"name": "a", "address": 0, "type": "uint16", "bit": 3}]), "points[0].bit", "only for type"),
    (base(points=[{"name": "a", "address": 70000}]), "points[0].address", "less than or equal"),
    (base(points=[{"name": "a", "address": 0, "colour": "red"}]), "points[0].colour", "unknown key"),
    (base(points=[{"name": "a", "address": 0, "type": "string", "length": 4, "metric": "power.power_w"}]),
     "points[0].metric", "a string cannot"),
    (base(points=[{"name": "a", "address": 0}], groups=[{"name": "g", "base": 100, "stride": 2, "count": 2,
                                                         "points": [{"name": "b", "address": 1, "type": "int32"}]}]),
     "groups[0].points[0].address", "beyond the stride"),
    (base(points=[{"name": "a", "address": 0}], groups=[{"name": "g", "base": 100, "stride": 4,
                                                         "points": [{"name": "b", "address": 0}]}]),
     "groups[0]", "exactly one of count or count_point"),
    (base(), "points", "at least one point"),
    (base(points=[{"name": "a", "address": 0, "counter": True, "metric": "power.power_w"}]),
     "points[0].counter", "not a counter"),
])
def test_bad_profile_names_key(tmp_path: Path, data: dict[str, Any], key: str, problem: str) -> None:
    f = tmp_path / "bad.toml"
    with pytest.raises(ProfileError) as ei:
        parse_modbus_profile(f, data)
    text = str(ei.value)
    assert f"{f}: {key}: " in text and problem in text, text


def test_address_base_one(tmp_path: Path) -> None:
    f = tmp_path / "one.toml"
    f.write_text('protocol = "modbus"\nname = "one"\naddress_base = 1\n'
                 '[[points]]\nname = "a"\naddress = 3000\ntype = "float32"\nmetric = "power.current_a"\n')
    prof = load_profile(f)
    assert isinstance(prof, ModbusProfile) and prof.points[0].address == 2999
    f.write_text('protocol = "modbus"\nname = "one"\naddress_base = 1\n'
                 '[[points]]\nname = "a"\naddress = 0\n')
    with pytest.raises(ProfileError, match=r"points\[0\]\.address: address 0 below address_base 1"):
        load_profile(f)
