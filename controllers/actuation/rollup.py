"""One compiled pass from per-GPU arrays to the per-node figures verification needs.

``Verifier.check`` runs every period over every GPU: as NumPy it was five ``reduceat`` passes
and their temporaries (~40 ms a period at 1M GPUs); fused into one loop it is a few ms.
The kernel is compiled (or loaded from numba's cache) by ``powerplane.commands.controller.
warm_up`` before the first period, never inside one.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BIG = np.finfo(np.float64).max


@njit(cache=True, nogil=True)
def node_rollup(first: np.ndarray, count: np.ndarray, enforced_w: np.ndarray, requested_w: np.ndarray,
                power_w: np.ndarray, tol_w: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """Per node (GPUs ``first[k] .. first[k] + count[k]``):

    - ``enforced_ok``: every GPU reports an enforced limit at or below its request (+ ``tol_w``);
    - ``requested_min_w``: the lowest request (inf where none was sent);
    - ``requested_mean_w``: the mean request (unsent counted as 0);
    - ``draw_w``: the mean measured power (NaN where any GPU's is unknown);
    - ``enforced_max_w``: the highest enforced limit (-inf where none is known).
    """
    n = first.shape[0]
    ok = np.empty(n, np.bool_)
    req_min = np.empty(n)
    req_mean = np.empty(n)
    draw = np.empty(n)
    enf_max = np.empty(n)
    for k in range(n):
        g0 = first[k]
        c = count[k]
        good = True
        lo = np.inf
        s_req = 0.0
        s_pow = 0.0
        hi = -np.inf
        for g in range(g0, g0 + c):
            e = enforced_w[g]
            r = requested_w[g]
            if not (np.isfinite(e) and e <= r + tol_w):
                good = False
            if not np.isnan(r):
                if r < lo:
                    lo = r
                s_req += r if np.isfinite(r) else (_BIG if r > 0 else -_BIG)
            s_pow += power_w[g]
            if not np.isnan(e) and e > hi:
                hi = e
        ok[k] = good
        req_min[k] = lo
        req_mean[k] = s_req / c
        draw[k] = s_pow / c
        enf_max[k] = hi
    return ok, req_min, req_mean, draw, enf_max
