"""Profile loading: header checks, search path, errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors import profiles
from collectors.base import DeviceConfig, PointTarget, series_id
from models.errors import ProfileError
from models.readings import SeriesRegistry


def test_unknown_protocol_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text('protocol = "carrier-pigeon"\nname = "x"\n')
    with pytest.raises(ProfileError) as ei:
        profiles.load_profile(f)
    assert f"{f}: protocol: unknown protocol 'carrier-pigeon'" in str(ei.value)


def test_missing_name_and_bad_toml(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text('protocol = "modbus"\n')
    with pytest.raises(ProfileError, match="name: required key is missing"):
        profiles.load_profile(f)
    f.write_text('protocol = \n')
    with pytest.raises(ProfileError, match="invalid TOML"):
        profiles.load_profile(f)
    with pytest.raises(ProfileError, match="file not found"):
        profiles.load_profile(tmp_path / "nope.toml")


def test_user_dir_searched_first_and_missing_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.toml").write_text('protocol = "modbus"\nname = "mine"\nvendor = "me"\n')
    monkeypatch.setenv(profiles.PATH_ENV, str(tmp_path))
    assert profiles.profile_dirs()[0] == tmp_path
    info = {i.name: i for i in profiles.list_profiles()}
    assert info["mine"].vendor == "me" and info["mine"].path == tmp_path / "mine.toml"
    with pytest.raises(ProfileError, match="no snmp profile of that name"):
        profiles.find_profile("nothing-here", "snmp")


def test_target_spec_rejects_unknown_metric(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"metric: unknown metric 'power.wats'"):
        profiles.validate_model(tmp_path / "p.toml", {"metric": "power.wats"}, profiles.TargetSpec)


def test_series_id_merges_device_and_point_tags() -> None:
    reg = SeriesRegistry()
    dev = DeviceConfig("m1", "modbus", "p", "127.0.0.1", 502, tags=(("site", "s"), ("level", "rack"), ("id", "r1")),
                       rating_w=100e3)
    sid = series_id(reg, dev, PointTarget("power.power_w", tags=(("phase", "L1"),)))
    key = reg.key(sid)
    assert dict(key.tags) == {"site": "s", "level": "rack", "id": "r1", "phase": "L1"}
    assert reg.bounds()[1][sid] == pytest.approx(120e3)  # 1.2 x rating
    volts = series_id(reg, dev, PointTarget("power.voltage_v"))
    assert reg.bounds()[1][volts] == 40e3  # a rating in W never bounds volts
