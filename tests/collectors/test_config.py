"""collect.toml and the twin's endpoint inventory -> DeviceConfig lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.config import devices_from_twin, load_collect_config, load_collect_file, load_endpoints
from models.errors import ConfigError
from models.topology import Topology
from twin.runner import Endpoint

GOOD = """
site = "s1"
[defaults]
interval_s = 2.0
options = { unit = 3 }
[validate]
stuck_polls = { "power.power_w" = 30 }
[[devices]]
name = "feed-meter"
protocol = "modbus"
profile = "generic-meter-f32"
host = "10.0.0.5"
port = 502
tags = { level = "feed", id = "utility-1" }
rating_w = 2.5e6
options = { framer = "rtu-over-tcp" }
[[devices]]
name = "bms"
protocol = "mqtt"
profile = "bms-json"
host = "broker"
port = 1883
interval_s = 5
"""


def test_good_file(tmp_path: Path) -> None:
    f = tmp_path / "collect.toml"
    f.write_text(GOOD)
    cfg = load_collect_file(f)
    meter, bms = cfg.devices
    assert meter.interval_s == 2.0 and bms.interval_s == 5.0
    assert dict(meter.tags) == {"site": "s1", "level": "feed", "id": "utility-1"}
    assert dict(meter.options) == {"unit": 3, "framer": "rtu-over-tcp"} and meter.rating_w == 2.5e6
    assert cfg.stuck_polls == {"power.power_w": 30}
    assert load_collect_config(f) == cfg.devices


@pytest.mark.parametrize(("edit", "expected"), [
    (('profile = "generic-meter-f32"', 'profile = "no-such-meter"'),
     "devices[0].profile: no modbus profile of that name"),
    (('profile = "bms-json"', 'profile = "cdu-aalc"'), "devices[1].profile: no mqtt profile of that name"),
    (('protocol = "modbus"', 'protocol = "bacnet"'),
     "devices[0].protocol: Input should be 'modbus', 'snmp' or 'mqtt' (got 'bacnet')"),
    (("port = 502", "port = 70000"), "devices[0].port: Input should be less than or equal to 65535"),
    (('name = "bms"', 'name = "feed-meter"'), "devices[1].name: duplicate device name 'feed-meter'"),
    (('tags = { level = "feed", id = "utility-1" }', 'tags = { level = "feed" }'),
     "devices[0].tags: a power level needs an id tag"),
    (("host = \"broker\"", "hots = \"broker\""), "devices[1].hots: unknown key"),
    (('"power.power_w" = 30', '"cooling.leak" = 30'), "validate.stuck_polls.cooling.leak: a state cannot be stuck"),
])
def test_bad_file_names_file_and_key(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    f = tmp_path / "collect.toml"
    f.write_text(GOOD.replace(*edit, 1))
    with pytest.raises(ConfigError) as ei:
        load_collect_config(f)
    assert f"{f}: {expected}" in str(ei.value), str(ei.value)
    assert ei.value.exit_code == 2


def test_devices_from_twin_profiles_and_tags(demo_topo: Topology) -> None:
    eps = [
        Endpoint("site-meter", "modbus", "sunspec-203", "site", "s1", "127.0.0.1", 1, unit=1),
        Endpoint("busway-row-a1", "modbus", "busway-tapoff", "row", "row-a1", "127.0.0.1", 2, unit=1),
        Endpoint("cdu-1", "modbus", "cdu-aalc", "loop", "cdu-1", "127.0.0.1", 3, unit=1),
        Endpoint("r01-pdu-a", "snmp", "apc-rpdu2", "pdu", "r01/pdu-a", "127.0.0.1", 161, community="r01-pdu-a"),
        Endpoint("mqtt-grid-json", "mqtt", "grid-json", "site", "s1", "127.0.0.1", 1883, topic="grid/s1/#"),
    ]
    devs = {d.name: d for d in devices_from_twin(eps, "s1", topo=demo_topo)}
    assert devs["site-meter"].profile == "sunspec-meter-int"
    assert devs["site-meter"].options["metric_map"] == {"power.power_w": "site.facility_w"}
    assert dict(devs["site-meter"].tags) == {"site": "s1"}
    bus = devs["busway-row-a1"]
    assert bus.options["children"] == ["r01", "r02"] and dict(bus.tags)["level"] == "row"
    assert bus.rating_w is not None and bus.rating_w > 0
    # tap-offs read as racks are checked against the racks' ratings (600 kW), not the row's
    assert bus.options["child_ratings_w"] == {"r01": 600e3, "r02": 600e3}
    assert dict(devs["cdu-1"].tags) == {"site": "s1", "loop": "cdu-1"}
    pdu = devs["r01-pdu-a"]
    assert (pdu.protocol, pdu.profile, dict(pdu.options)) == ("snmp", "apc-rpdu2",
                                                              {"version": "2c", "community": "r01-pdu-a"})
    assert dict(pdu.tags) == {"site": "s1", "level": "pdu", "id": "r01/pdu-a"}
    assert devs["mqtt-grid-json"].profile == "grid-json"
    no_topo = {d.name: d for d in devices_from_twin(eps, "s1")}
    assert "children" not in no_topo["busway-row-a1"].options


def test_endpoints_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_endpoints(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"endpoints": []}')
    with pytest.raises(ConfigError, match="not an endpoints file"):
        load_endpoints(bad)


def test_a_misspelt_option_is_an_error_not_a_default(tmp_path: Path) -> None:
    """Every protocol's options are a closed model: a typo names its key path."""
    bad = GOOD.replace('options = { framer = "rtu-over-tcp" }', 'options = { framerr = "rtu-over-tcp" }')
    bad = bad.replace("interval_s = 5\n", "interval_s = 5\noptions = { qoss = 1, password = \"in-the-file\" }\n")
    bad = bad.replace("options = { unit = 3 }", "options = { unit = 3, untis = 2 }")
    f = tmp_path / "collect.toml"
    f.write_text(bad)
    with pytest.raises(ConfigError) as e:
        load_collect_file(f)
    text = str(e.value)
    for key in ("devices[0].options.framerr: unknown key", "devices[1].options.qoss: unknown key",
                "devices[1].options.password: unknown key", "defaults.options.untis: no protocol has this option"):
        assert key in text, text
