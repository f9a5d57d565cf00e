"""The twin's devices: which meters, PDUs, UPSs and CDUs a site has, and what they read.

Everything here is pure: ``inventory`` derives the device list from a site, and each
device model has an encoder that turns the simulation's current state into what the real
device would serve — a Modbus register image or an SNMP OID table. The servers in
``twin.servers`` only put these on the wire.

Device models and where their layouts come from:

    sunspec-203        site revenue meter, SunSpec "SunS" at 40000, model 1 + model 203
                       (wye meter, int16 + scale-factor registers, acc32 energy)
    sunspec-213        hall switchboard meters, SunSpec at 0, model 1 + model 213 (float32)
    generic-meter-f32  feed meters: float32 ABCD from 3000 (kW, V, A), int64 Wh at 3204
    busway-tapoff      row busway monitor: one tap-off per rack, int32/uint64 CDAB
    cdu-aalc           CDU in the style of the open AALC/RPU register layouts
    apc-rpdu2          APC PowerNet-MIB rPDU2 device/phase/bank/outlet tables
    raritan-pdu2       Raritan PDU2-MIB inlet, pole and outlet sensors (value / 10^digits)
    ups-rfc1628        UPS-MIB (RFC 1628) battery, input and output tables
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from models.registers import Image, encode_string
from models.site import SiteConfig
from models.topology import L_FEED, L_HALL, L_RACK, L_ROW, L_UPS, Topology
from models.twin.sim import TwinSim

Protocol = Literal["modbus", "snmp"]
SUNSPEC_MARKER = (0x5375, 0x6E53)  # "SunS"
PF = 0.97  # power factor of a modern server PSU load


@dataclass(frozen=True)
class DeviceSpec:
    """One device of the twin."""

    name: str  # unique; also the SNMP community / context of SNMP devices
    protocol: Protocol
    model: str
    level: str  # site, feed, ups, hall, row, pdu, loop
    entity: str  # id of what it measures (topology id, loop id or site name)
    index: int  # global power-node index, or loop index
    children: tuple[int, ...] = field(default=())  # tap-offs / outlets: global node indices


def inventory(site: SiteConfig, topo: Topology) -> list[DeviceSpec]:
    """Every device the twin serves for ``site``."""
    t = topo
    out = [DeviceSpec("site-meter", "modbus", "sunspec-203", "site", site.site.name, -1)]
    for i, fid in enumerate(t.level_ids[L_FEED]):
        out.append(DeviceSpec(f"meter-{fid}", "modbus", "generic-meter-f32", "feed", fid,
                              int(t.level_offset[L_FEED]) + i))
    for i, uid in enumerate(t.level_ids[L_UPS]):
        name = uid if uid.startswith("ups") else f"ups-{uid}"
        out.append(DeviceSpec(name, "snmp", "ups-rfc1628", "ups", uid, int(t.level_offset[L_UPS]) + i))
    for i, hid in enumerate(t.level_ids[L_HALL]):
        out.append(DeviceSpec(f"meter-{hid}", "modbus", "sunspec-213", "hall", hid,
                              int(t.level_offset[L_HALL]) + i))
    rack_off = int(t.level_offset[L_RACK])
    row_of_rack = t.node_parent[t.level_slice(L_RACK)]
    for i, rid in enumerate(t.level_ids[L_ROW]):
        g = int(t.level_offset[L_ROW]) + i
        racks = tuple(int(rack_off + r) for r in np.flatnonzero(row_of_rack == g))
        out.append(DeviceSpec(f"busway-{rid}", "modbus", "busway-tapoff", "row", rid, g, racks))
    for k, lid in enumerate(t.loop_ids):
        name = lid if lid.startswith("cdu") else f"cdu-{lid}"
        out.append(DeviceSpec(name, "modbus", "cdu-aalc", "loop", lid, k))
    type_of = {r.id: site.rack_types[r.type] for r in site.racks}
    for r, rid in enumerate(t.level_ids[L_RACK]):
        choice = type_of[rid].pdu_model
        model = ("apc-rpdu2" if r % 2 == 0 else "raritan-pdu2") if choice == "mixed" else choice
        first = int(t.rack_first_pdu[r])
        for k in range(int(t.rack_pdus[r])):
            p = first + k
            pid = t.node_id(p)
            per_pdu = int(t.rack_nodes[r]) // int(t.rack_pdus[r])
            first_server = int(t.rack_first_node[r]) + k * per_pdu
            servers = tuple(range(first_server, first_server + per_pdu))
            out.append(DeviceSpec(pid.replace("/", "-"), "snmp", model, "pdu", pid, p, servers))
    return out


# ---------------------------------------------------------------------------------------
# Electrical helpers

def _phases(power_w: float, salt: int) -> tuple[float, float, float]:
    """Split three-phase power with a small, fixed imbalance per device."""
    k = 0.015 * math.sin(salt * 1.7)
    return power_w / 3 * (1 + k), power_w / 3 * (1 - k / 2), power_w / 3 * (1 - k / 2)


def _v_ln(sim: TwinSim, voltage_ll_v: float) -> float:
    return voltage_ll_v / math.sqrt(3.0) * (1.0 + 0.003 * math.sin(sim.t_s / 37.0))


def _feed_voltage(sim: TwinSim) -> float:
    return sim.site.feeds[0].voltage_v


@dataclass(frozen=True)
class _ThreePhase:
    """What a three-phase meter measures for a total active power."""

    power_w: float
    v_ln: float
    p: tuple[float, float, float]  # per phase, W
    i: tuple[float, float, float]  # per phase, A
    va: float
    var: float

    @property
    def v_ll(self) -> float:
        return self.v_ln * math.sqrt(3.0)


def _three_phase(sim: TwinSim, power_w: float, salt: int) -> _ThreePhase:
    v_ln = _v_ln(sim, _feed_voltage(sim))
    p = _phases(power_w, salt)
    i = (p[0] / (v_ln * PF), p[1] / (v_ln * PF), p[2] / (v_ln * PF))
    va = power_w / PF
    return _ThreePhase(power_w, v_ln, p, i, va, math.sqrt(max(va * va - power_w * power_w, 0.0)))


# ---------------------------------------------------------------------------------------
# Modbus encoders. Each returns an Image; the server serves its registers as holding registers.

def _sunspec_common(img: Image, base: int, model: str, serial: str) -> None:
    img.put_words(base, list(SUNSPEC_MARKER))
    img.put_words(base + 2, [1, 66])
    img.put_words(base + 4, encode_string("powerplane", 16))
    img.put_words(base + 20, encode_string(model, 16))
    img.put_words(base + 36, encode_string("", 8))
    img.put_words(base + 44, encode_string("1.0.0", 8))
    img.put_words(base + 52, encode_string(serial, 16))
    img.put_words(base + 68, [1, 0x8000])


def _sf_value(value: float, sf: int) -> float:
    return value / 10.0**sf


def encode_sunspec_203(sim: TwinSim, dev: DeviceSpec, base: int = 40000) -> Image:
    """SunSpec model 203 (int + scale factors) of the site's facility power."""
    img = Image(base, 180)
    _sunspec_common(img, base, "twin-meter-203", f"PP203-{dev.name}")
    m = base + 70
    img.put_words(m, [203, 105])
    p = m + 2
    m3 = _three_phase(sim, sim.facility_w, 1)
    power, v_ln, va, var = m3.power_w, m3.v_ln, m3.va, m3.var
    (pa, pb, pc), (ia, ib, ic) = m3.p, m3.i
    # Energy in Wh (acc32: it rolls over after 4.29 GWh, months at a few MW; a fall reads as a
    # reset, which the report leaves out): a kWh register would quantise a minutes-long window by
    # whole percents.
    a_sf, v_sf, hz_sf, w_sf, pf_sf, wh_sf = 0, -1, -2, 3, -1, 0
    for off, val in ((0, ia + ib + ic), (1, ia), (2, ib), (3, ic)):
        img.put(p + off, _sf_value(val, a_sf), "int16")
    img.put(p + 4, a_sf, "int16")
    img.put(p + 5, _sf_value(v_ln, v_sf), "int16")
    for off in (6, 7, 8):
        img.put(p + off, _sf_value(v_ln, v_sf), "int16")
    for off in (9, 10, 11, 12):
        img.put(p + off, _sf_value(m3.v_ll, v_sf), "int16")
    img.put(p + 13, v_sf, "int16")
    img.put(p + 14, _sf_value(sim.frequency_hz, hz_sf), "int16")
    img.put(p + 15, hz_sf, "int16")
    for off, val in ((16, power), (17, pa), (18, pb), (19, pc)):
        img.put(p + off, _sf_value(val, w_sf), "int16")
    img.put(p + 20, w_sf, "int16")
    for off, val in ((21, va), (22, va / 3), (23, va / 3), (24, va / 3)):
        img.put(p + off, _sf_value(val, w_sf), "int16")
    img.put(p + 25, w_sf, "int16")
    for off, val in ((26, var), (27, var / 3), (28, var / 3), (29, var / 3)):
        img.put(p + off, _sf_value(val, w_sf), "int16")
    img.put(p + 30, w_sf, "int16")
    for off in (31, 32, 33, 34):
        img.put(p + off, _sf_value(PF * 100.0, pf_sf), "int16")
    img.put(p + 35, pf_sf, "int16")
    wh = sim.facility_energy_wh
    for off in (36, 38, 40, 42):
        img.put(p + off, 0, "uint32")  # nothing exported
    img.put(p + 44, _sf_value(wh, wh_sf), "uint32")
    for off in (46, 48, 50):
        img.put(p + off, _sf_value(wh / 3, wh_sf), "uint32")
    img.put(p + 52, wh_sf, "int16")
    for off in range(53, 69, 2):  # apparent energy: not implemented (acc32 "0")
        img.put(p + off, 0, "uint32")
    img.put(p + 69, 0x8000 - 0x10000, "int16")
    for off in range(70, 102, 2):  # reactive energy: not implemented
        img.put(p + off, 0, "uint32")
    img.put(p + 102, 0x8000 - 0x10000, "int16")
    img.put(p + 103, 0, "uint32")  # events
    img.put_words(p + 105, [0xFFFF, 0])
    return img


