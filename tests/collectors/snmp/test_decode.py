"""SNMP profiles, plans and decoding, checked against hand-computed values and the twin's encoders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from collectors.base import DeviceConfig
from collectors.profiles import find_profile, list_profiles, load_profile
from collectors.snmp.decode import CounterUnwrapper, Decoder
from collectors.snmp.plan import BulkWalk, NoValue, SnmpPlan, build_plan
from collectors.snmp.profile import SnmpProfile, parse_oid
from collectors.validate import Validator
from models.clock import NS_PER_S
from models.errors import ProfileError
from models.readings import Quality, ReadingBatch, Reason, SeriesRegistry
from models.site import SiteConfig
from models.topology import Topology
from models.twin.devices import (
    PF,
    DeviceSpec,
    encode_apc_rpdu2,
    encode_raritan_pdu2,
    encode_ups_rfc1628,
    inventory,
)
from models.twin.sim import TwinSim
from tests.collectors.snmp.oidtable import OidTable

SNMP_PROFILES = ("apc-rpdu2", "apc-rpdu-legacy", "raritan-pdu2", "servertech-sentry4", "ups-rfc1628")


def device(name: str = "pdu", profile: str = "apc-rpdu2", **tags: str) -> DeviceConfig:
    return DeviceConfig(name=name, protocol="snmp", profile=profile, host="127.0.0.1", port=161,
                        tags=tuple({"site": "s", "level": "pdu", "id": name, **tags}.items()))


def snmp_profile(name: str) -> SnmpProfile:
    p = find_profile(name, "snmp")
    assert isinstance(p, SnmpProfile)
    return p


def values(batch: ReadingBatch) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(metric, point tags) -> value`` with the device tags removed."""
    out = {}
    for sid, v in zip(batch.series, batch.value, strict=True):
        key = batch.registry.key(int(sid))
        tags = tuple((k, t) for k, t in key.tags if k not in ("site", "level", "id"))
        out[(key.metric, tags)] = float(v)
    return out


# ---- profiles -------------------------------------------------------------------------------

def test_every_shipped_snmp_profile_parses_and_describes() -> None:
    names = {i.name for i in list_profiles() if i.protocol == "snmp"}
    assert set(SNMP_PROFILES) <= names
    for n in SNMP_PROFILES:
        p = snmp_profile(n)
        rows = p.describe()
        assert rows and all(len(r) == 3 for r in rows)
        plan = build_plan(p, device(profile=n), SeriesRegistry())
        assert plan.scalars or plan.columns


