"""snmpsim recordings of the PDU models (tests/data/snmprec/*.snmprec), and how they were made.

Values are fixed, round numbers in the devices' own units so a test can state the
expected reading by hand. Regenerate with ``python -m testbed.recordings``.
snmprec types: 2 Integer32, 4 OctetString, 6 OID, 65 Counter32, 66 Gauge32, 67 TimeTicks.
"""

from __future__ import annotations

from pathlib import Path

Row = tuple[str, int, object]
DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "snmprec"


def _system(descr: str, sys_oid: str, name: str) -> list[Row]:
    return [("1.3.6.1.2.1.1.1.0", 4, descr), ("1.3.6.1.2.1.1.2.0", 6, sys_oid),
            ("1.3.6.1.2.1.1.3.0", 67, 4242), ("1.3.6.1.2.1.1.5.0", 4, name)]


def apc_rpdu2(outlets: int = 24) -> list[Row]:
    """AP8886-style rPDU2: 5.23 kW, 3 phases, 6 banks, metered outlets (the last reports -1)."""
    a = "1.3.6.1.4.1.318.1.1.26"
    rows = _system("APC Web/SNMP Management Card (MB:v4.1.0 PF:v6.9.6 MN:AP8886)", "1.3.6.1.4.1.318.1.3.4.5",
                   "apc-rpdu2")
    dev = {1: 1, 2: 1, 3: "rack-a7", 4: 2, 5: 523, 6: 610, 9: 123456, 16: 540, 17: 97}
    rows += [(f"{a}.4.3.1.{c}.1", 4 if isinstance(v, str) else 2, v) for c, v in dev.items()]
    for ph, (amps, watts) in enumerate(((76, 174), (75, 175), (77, 174)), start=1):
        for c, v in ((1, ph), (2, 1), (3, ph), (4, 2), (5, amps), (6, 230), (7, watts)):
            rows.append((f"{a}.6.3.1.{c}.{ph}", 2, v))
    for b in range(1, 7):
        for c, v in ((1, b), (2, 1), (3, b), (4, 2), (5, 30 + b)):
            rows.append((f"{a}.8.3.1.{c}.{b}", 2, v))
    for o in range(1, outlets + 1):
        power = -1 if o == outlets else 180 + 3 * o
        for c, t, v in ((1, 2, o), (2, 2, 1), (3, 4, f"server-{o:02d}"), (4, 2, o), (5, 2, 2),
                        (6, 2, 8 + o), (7, 2, power), (8, 2, 400), (11, 2, 1000 * o)):
            rows.append((f"{a}.9.4.3.1.{c}.{o}", t, v))
    return rows


def apc_rpdu_legacy(outlets: int = 8) -> list[Row]:
    """AP7900-style legacy rPDU: 2.3 kW, three load rows (the phases), outlets with a load column."""
    a = "1.3.6.1.4.1.318.1.1.12"
    rows = _system("APC Web/SNMP Management Card (MB:v3.9.2 PF:v3.7.3 MN:AP7900)", "1.3.6.1.4.1.318.1.3.4.4",
                   "apc-rpdu-legacy")
    rows += [(f"{a}.1.1.0", 4, "rack-b2"), (f"{a}.1.16.0", 2, 2300), (f"{a}.1.17.0", 2, 950),
             (f"{a}.1.18.0", 2, 2420)]
    for i, load in enumerate((100, 95, 102), start=1):
        rows += [(f"{a}.2.3.1.1.1.{i}", 2, i), (f"{a}.2.3.1.1.2.{i}", 66, load), (f"{a}.2.3.1.1.3.{i}", 2, 1),
                 (f"{a}.2.3.1.1.4.{i}", 2, i), (f"{a}.2.3.1.1.5.{i}", 2, 0)]
    for o in range(1, outlets + 1):
        rows += [(f"{a}.3.5.1.1.1.{o}", 2, o), (f"{a}.3.5.1.1.2.{o}", 4, f"outlet-{o}"),
                 (f"{a}.3.5.1.1.4.{o}", 2, 1), (f"{a}.3.5.1.1.7.{o}", 66, 10 + o)]
    return rows