def encode_sunspec_213(sim: TwinSim, dev: DeviceSpec, base: int = 0) -> Image:
    """SunSpec model 213 (float32) of a hall's power."""
    img = Image(base, 200)
    _sunspec_common(img, base, "twin-meter-213", f"PP213-{dev.name}")
    m = base + 70
    img.put_words(m, [213, 124])
    p = m + 2
    m3 = _three_phase(sim, float(sim.node_power_w[dev.index]), dev.index)
    power, v_ln, v_ll, va, var = m3.power_w, m3.v_ln, m3.v_ll, m3.va, m3.var
    (pa, pb, pc), (ia, ib, ic) = m3.p, m3.i
    vals = [ia + ib + ic, ia, ib, ic, v_ln, v_ln, v_ln, v_ln, v_ll, v_ll, v_ll, v_ll,
            sim.frequency_hz, power, pa, pb, pc, va, va / 3, va / 3, va / 3, var, var / 3, var / 3,
            var / 3, PF * 100, PF * 100, PF * 100, PF * 100]
    for k, val in enumerate(vals):
        img.put(p + 2 * k, val, "float32")
    wh = float(sim.node_energy_wh[dev.index])
    energies = [0.0, 0.0, 0.0, 0.0, wh, wh / 3, wh / 3, wh / 3] + [0.0] * 24
    for k, val in enumerate(energies):
        img.put(p + 58 + 2 * k, val, "float32")
    img.put(p + 122, 0, "uint32")
    img.put_words(p + 124, [0xFFFF, 0])
    return img


