"""Benchmark: building the topology arrays of a ~1 GW site (1,700 racks, 979,200 GPUs).

ours: models.topology.build_topology (vectorised numpy), after parsing and validating the file.
peer: the naive way — walk the site in Python and append each GPU's node at every level.
Both must produce the same GPU membership, array for array: the bench exits 1 otherwise.

    python bench/topology.py [--racks 1700]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from models.generate import generate_site
from models.site import SiteConfig, load_site
from models.topology import LEVELS, build_topology


def naive_membership(site: SiteConfig) -> np.ndarray:
    """Per GPU and level, the global node index — one Python step per GPU."""
    feeds = {f.id: i for i, f in enumerate(site.feeds)}
    ups = {u.id: i for i, u in enumerate(site.ups)}
    halls = {h.id: i for i, h in enumerate(site.halls)}
    rows = {r.id: i for i, r in enumerate(site.rows)}
    ups_feed = {u.id: u.feed for u in site.ups}
    hall_ups = {h.id: h.ups for h in site.halls}
    row_hall = {r.id: r.hall for r in site.rows}
    counts = [len(feeds), len(ups), len(halls), len(rows), len(site.racks)]
    off = [0]
    for c in counts:
        off.append(off[-1] + c)
    n_pdus = sum(site.rack_types[r.type].pdus for r in site.racks)
    off.append(off[-1] + n_pdus)
    members: list[list[int]] = [[] for _ in LEVELS]
    pdu = node = 0
    for ri, rack in enumerate(site.racks):
        rt = site.rack_types[rack.type]
        hall = row_hall[rack.row]
        u = hall_ups[hall]
        path = [feeds[ups_feed[u]], off[1] + ups[u], off[2] + halls[hall], off[3] + rows[rack.row], off[4] + ri]
        per_pdu = rt.nodes // rt.pdus
        for n in range(rt.nodes):
            p = off[5] + pdu + n // per_pdu
            for _ in range(rt.gpus_per_node):
                for lv, idx in enumerate(path):
                    members[lv].append(idx)
                members[5].append(p)
                members[6].append(off[6] + node)
            node += 1
        pdu += rt.pdus
    return np.array(members, dtype=np.int32)


def main() -> int:
    """Run the benchmark and print its JSON line; 1 if the two memberships differ."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--racks", type=int, default=1700)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.toml"
        path.write_text(generate_site(args.racks))
        ours = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            site = load_site(path)
            t1 = time.perf_counter()
            topo = build_topology(site)
            t2 = time.perf_counter()
            ours.append((t2 - t0, t1 - t0, t2 - t1))
        t0 = time.perf_counter()
        naive = naive_membership(site)
        peer = time.perf_counter() - t0
    agree = bool(np.array_equal(naive, topo.gpu_member))
    if not agree:
        print("DISAGREE: naive and vectorised membership differ")
    best = min(ours)
    print(f"site: {args.racks} racks, {topo.n_gpus:,} GPUs, {topo.n_nodes:,} power nodes")
    print(f"ours: load+validate {best[1]:.3f} s + topology arrays {best[2]:.3f} s = {best[0]:.3f} s")
    print(f"peer (naive Python membership only): {peer:.3f} s")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"bench": "topology", "ours": round(best[0], 4), "peer": round(peer, 4),
                      "ratio": round(peer / best[0], 2), "unit": "s", "agree": agree, "gpus": topo.n_gpus,
                      "topology_s": round(best[2], 4), "load_validate_s": round(best[1], 4),
                      "peak_rss_mb": round(rss_mb)}))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