RARITAN_INLET = {1: (1, 2, 241), 4: (0, 1, 400), 5: (0, 3, 16250), 6: (0, 4, 16700), 7: (2, -1, 97),
                 8: (0, 5, 98765432), 23: (1, 8, 500)}  # sensor type: (digits, units, raw)


def raritan_px3(outlets: int = 12) -> list[Row]:
    """PX3 with one inlet (16.25 kW), three poles and metered outlets; digits per sensor row."""
    r = "1.3.6.1.4.1.13742.6"
    rows = _system("Raritan PX3-5190R", r, "raritan-px3")
    for st, (digits, units, raw) in RARITAN_INLET.items():
        rows += [(f"{r}.3.3.4.1.6.1.1.{st}", 2, units), (f"{r}.3.3.4.1.7.1.1.{st}", 66, digits),
                 (f"{r}.5.2.3.1.3.1.1.{st}", 2, 4), (f"{r}.5.2.3.1.4.1.1.{st}", 66, raw)]
    for pole in (1, 2, 3):
        for st, digits, raw in ((1, 1, 80 + pole), (4, 0, 231), (5, 0, 5400 + pole)):
            rows += [(f"{r}.3.3.6.1.7.1.1.{pole}.{st}", 66, digits), (f"{r}.5.2.4.1.4.1.1.{pole}.{st}", 66, raw)]
    for o in range(1, outlets + 1):
        for st, digits, raw in ((1, 3, 1000 + o), (5, 0, 200 + o), (8, 0, 50000 + o)):
            rows += [(f"{r}.3.5.4.1.7.1.{o}.{st}", 66, digits), (f"{r}.5.4.3.1.4.1.{o}.{st}", 66, raw)]
    return rows


def sentry4(units: int = 1, cords: int = 2, outlets: int = 12) -> list[Row]:
    """Sentry4 PRO2: per cord 3 lines/phases and ``outlets`` outlets; every monitor column is an integer."""
    s = "1.3.6.1.4.1.1718.4.1"
    rows = _system("Sentry Switched PDU", "1.3.6.1.4.1.1718.4", "sentry4")
    for u in range(1, units + 1):
        for c in range(1, cords + 1):
            cord = {1: 0, 2: 0, 3: 4000 + 100 * c, 4: 0, 5: 4200 + 100 * c, 6: 0, 7: 300, 8: 95, 9: 0,
                    10: 77000 + c, 11: 600, 12: 15, 13: 0}
            rows += [(f"{s}.3.3.1.{k}.{u}.{c}", 2, v) for k, v in cord.items()]
            for ln in (1, 2, 3):
                rows += [(f"{s}.4.3.1.3.{u}.{c}.{ln}", 2, 1100 + ln), (f"{s}.5.3.1.3.{u}.{c}.{ln}", 2, 2080)]
            for o in range(1, outlets + 1):
                col = {1: 0, 2: 0, 3: 90 + o, 4: 0, 5: 50, 6: 2080, 7: 150 + o, 8: 0, 9: 160 + o, 10: 94,
                       11: 0, 12: 14, 13: 2, 14: 10_000 * o}
                rows += [(f"{s}.8.3.1.{k}.{u}.{c}.{o}", 2, v) for k, v in col.items()]
    return rows


def render(rows: list[Row]) -> str:
    """snmprec text, sorted by OID as snmpsim expects."""
    rows = sorted(rows, key=lambda r: tuple(int(p) for p in r[0].split(".")))
    return "".join(f"{oid}|{t}|{v}\n" for oid, t, v in rows)


RECORDINGS = {
    "apc-rpdu2": lambda: apc_rpdu2(),
    "apc-rpdu-legacy": lambda: apc_rpdu_legacy(),
    "raritan-px3": lambda: raritan_px3(),
    "sentry4": lambda: sentry4(),
    # 4 daisy-chained units x 2 cords x 36 outlets x 14 columns = 4,032 outlet-table OIDs
    "sentry4-large": lambda: sentry4(units=4, cords=2, outlets=36),
}


def write_all(directory: Path = DATA) -> None:
    """Write every recording to ``directory``."""
    for name, make in RECORDINGS.items():
        (directory / f"{name}.snmprec").write_text(render(make()))


if __name__ == "__main__":
    write_all()