GENERIC_METER_BASE = 3000


def encode_generic_meter(sim: TwinSim, dev: DeviceSpec) -> Image:
    """A generic three-phase meter: float32 ABCD in kW/V/A from 3000, int64 Wh at 3204."""
    img = Image(GENERIC_METER_BASE, 212)
    m3 = _three_phase(sim, float(sim.node_power_w[dev.index]), dev.index + 7)
    power, v_ln, v_ll = m3.power_w, m3.v_ln, m3.v_ll
    (pa, pb, pc), (ia, ib, ic) = m3.p, m3.i
    f32 = {
        3000: ia, 3002: ib, 3004: ic, 3010: (ia + ib + ic) / 3,
        3020: v_ll, 3022: v_ll, 3024: v_ll, 3026: v_ll,
        3028: v_ln, 3030: v_ln, 3032: v_ln, 3036: v_ln,
        3054: pa / 1e3, 3056: pb / 1e3, 3058: pc / 1e3, 3060: power / 1e3,
        3076: power / PF / 1e3, 3084: PF, 3110: sim.frequency_hz,
    }
    for addr, val in f32.items():
        img.put(addr, val, "float32", "ABCD")
    img.put(3204, float(sim.node_energy_wh[dev.index]), "int64", "ABCD")
    return img


