"""Power-capping solver: numba kernel vs its NumPy reference vs HiGHS (scipy.optimize.linprog).

Sites come from ``models.generate.generate_site`` (power tree feed..rack, PDUs, one CDU
loop per four racks straddling rows, jobs in 4 priority classes). Demands are drawn per
server (seeded); every third loop is derated to 70 % (a pump down) so that loops bind
beside the rows. Each size runs in its own process so that its peak RSS is its own.

    python bench/capping.py [--sizes 10000,100000,1000000] [--repeats 15]

One JSON line per size, then one summary line. The summary's ``ours``/``peer``/``ratio``
compare the same size: the largest one HiGHS is run on. Agreement: at every size the kernel
matches its NumPy reference within 1e-6 of the largest GPU ceiling, and where HiGHS runs,
every priority class's total is within 1e-6 (relative) of the lexicographic LP optimum
(``testbed/lp.py``). The bench exits 1 otherwise. Figures are on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from controllers.problem import SiteProblem
    from models.topology import Topology

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HIGHS_MAX_GPUS = 150_000  # beyond this the sequential LPs take minutes
MAX_REL_GAP = 1e-6  # agreement: relative difference per class (HiGHS) or of the largest cap (NumPy)
GPUS_PER_RACK = 576


def instance(gpus: int) -> tuple[Topology, SiteProblem, NDArray[np.float64], NDArray[np.float64]]:
    """The solver's inputs for a generated site of about ``gpus`` GPUs."""
    from controllers.budget import overhead_model
    from controllers.problem import KIND_POWER, SiteProblem
    from models.generate import generate_site
    from models.site import load_site
    from models.topology import build_topology

    racks = max(1, round(gpus / GPUS_PER_RACK))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.toml"
        path.write_text(generate_site(racks))
        site = load_site(path)
    topo = build_topology(site)
    prob = SiteProblem.build(topo)
    rng = np.random.default_rng(1)
    idle = topo.gpu_idle_w[prob.first_gpu]
    demand = idle + (prob.ceiling_w - idle) * rng.uniform(0.6, 1.0, prob.structure.n)
    margin = site.controller.margin
    loop_cap = np.full(topo.n_loops, 2.4e6)
    loop_cap[::3] *= 0.7
    it_budget = overhead_model(site, topo).it_budget_w(site.site.interconnect_limit_kw * 1e3 * (1 - margin))
    lim = prob.limits_w(it_budget, loop_cap * (1 - margin))
    lim[prob.con_kind == KIND_POWER] *= 1 - margin
    return topo, prob, demand, prob.gpu_space_w(lim)


def one(gpus: int, repeats: int) -> dict[str, object]:
    """Measure one size."""
    from controllers.allocate import solve
    from testbed.lp import class_gaps, class_totals, lexicographic_totals

    t0 = time.perf_counter()
    topo, prob, demand, cap = instance(gpus)
    build_s = time.perf_counter() - t0
    s = prob.structure
    lo, hi = prob.floor_w, prob.ceiling_w
    a = solve(s, lo, demand, hi, cap)  # warm (compiled or loaded from cache already)
    ours = []
    cpu = []  # CPU time too: wall time on a shared machine includes waiting for a core
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        a = solve(s, lo, demand, hi, cap)
        ours.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    ref = []
    for _ in range(3):
        t = time.perf_counter()
        b = solve(s, lo, demand, hi, cap, "numpy")
        ref.append((time.perf_counter() - t) * 1e3)
    diff_w = float(np.abs(a.x_w - b.x_w).max())
    numpy_rel = diff_w / float(hi.max())
    out: dict[str, object] = {"bench": "capping", "gpus": int(topo.n_gpus), "consumers": s.n,
                              "constraints": prob.n_constraints, "ours_ms": round(float(np.median(ours)), 2),
                              "ours_cpu_ms": round(float(np.median(cpu)), 2),
                              "numpy_ms": round(float(np.median(ref)), 2),
                              "numpy_ratio": round(float(np.median(ref) / np.median(ours)), 1),
                              "max_abs_diff_w": diff_w, "numpy_rel_diff": numpy_rel, "jacobi_rounds": a.rounds,
                              "gpus_capped": int((s.count * (a.x_w < demand - 1e-6)).sum())}
    if topo.n_gpus <= HIGHS_MAX_GPUS:
        runs = [lexicographic_totals(s, lo, demand, cap) for _ in range(3)]
        lp_ms = float(np.median([r.solve_ms for r in runs]))
        gaps = class_gaps(class_totals(s, a, demand, lo), runs[0].totals_w)
        gap = float(np.abs(gaps).max())
        out.update(peer="highs", peer_ms=round(lp_ms, 1), ratio=round(lp_ms / float(np.median(ours)), 1), gap=gap)
    else:
        gap = 0.0
        out.update(peer="highs", peer_ms=None, ratio=None, gap=None)
    out["agree"] = bool(numpy_rel <= MAX_REL_GAP and gap <= MAX_REL_GAP)
    out["build_s"] = round(build_s, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def compile_times() -> tuple[float, float]:
    """Seconds to import and run the kernels the first time: cold cache, then cached."""
    code = ("import time; t = time.perf_counter(); import numpy as np; "
            "from controllers.allocate import Structure, solve; "
            "s = Structure.build(np.ones(2), np.ones(2), np.zeros(2), np.zeros((2, 1), np.int32), 1); "
            "solve(s, np.ones(2), np.ones(2) * 2, np.ones(2) * 3, np.ones(1) * 5); "
            "print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                     text=True, cwd=ROOT).stdout) for _ in range(2)]
    return runs[0], runs[1]


def main() -> int:
    """Run every size in its own process and print the JSON lines; 1 if any size disagrees."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="GPU counts, comma separated")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.repeats)))
        return 0
    cold_s, cached_s = compile_times()
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        r = subprocess.run([sys.executable, __file__, "--one", str(n), "--repeats", str(args.repeats)],
                           check=True, capture_output=True, text=True, cwd=ROOT)
        line = r.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results.append(json.loads(line))
    largest = results[-1]
    with_peer = [r for r in results if r.get("peer_ms")]
    head = with_peer[-1] if with_peer else None  # same size on both sides
    agree = bool(with_peer) and all(r["agree"] for r in results)
    print(json.dumps({
        "bench": "capping", "ours": head["ours_ms"] if head else None, "peer": head["peer_ms"] if head else None,
        "ratio": head["ratio"] if head else None, "unit": "ms", "agree": agree, "peer_name": "highs",
        "gpus": head["gpus"] if head else None, "gap": head["gap"] if head else None,
        "ours_cpu_ms": head["ours_cpu_ms"] if head else None,
        "largest": {"gpus": largest["gpus"], "ours_ms": largest["ours_ms"], "ours_cpu_ms": largest["ours_cpu_ms"],
                    "numpy_ratio": largest["numpy_ratio"], "numpy_rel_diff": largest["numpy_rel_diff"],
                    "peak_rss_mb": largest["peak_rss_mb"]},
        "compile_cold_s": round(cold_s, 2), "compile_cached_s": round(cached_s, 2),
        "note": "2-core machine shared with other sessions; solve times are medians after compile",
    }))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
