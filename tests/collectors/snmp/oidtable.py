"""In-memory GET/GETBULK over the twin's OID rows, for the pure decode tests (the network tests use real agents)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from collectors.snmp.plan import BulkWalk, NoValue, Oid, Raw, SnmpPlan, VarBind
from models.twin.devices import OidRow


def raw_of(kind: str, value: object) -> Raw:
    """The decoder's view of a twin row value (what client.py makes of the pysnmp type)."""
    if kind == "str":
        return str(value).encode()
    if kind == "oid":
        return b""
    assert isinstance(value, int)
    return value


class OidTable:
    """GET and GETBULK semantics over sorted rows (RFC 3416), without a network."""

    def __init__(self, rows: Sequence[OidRow]) -> None:
        rows = sorted(rows, key=lambda r: r[0])
        self.oids = [r[0] for r in rows]
        self.vals = [raw_of(k, v) for _, k, v in rows]
        self.index = {o: i for i, o in enumerate(self.oids)}

    def get(self, oids: Sequence[Oid]) -> dict[Oid, Raw]:
        out: dict[Oid, Raw] = {}
        for o in oids:
            i = self.index.get(o)
            out[o] = self.vals[i] if i is not None else NoValue.NO_SUCH_INSTANCE
        return out

    def bulk(self, oids: Sequence[Oid], max_rep: int) -> list[VarBind]:
        out: list[VarBind] = []
        cur = list(oids)
        for _ in range(max_rep):
            for k, o in enumerate(cur):
                j = bisect.bisect_right(self.oids, o)
                if j < len(self.oids):
                    cur[k] = self.oids[j]
                    out.append((self.oids[j], self.vals[j]))
                else:
                    out.append((o, NoValue.END_OF_MIB_VIEW))
        return out

    def walk(self, columns: Sequence[Oid], max_rep: int) -> tuple[dict[Oid, list[tuple[Oid, Raw]]], int]:
        w = BulkWalk(columns)
        n = 0
        while not w.done:
            w.absorb(self.bulk(w.request(), max_rep))
            n += 1
        return w.rows, n

    def poll(self, plan: SnmpPlan) -> tuple[dict[Oid, Raw], dict[Oid, list[tuple[Oid, Raw]]]]:
        """What one poll of ``plan`` gets: the GET answers and every walked column."""
        cols, _ = self.walk(plan.columns + plan.digit_columns, plan.max_repetitions)
        return self.get(plan.get_oids), cols
