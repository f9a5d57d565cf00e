"""Benchmark: a job table change at ~1M GPUs (1,700 racks, 979,200 GPUs, 244,800 servers).

ours: the job feed's rebuild — ``models.jobs.with_jobs`` (the job arrays) plus
      ``SiteProblem.with_jobs`` (``Structure.regroup``: the per-constraint grouping by priority
      class redone by a counting sort; the membership kept).
peer: what the plane did before live jobs — ``SiteProblem.build`` from scratch with the new jobs.
Both must give the same allocation structure, array for array: the bench exits 1 otherwise.

    python bench/jobs.py [--racks 1700] [--jobs 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from controllers.jobs.names import NodeIndex
from controllers.jobs.table import JobTable, Start
from controllers.problem import SiteProblem
from models.generate import generate_site
from models.jobs import JobFacts, node_jobs, with_jobs
from models.site import load_site
from models.topology import build_topology


def main() -> int:
    """Run the benchmark and print its JSON line; 1 if the two structures differ."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--racks", type=int, default=1700)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.toml"
        path.write_text(generate_site(args.racks))
        site = load_site(path)
    # The scheduler owns every node here: no site-file jobs, all jobs live.
    site = site.model_copy(update={"jobs": []})
    base = build_topology(site)
    problem = SiteProblem.build(base)
    t0 = time.perf_counter()
    names = NodeIndex(site, base)
    index_s = time.perf_counter() - t0
    free = np.flatnonzero(node_jobs(base) < 0)
    rng = np.random.default_rng(1)
    per = max(1, free.size // args.jobs)
    table = JobTable(site, base, names)
    t0 = time.perf_counter()
    table.apply([Start(JobFacts(str(k), "slurm", tuple(names.names[int(s)] for s in free[k * per:(k + 1) * per]),
                                partition=str(rng.choice(["gpu", "gpu-prod", "batch"])), qos="high"))
                 for k in range(min(args.jobs, free.size))], 0)
    table_s = time.perf_counter() - t0
    live = table.live()
    ours, peer = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        topo = with_jobs(base, live)
        fast = problem.with_jobs(topo)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        full = SiteProblem.build(topo)
        peer.append(time.perf_counter() - t0)
    agree = all(np.array_equal(getattr(fast.structure, k), getattr(full.structure, k))
                for k in ("classes", "cls_ptr", "cls_members", "con_ptr", "con_members", "weight", "priority"))
    if not agree:
        print("DISAGREE: regrouped and rebuilt structures differ")
    print(f"site: {args.racks} racks, {base.n_gpus:,} GPUs, {base.count(6):,} servers, {len(base.job_ids)} site-file "
          f"jobs + {len(live):,} live jobs on {sum(j.servers.size for j in live):,} servers")
    print(f"ours (with_jobs + regroup): {min(ours) * 1e3:.1f} ms; peer (build from scratch): {min(peer) * 1e3:.1f} ms")
    print(f"once: node name index {index_s:.2f} s; taking the {len(live):,} starts in: {table_s:.2f} s")
    print(json.dumps({"bench": "jobs", "ours": round(min(ours), 4), "peer": round(min(peer), 4),
                      "ratio": round(min(peer) / min(ours), 2), "unit": "s", "agree": agree, "gpus": base.n_gpus,
                      "live_jobs": len(live), "index_s": round(index_s, 3), "table_s": round(table_s, 3)}))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