BUSWAY_TAPOFF_BASE = 100
BUSWAY_TAPOFF_STRIDE = 20


def encode_busway(sim: TwinSim, dev: DeviceSpec) -> Image:
    """A busway monitor: totals at 10, tap-off k at 100 + 20*k (int32/uint64 word-swapped)."""
    n = len(dev.children)
    img = Image(0, BUSWAY_TAPOFF_BASE + BUSWAY_TAPOFF_STRIDE * max(n, 1))
    v_ll = _v_ln(sim, sim.site.feeds[0].voltage_v) * math.sqrt(3.0)
    img.put(0, n, "uint16")
    img.put(1, v_ll * 10, "uint16")
    img.put(2, sim.frequency_hz * 100, "uint16")
    img.put(10, float(sim.node_power_w[dev.index]), "int32", "CDAB")
    img.put(12, float(sim.node_energy_wh[dev.index]), "uint64", "CDAB")
    v_ln = v_ll / math.sqrt(3.0)
    for k, node in enumerate(dev.children):
        a = BUSWAY_TAPOFF_BASE + BUSWAY_TAPOFF_STRIDE * k
        power = float(sim.node_power_w[node])
        img.put(a, power, "int32", "CDAB")
        for ph, pp in enumerate(_phases(power, node)):
            img.put(a + 2 + ph, pp / (v_ln * PF) * 10, "uint16")
        img.put(a + 5, PF * 1000, "int16")
        img.put(a + 6, float(sim.node_energy_wh[node]), "uint64", "CDAB")
        img.put(a + 10, 1, "uint16")  # breaker closed
        img.put(a + 11, 1000, "uint16")  # tap-off breaker rating, A
    return img


def encode_cdu(sim: TwinSim, dev: DeviceSpec) -> Image:
    """A CDU: temperatures in 0.01 C, flow 0.1 L/min, pressure 0.1 kPa, heat/capacity float32 kW."""
    k = dev.index
    t = sim.topo
    img = Image(0, 32)
    running = int(sim.loop_pumps_running[k])
    pumps = int(t.loop_pumps[k])
    status = 1 | (2 if running < pumps else 0)
    img.put(0, status, "uint16")
    img.put(1, float(sim.loop_supply_c[k]) * 100, "int16")
    img.put(2, float(sim.loop_return_c[k]) * 100, "int16")
    img.put(3, float(sim.loop_flow_lpm[k]) * 10, "uint16")
    img.put(4, float(sim.loop_dp_kpa[k]) * 10, "uint16")
    for p in range(2):
        on = 1 if p < running else 0
        img.put(5 + p, on, "uint16")
        img.put(7 + p, 85 * on, "uint16")
    img.put(9, 0, "uint16")  # leak
    img.put(10, float(sim.loop_heat_w[k]) / 1e3, "float32", "ABCD")
    img.put(12, float(sim.loop_capacity_w[k]) / 1e3, "float32", "ABCD")
    img.put(14, (float(t.loop_supply_c[k]) - 4 + float(sim.loop_excursion_c[k])) * 100, "int16")
    img.put(15, 92, "uint16")  # reservoir level %
    img.put(16, pumps, "uint16")
    img.put(17, float(t.loop_hx_rated_w[k]) / 1e3, "uint16")
    return img


MODBUS_ENCODERS: dict[str, Callable[[TwinSim, DeviceSpec], Image]] = {
    "sunspec-203": encode_sunspec_203,
    "sunspec-213": encode_sunspec_213,
    "generic-meter-f32": encode_generic_meter,
    "busway-tapoff": encode_busway,
    "cdu-aalc": encode_cdu,
}

# ---------------------------------------------------------------------------------------
# SNMP encoders. Each returns (oid, kind, value) rows; kinds map onto SNMP types at the edge:
# int (Integer32), gauge (Gauge32), counter (Counter32), str (OctetString), ticks, oid.

OidRow = tuple[tuple[int, ...], str, object]