@pytest.mark.parametrize(("body", "key", "problem"), [
    ('[[scalars]]\noid = "ifInOctets.1"\nmetric = "power.power_w"\n', "scalars[0].oid", "not a numeric OID"),
    ('[[scalars]]\noid = "1.3.6.1"\nmetric = "power.watts"\n', "scalars[0].metric", "unknown metric"),
    ('[[tables]]\nname = "t"\nentry = "1.3.6.1.4"\nindex = ["outlet"]\n'
     '[[tables.columns]]\ncolumn = 4\nwhere = { sensor = 5 }\nmetric = "power.power_w"\n',
     "tables[0]", "not in index"),
    ('[[scalars]]\noid = "1.3.6.1"\nmetric = "power.energy_wh"\ncounter = true\nwrap_bits = 16\n',
     "scalars[0].wrap_bits", ""),
    ('max_repetitions = 0\n[[scalars]]\noid = "1.3.6.1"\nmetric = "power.power_w"\n', "max_repetitions", ""),
    ('', "", "at least one scalar or table"),
])
def test_bad_profile_names_file_and_key(tmp_path: Path, body: str, key: str, problem: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(f'protocol = "snmp"\nname = "bad"\n{body}')
    with pytest.raises(ProfileError) as exc:
        load_profile(f)
    text = str(exc.value)
    assert text.startswith(str(f))
    assert any(k.startswith(key) and problem in m for k, m in exc.value.problems), text


def test_oid_parsing() -> None:
    assert parse_oid(".1.3.6.1.2.1.1.3.0") == (1, 3, 6, 1, 2, 1, 1, 3, 0)
    with pytest.raises(ValueError, match="numeric"):
        parse_oid("SNMPv2-MIB::sysUpTime.0")


# ---- the bulk walk ---------------------------------------------------------------------------

def test_bulk_walk_reads_columns_side_by_side_and_stops_each_at_its_end() -> None:
    a, b = (1, 3, 1), (1, 3, 2)
    rows = [(a + (i,), "int", i) for i in range(1, 6)] + [(b + (i,), "int", 10 * i) for i in range(1, 3)]
    rows.append(((1, 4), "int", 99))
    table = OidTable(rows)
    cols, requests = table.walk([a, b], max_rep=2)
    assert [v for _, v in cols[a]] == [1, 2, 3, 4, 5]
    assert cols[b] == [((1,), 10), ((2,), 20)]
    assert requests == 3  # 2 + 2 + 1 rows of a; b closes in the second response


def test_bulk_walk_truncated_response_and_agent_faults() -> None:
    a, b = (1, 3, 1), (1, 3, 2)
    w = BulkWalk([a, b])
    w.absorb([(a + (1,), 1), (b + (1,), 2), (a + (2,), 3)])  # truncated mid-row (tooBig trimming)
    assert w.request() == [a + (2,), b + (1,)]
    w.absorb([(a + (2,), 3), (b + (5,), 4)])  # a repeats itself: an agent bug, never loop on it
    assert w.problems and "non-increasing" in w.problems[0]
    assert w.active == [b]
    w.absorb([(b + (6,), NoValue.END_OF_MIB_VIEW)])
    assert w.done and w.rows[b] == [((1,), 2), ((5,), 4)]
    w2 = BulkWalk([a])
    w2.absorb([])
    assert w2.done and w2.problems == ["empty GETBULK response"]


# ---- counters ----------------------------------------------------------------------------------

def test_counter_wrap_32_and_64_bit_hand_computed() -> None:
    u = CounterUnwrapper()
    m32, m64 = 2.0**32, 2.0**64
    assert u(1, 4_294_967_000, m32) == 4_294_967_000
    assert u(1, 200, m32) == 4_294_967_496  # 2^32 + 200: the count went on by 496
    assert u(1, 1_000, m32) == 4_294_968_296
    # Counter64 in float64 (the batch's value type): exact to 2^53, relative 1e-16 beyond.
    assert u(2, 18_446_744_073_709_000_000, m64) == float(18_446_744_073_709_000_000)
    assert u(2, 100, m64) == 2.0**64 + 100.0
    assert u.wraps == 2 and u.resets == 0


def test_resettable_energy_counter_is_flagged_not_negative() -> None:
    # APC rPDU2DeviceStatusEnergy (0.1 kWh) cleared by an operator: 12345 -> 3.
    reg = SeriesRegistry()
    plan = build_plan(snmp_profile("apc-rpdu2"), device(), reg)
    dec = Decoder(plan)
    energy = parse_oid("1.3.6.1.4.1.318.1.1.26.4.3.1.9.1")
    val = Validator(reg)
    got = []
    for raw in (12345, 12346, 3, 4):
        batch, _ = dec.decode(1, {energy: raw}, {})
        out, counts = val.check(batch, 1)
        got.append((float(out.value[0]), bool(out.quality[0] & Quality.COUNTER_RESET), dict(counts)))
    assert got == [(1_234_500.0, False, {}), (1_234_600.0, False, {}),
                   (300.0, True, {Reason.COUNTER_DECREASE: 1}), (400.0, False, {})]
    assert dec.counters.resets == 1 and dec.counters.wraps == 0


# ---- decoding against the twin's encoders -------------------------------------------------------

@pytest.fixture
def sim(demo_site: SiteConfig, demo_topo: Topology) -> TwinSim:
    s = TwinSim(demo_site, demo_topo, start_ns=1_700_000_000 * NS_PER_S, seed=1)
    s.advance_to(s.now_ns + 30 * NS_PER_S)
    return s


def twin_device(sim: TwinSim, model: str) -> DeviceSpec:
    return next(d for d in inventory(sim.site, sim.topo) if d.model == model)


def test_apc_rpdu2_decodes_to_the_twin_values(sim: TwinSim) -> None:
    dev = twin_device(sim, "apc-rpdu2")
    reg = SeriesRegistry()
    plan = build_plan(snmp_profile("apc-rpdu2"), device(dev.name), reg)
    batch, rejected = Decoder(plan).decode(5, *OidTable(encode_apc_rpdu2(sim, dev)).poll(plan))
    v = values(batch)
    power = float(sim.node_power_w[dev.index])
    assert v[("power.power_w", ())] == round(power / 10) * 10  # 0.01 kW resolution
    assert v[("power.energy_wh", ())] == int(sim.node_energy_wh[dev.index] / 100) * 100
    assert v[("power.power_factor", ())] == pytest.approx(round(PF * 100) / 100)
    phases = [v[("power.power_w", (("phase", str(i)),))] for i in (1, 2, 3)]
    assert sum(phases) == pytest.approx(power, abs=15)
    for i, node in enumerate(dev.children, start=1):
        assert v[("power.power_w", (("outlet", str(i)),))] == round(float(sim.node_power_w[node]))
    assert len([k for k in v if k[0] == "power.current_a" and k[1][0][0] == "bank"]) == 6
    assert not rejected and np.all(batch.ts_ns == 5)


def test_raritan_decimal_digits_come_from_the_config_table(sim: TwinSim) -> None:
    dev = twin_device(sim, "raritan-pdu2")
    reg = SeriesRegistry()
    plan = build_plan(snmp_profile("raritan-pdu2"), device(dev.name, "raritan-pdu2"), reg)
    table = OidTable(encode_raritan_pdu2(sim, dev))
    scalars, cols = table.poll(plan)
    dec = Decoder(plan)
    for c in plan.digit_columns:
        dec.set_digits(c, cols[c])
    batch, rejected = dec.decode(1, scalars, cols)
    v = values(batch)
    power = float(sim.node_power_w[dev.index])
    assert v[("power.power_w", ())] == round(power)
    assert v[("power.power_factor", ())] == pytest.approx(PF)  # raw 97, 2 digits
    assert v[("power.frequency_hz", ())] == pytest.approx(round(sim.frequency_hz * 10) / 10)
    inlet_a = v[("power.current_a", ())]
    assert inlet_a * 10 == pytest.approx(round(inlet_a * 10))  # one decimal digit, not 0
    assert 0 < inlet_a < 2000
    assert sum(v[("power.power_w", (("phase", str(p)),))] for p in (1, 2, 3)) == pytest.approx(power, abs=2)
    assert v[("power.energy_wh", (("outlet", "1"),))] == int(round(float(sim.node_energy_wh[dev.children[0]])))
    assert not rejected
    # A row whose digits are unknown (appeared after the digits were read) is refused, not guessed.
    dec.digits[plan.digit_columns[0]].clear()
    batch2, rejected2 = dec.decode(2, scalars, cols)
    assert rejected2[Reason.DECODE] == 7 and ("power.power_w", ()) not in values(batch2)


def test_hand_computed_raritan_digits() -> None:
    reg = SeriesRegistry()
    plan = build_plan(snmp_profile("raritan-pdu2"), device("px", "raritan-pdu2"), reg)
    dec = Decoder(plan)
    digits_col = parse_oid("1.3.6.1.4.1.13742.6.3.5.4.1.7")
    value_col = parse_oid("1.3.6.1.4.1.13742.6.5.4.3.1.4")
    dec.set_digits(digits_col, [((1, 3, 1), 3), ((1, 3, 5), 1)])
    batch, _ = dec.decode(1, {}, {value_col: [((1, 3, 1), 12345), ((1, 3, 5), 4567), ((1, 3, 4), 230)]})
    v = values(batch)
    assert v == {("power.current_a", (("outlet", "3"),)): 12.345, ("power.power_w", (("outlet", "3"),)): 456.7}


def test_ups_sums_lines_maps_source_and_counts_sentinels(sim: TwinSim) -> None:
    dev = twin_device(sim, "ups-rfc1628")
    reg = SeriesRegistry()
    plan = build_plan(snmp_profile("ups-rfc1628"), device(dev.name, "ups-rfc1628", level="ups"), reg)
    scalars, cols = OidTable(encode_ups_rfc1628(sim, dev)).poll(plan)
    batch, rejected = Decoder(plan).decode(1, scalars, cols)
    v = values(batch)
    out_w = float(sim.node_power_w[dev.index])
    lines = [v[("power.power_w", (("line", str(i)),))] for i in (1, 2, 3)]
    assert v[("power.power_w", ())] == sum(lines)
    assert v[("power.power_w", ())] == pytest.approx(out_w, abs=1.5)
    assert v[("power.power_w", (("side", "input"),))] > v[("power.power_w", ())]  # losses
    assert v[("ups.on_battery", ())] == 0.0  # upsOutputSource normal(3)
    assert v[("ups.battery_charge_pct", ())] == 100.0
    assert not rejected
    source = parse_oid("1.3.6.1.2.1.33.1.4.1.0")
    charge = parse_oid("1.3.6.1.2.1.33.1.2.4.0")
    batch, rejected = Decoder(plan).decode(1, {source: 5, charge: NoValue.NO_SUCH_INSTANCE}, {})
    assert values(batch) == {("ups.on_battery", ()): 1.0}
    assert rejected == {Reason.NOT_IMPLEMENTED: 1}


def test_missing_sentinel_and_sum_skipped_when_a_row_is_bad() -> None:
    reg = SeriesRegistry()
    plan = build_plan(snmp_profile("servertech-sentry4"), device("st", "servertech-sentry4"), reg)
    power_col = parse_oid("1.3.6.1.4.1.1718.4.1.3.3.1.3")
    batch, rejected = Decoder(plan).decode(1, {}, {power_col: [((1, 1), 4000), ((1, 2), 3500)]})
    v = values(batch)
    assert v[("power.power_w", ())] == 7500.0 and v[("power.power_w", (("cord", "2"), ("unit", "1")))] == 3500.0
    batch, rejected = Decoder(plan).decode(1, {}, {power_col: [((1, 1), 4000), ((1, 2), -1)]})
    v = values(batch)
    assert ("power.power_w", ()) not in v  # a partial sum would read as a power drop
    assert rejected == {Reason.NOT_IMPLEMENTED: 1}
    text = parse_oid("1.3.6.1.4.1.1718.4.1.3.3.1.11")
    batch, rejected = Decoder(plan).decode(1, {}, {text: [((1, 1), b"499"), ((1, 2), b"n/a")]})
    assert values(batch) == {("power.frequency_hz", (("cord", "1"), ("unit", "1"))): pytest.approx(49.9)}
    assert rejected == {Reason.DECODE: 1}
    assert math.isclose(plan.max_repetitions, 25)


def test_series_are_interned_once_per_row(sim: TwinSim) -> None:
    dev = twin_device(sim, "apc-rpdu2")
    reg = SeriesRegistry()
    plan: SnmpPlan = build_plan(snmp_profile("apc-rpdu2"), device(dev.name), reg)
    table = OidTable(encode_apc_rpdu2(sim, dev))
    dec = Decoder(plan)
    b1, _ = dec.decode(1, *table.poll(plan))
    n = len(reg)
    b2, _ = dec.decode(2, *table.poll(plan))
    assert len(reg) == n and list(b1.series) == list(b2.series)


def test_a_walk_cut_short_keeps_only_finished_columns_and_a_dead_poll_raises_the_timeout() -> None:
    from collectors.snmp.client import merge_parts
    from models.errors import DeviceProtocolError, DeviceTimeout

    a, b = (1, 3, 1), (1, 3, 2)
    w = BulkWalk([a, b])
    w.absorb([(a + (1,), 1), (b + (1,), 2), (a + (2,), 3), ((1, 3, 3), 4)])  # b finished, a still open
    w.error = DeviceTimeout("pdu", "GETBULK: no response")
    scalars, rows, errors = merge_parts("pdu", [{(1, 0): 5}, w])
    assert scalars == {(1, 0): 5} and rows == {b: [((1,), 2)]}  # half of column a is not a table
    assert [type(e) for e in errors] == [DeviceTimeout]
    with pytest.raises(DeviceTimeout):  # nothing finished, nothing answered: the device is down
        merge_parts("pdu", [DeviceProtocolError("pdu", "GET: wrong digest"), _failed_walk(a)])
    scalars, rows, errors = merge_parts("pdu", [DeviceProtocolError("pdu", "GET: genErr"), _done_walk(a)])
    assert rows == {a: []} and len(errors) == 1  # the walk answered (an empty table): partial, not down


def _failed_walk(col: tuple[int, ...]) -> BulkWalk:
    from models.errors import DeviceTimeout

    w = BulkWalk([col])
    w.error = DeviceTimeout("pdu", "GETBULK: no response")
    return w


def _done_walk(col: tuple[int, ...]) -> BulkWalk:
    w = BulkWalk([col])
    w.absorb([((9, 9), 0)])
    return w