SYS = (1, 3, 6, 1, 2, 1, 1)
APC_RPDU2 = (1, 3, 6, 1, 4, 1, 318, 1, 1, 26)
RARITAN = (1, 3, 6, 1, 4, 1, 13742, 6)
UPS_MIB = (1, 3, 6, 1, 2, 1, 33, 1)


def _system(sim: TwinSim, dev: DeviceSpec, descr: str, object_id: tuple[int, ...]) -> list[OidRow]:
    return [
        (SYS + (1, 0), "str", descr),
        (SYS + (2, 0), "oid", object_id),
        (SYS + (3, 0), "ticks", int(sim.t_s * 100)),
        (SYS + (5, 0), "str", dev.name),
        (SYS + (6, 0), "str", f"{sim.site.site.name}/{dev.entity}"),
    ]


def _load_state(power_w: float, limit_w: float) -> int:
    if not math.isfinite(limit_w) or power_w < 0.05 * limit_w:
        return 1 if math.isfinite(limit_w) else 2
    return 4 if power_w >= limit_w else 3 if power_w >= 0.9 * limit_w else 2


def encode_apc_rpdu2(sim: TwinSim, dev: DeviceSpec) -> list[OidRow]:
    """APC rPDU2: device (0.01 kW, 0.1 kWh), phase (0.1 A, V, 0.01 kW), bank, metered outlets."""
    p = dev.index
    power = float(sim.node_power_w[p])
    limit = float(sim.topo.node_limit_w[p])
    v_ln = _v_ln(sim, _feed_voltage(sim))
    rows = _system(sim, dev, "APC Web/SNMP Management Card (MB:v4.1.0 PF:v6.9.6 MN:AP8886) twin",
                   (1, 3, 6, 1, 4, 1, 318, 1, 3, 4, 5))
    dev_t = APC_RPDU2 + (4, 3, 1)
    stamp = "01/01/2026 00:00:00"
    dev_cols: list[tuple[int, str, object]] = [
        (1, "int", 1), (2, "int", 1), (3, "str", dev.name), (4, "int", _load_state(power, limit)),
        (5, "int", int(round(power / 10.0))), (6, "int", int(round(power / 10.0))), (7, "str", stamp),
        (8, "str", stamp), (9, "int", int(sim.node_energy_wh[p] / 100.0)), (10, "str", stamp),
        (11, "int", 2), (12, "int", 1), (13, "int", 1), (14, "int", 1), (15, "str", stamp),
        (16, "int", int(round(power / PF / 10.0))), (17, "int", int(round(PF * 100))),
    ]
    rows += [(dev_t + (c, 1), kind, v) for c, kind, v in dev_cols]
    ph_t = APC_RPDU2 + (6, 3, 1)
    phases = _phases(power, p)
    for i, pp in enumerate(phases, start=1):
        amps = pp / (v_ln * PF)
        for c, kind, v in ((1, "int", i), (2, "int", 1), (3, "int", i), (4, "int", _load_state(pp, limit / 3)),
                           (5, "int", int(round(amps * 10))), (6, "int", int(round(v_ln))),
                           (7, "int", int(round(pp / 10.0)))):
            rows.append((ph_t + (c, i), kind, v))
    bank_t = APC_RPDU2 + (8, 3, 1)
    for b in range(1, 7):
        amps = phases[(b - 1) // 2] / 2 / (v_ln * PF)
        bank_cols: tuple[tuple[int, str, object], ...] = (
            (1, "int", b), (2, "int", 1), (3, "int", b), (4, "int", 2), (5, "int", int(round(amps * 10))))
        rows += [(bank_t + (c, b), kind, v) for c, kind, v in bank_cols]
    out_t = APC_RPDU2 + (9, 4, 3, 1)
    for i, node in enumerate(dev.children, start=1):
        pw = float(sim.node_power_w[node])
        outlet_cols: tuple[tuple[int, str, object], ...] = (
            (1, "int", i), (2, "int", 1), (3, "str", sim.topo.node_id(node)), (4, "int", i),
            (5, "int", 2), (6, "int", int(round(pw / (v_ln * PF) * 10))), (7, "int", int(round(pw))),
            (8, "int", int(round(pw))), (9, "str", stamp), (10, "str", stamp),
            (11, "int", int(sim.node_energy_wh[node] / 100.0)))
        rows += [(out_t + (c, i), kind, v) for c, kind, v in outlet_cols]
    return rows


# Raritan inlet sensors: name -> (SensorTypeEnumeration, decimal digits we serve,
# SensorUnitsEnumeration: none -1, volt 1, amp 2, watt 3, voltamp 4, wattHour 5, hertz 8).
RARITAN_SENSORS = {"rmsCurrent": (1, 1, 2), "rmsVoltage": (4, 0, 1), "activePower": (5, 0, 3),
                   "apparentPower": (6, 0, 4), "powerFactor": (7, 2, -1), "activeEnergy": (8, 0, 5),
                   "frequency": (23, 1, 8)}


def encode_raritan_pdu2(sim: TwinSim, dev: DeviceSpec) -> list[OidRow]:
    """Raritan PDU2: inlet, pole and outlet sensor values with their decimal digits."""
    p = dev.index
    power = float(sim.node_power_w[p])
    v_ln = _v_ln(sim, _feed_voltage(sim))
    rows = _system(sim, dev, "Raritan PX4 twin", RARITAN)
    rows.append((RARITAN + (3, 2, 1, 1, 3, 1), "str", "PX4-5999V-twin"))
    inlet_vals = {"rmsCurrent": power / (3 * v_ln * PF), "rmsVoltage": v_ln * math.sqrt(3.0),
                  "activePower": power, "apparentPower": power / PF, "powerFactor": PF,
                  "activeEnergy": float(sim.node_energy_wh[p]) % 2**32, "frequency": sim.frequency_hz}
    for name, (st, digits, units) in RARITAN_SENSORS.items():
        rows.append((RARITAN + (3, 3, 4, 1, 6, 1, 1, st), "int", units))
        rows.append((RARITAN + (3, 3, 4, 1, 7, 1, 1, st), "gauge", digits))
        rows.append((RARITAN + (5, 2, 3, 1, 4, 1, 1, st), "gauge",
                     int(round(inlet_vals[name] * 10**digits)) % 2**32))
    for pole, pp in enumerate(_phases(power, p), start=1):
        for st, digits, val in ((1, 1, pp / (v_ln * PF)), (4, 0, v_ln), (5, 0, pp)):
            rows.append((RARITAN + (3, 3, 6, 1, 7, 1, 1, pole, st), "gauge", digits))
            rows.append((RARITAN + (5, 2, 4, 1, 4, 1, 1, pole, st), "gauge", int(round(val * 10**digits))))
    for i, node in enumerate(dev.children, start=1):
        pw = float(sim.node_power_w[node])
        for st, digits, val in ((1, 1, pw / (v_ln * PF)), (5, 0, pw),
                                (8, 0, float(sim.node_energy_wh[node]) % 2**32)):
            rows.append((RARITAN + (3, 5, 4, 1, 7, 1, i, st), "gauge", digits))
            rows.append((RARITAN + (5, 4, 3, 1, 4, 1, i, st), "gauge", int(round(val * 10**digits)) % 2**32))
    return rows


def encode_ups_rfc1628(sim: TwinSim, dev: DeviceSpec) -> list[OidRow]:
    """UPS-MIB: battery group, input table (true power), output table (power per line)."""
    u = dev.index
    out_w = float(sim.node_power_w[u])
    eff = float(sim.topo.node_efficiency[u])
    in_w = out_w / eff
    v_ln = _v_ln(sim, _feed_voltage(sim))
    ups_cfg = next(x for x in sim.site.ups if x.id == dev.entity)
    runtime_min = ups_cfg.battery_kwh * 1e3 / max(out_w, 1.0) * 60.0
    limit = float(sim.topo.node_limit_w[u])
    rows = _system(sim, dev, "RFC1628 UPS twin", (1, 3, 6, 1, 2, 1, 33))
    rows += [
        (UPS_MIB + (1, 1, 0), "str", "powerplane"),
        (UPS_MIB + (1, 2, 0), "str", "twin-ups"),
        (UPS_MIB + (2, 1, 0), "int", 2),  # batteryNormal
        (UPS_MIB + (2, 2, 0), "int", 0),  # seconds on battery
        (UPS_MIB + (2, 3, 0), "int", int(runtime_min)),
        (UPS_MIB + (2, 4, 0), "int", 100),
        (UPS_MIB + (2, 5, 0), "int", 5400),  # 0.1 V DC
        (UPS_MIB + (2, 7, 0), "int", 24),
        (UPS_MIB + (3, 1, 0), "counter", 0),
        (UPS_MIB + (3, 2, 0), "int", 3),
    ]
    for line, pp in enumerate(_phases(in_w, u), start=1):
        rows += [(UPS_MIB + (3, 3, 1, c, line), "int", v) for c, v in (
            (1, line), (2, int(round(sim.frequency_hz * 10))), (3, int(round(v_ln))),
            (4, int(round(pp / (v_ln * PF) * 10))), (5, int(round(pp))))]
    rows += [(UPS_MIB + (4, 1, 0), "int", 3), (UPS_MIB + (4, 2, 0), "int", int(round(sim.frequency_hz * 10))),
             (UPS_MIB + (4, 3, 0), "int", 3)]
    for line, pp in enumerate(_phases(out_w, u + 1), start=1):
        rows += [(UPS_MIB + (4, 4, 1, c, line), "int", v) for c, v in (
            (1, line), (2, int(round(v_ln))), (3, int(round(pp / (v_ln * PF) * 10))),
            (4, int(round(pp))), (5, int(round(100 * pp / (limit / 3)))))]
    return rows


SNMP_ENCODERS: dict[str, Callable[[TwinSim, DeviceSpec], list[OidRow]]] = {
    "apc-rpdu2": encode_apc_rpdu2,
    "raritan-pdu2": encode_raritan_pdu2,
    "ups-rfc1628": encode_ups_rfc1628,
}


# ---------------------------------------------------------------------------------------
# MQTT: grid signals and BMS points.

def grid_messages(sim: TwinSim) -> list[tuple[str, dict[str, object], bool]]:
    """``(topic, payload, retain)`` for the grid signals right now."""
    site = sim.site.site.name
    ts = sim.now_ns // 1_000_000
    g = sim.grid()
    msgs: list[tuple[str, dict[str, object], bool]] = [
        (f"grid/{site}/limit", {"ts": ts, "limit_kw": round(g.limit_w / 1e3, 3)}, True),
        (f"grid/{site}/frequency", {"ts": ts, "hz": round(g.frequency_hz, 4)}, False),
        (f"grid/{site}/price", {"ts": ts, "per_mwh": round(g.price_per_mwh, 2), "currency": g.currency}, True),
        (f"grid/{site}/carbon", {"ts": ts, "g_per_kwh": round(g.carbon_g_per_kwh, 1)}, True),
    ]
    for ev in g.events:
        msgs.append((f"grid/{site}/dr", ev.to_json(sim.now_ns), True))
    return msgs


def bms_messages(sim: TwinSim) -> list[tuple[str, dict[str, object], bool]]:
    """BMS points in the ``BMS/v1/PUB/Value/{Class}/{pointType}/{tagPath}`` style."""
    t = sim.topo
    site = sim.site.site.name
    ts = sim.now_ns // 1_000_000
    inlet, outlet = sim.rack_inlet_c(), sim.rack_outlet_c()
    row_of_rack = t.node_parent[t.level_slice(L_RACK)] - t.level_offset[L_ROW]
    msgs: list[tuple[str, dict[str, object], bool]] = []
    for r, rid in enumerate(t.level_ids[L_RACK]):
        row = t.level_ids[L_ROW][int(row_of_rack[r])]
        path = f"{site}/{row}/{rid}"
        for point, value in (("LiquidInletTemperature", round(float(inlet[r]), 2)),
                             ("LiquidOutletTemperature", round(float(outlet[r]), 2)),
                             ("LeakDetected", 0)):
            msgs.append((f"BMS/v1/PUB/Value/Rack/{point}/{path}",
                         {"value": value, "timestamp": ts, "quality": "Good"}, False))
    for k, lid in enumerate(t.loop_ids):
        fws = float(t.loop_supply_c[k]) - 4 + float(sim.loop_excursion_c[k])
        msgs.append((f"BMS/v1/PUB/Value/CDU/FacilityWaterSupplyTemperature/{site}/{lid}",
                     {"value": round(fws, 2), "timestamp": ts, "quality": "Good"}, False))
    return msgs

