"""numba kernels of the power-capping allocation: arrays in, arrays out, nothing else.

The problem and the algorithm are described in ``controllers.allocate``; this module holds
only the compiled loops. Every kernel has a NumPy twin in ``controllers.reference``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_REL_TOL = 1e-12
_NEWTON_STEPS = 8


@njit(cache=True, nogil=True)
def _level(resid: float, s0: int, s1: int, con_members: np.ndarray, count: np.ndarray,
           weight: np.ndarray, room_s: np.ndarray) -> float:
    """Water level at which ``sum count*min(room, weight*level)`` reaches ``resid``.

    Newton from the left on a concave piecewise-linear function never overshoots; if it has
    not landed after a few steps the exact sorted sweep finishes the job.
    """
    level = 0.0
    for _ in range(_NEWTON_STEPS):
        f = 0.0
        slope = 0.0
        for s in range(s0, s1):
            i = con_members[s]
            w = weight[i]
            e = room_s[s]
            if w * level < e:
                f += count[i] * w * level
                slope += count[i] * w
            else:
                f += count[i] * e
        if f >= resid * (1.0 - _REL_TOL) or slope <= 0.0:
            return level
        level += (resid - f) / slope
    # Exact: sort the members' breakpoints (room / weight) and sweep.
    k = s1 - s0
    bp = np.empty(k)
    for s in range(s0, s1):
        bp[s - s0] = room_s[s] / weight[con_members[s]]
    order = np.argsort(bp)
    wsum = 0.0
    for s in range(s0, s1):
        i = con_members[s]
        wsum += count[i] * weight[i]
    sat = 0.0
    for j in range(k):
        s = s0 + order[j]
        i = con_members[s]
        if sat + bp[order[j]] * wsum >= resid:
            return (resid - sat) / wsum if wsum > 0.0 else bp[order[j]]
        sat += count[i] * room_s[s]
        wsum -= count[i] * weight[i]
    return np.inf


@njit(cache=True, nogil=True)
def allocate(count: np.ndarray, floor_w: np.ndarray, demand_w: np.ndarray, ceiling_w: np.ndarray,
             weight: np.ndarray, mem: np.ndarray, cls_ptr: np.ndarray, cls_members: np.ndarray,
             con_ptr: np.ndarray, con_members: np.ndarray, cap_w: np.ndarray, max_rounds: int,
             x_w: np.ndarray, bind: np.ndarray, load_w: np.ndarray) -> int:
    """Strict-priority, weighted max-min fair allocation; fills ``x_w``, ``bind``, ``load_w``.

    Shapes: consumers ``n`` (count, floor_w, demand_w, ceiling_w, weight: float64; mem (n, K)
    int32 constraint per layer or -1), classes ``P`` (cls_ptr (P+1,), cls_members (n,)),
    constraints ``m`` (con_ptr (m, P+1) into con_members (nnz,), cap_w). Values are per
    unit of ``count``; ``load_w`` is per constraint. Returns the Jacobi rounds used.
    """
    n = count.shape[0]
    n_layers = mem.shape[1]
    m = cap_w.shape[0]
    n_cls = cls_ptr.shape[0] - 1
    nnz = con_members.shape[0]
    for c in range(m):
        load_w[c] = 0.0
    for i in range(n):
        x_w[i] = floor_w[i]
        bind[i] = -1
        for k in range(n_layers):
            c = mem[i, k]
            if c >= 0:
                load_w[c] += count[i] * floor_w[i]
    lam = np.empty(m)
    lam_new = np.empty(m)
    lam_low = np.empty(m)
    mu1 = np.empty(n)
    mu2 = np.empty(n)
    arg1 = np.empty(n, np.int32)
    room = np.zeros(n)
    room_s = np.empty(nnz)
    live = np.empty(m, np.int64)
    rounds = 0
    for phase in range(2):  # 0: up to demand, 1: spare power up to the ceiling
        for p in range(n_cls):
            a0 = cls_ptr[p]
            a1 = cls_ptr[p + 1]
            any_room = False
            for j in range(a0, a1):
                i = cls_members[j]
                top = demand_w[i] if phase == 0 else ceiling_w[i]
                r = top - x_w[i]
                room[i] = r if r > 0.0 else 0.0
                if r > 0.0:
                    any_room = True
            if not any_room:
                continue
            # A constraint that holds the whole class at full room never binds this pass.
            n_live = 0
            for c in range(m):
                lam[c] = np.inf
                lam_low[c] = np.inf
                s0 = con_ptr[c, p]
                s1 = con_ptr[c, p + 1]
                want = 0.0
                for s in range(s0, s1):
                    i = con_members[s]
                    want += count[i] * room[i]
                if s1 > s0 and want > cap_w[c] - load_w[c]:
                    live[n_live] = c
                    n_live += 1
            if n_live == 0:
                for j in range(a0, a1):
                    i = cls_members[j]
                    inc = room[i]
                    x_w[i] += inc
                    for k in range(n_layers):
                        c = mem[i, k]
                        if c >= 0:
                            load_w[c] += count[i] * inc
                    if phase == 1:
                        bind[i] = -1
                continue
            for rnd in range(max_rounds):
                for j in range(a0, a1):
                    i = cls_members[j]
                    b1 = np.inf
                    b2 = np.inf
                    ak = -1
                    for k in range(n_layers):
                        c = mem[i, k]
                        if c < 0:
                            continue
                        v = lam[c]
                        if v < b1:
                            b2 = b1
                            b1 = v
                            ak = c
                        elif v < b2:
                            b2 = v
                    mu1[i] = b1
                    mu2[i] = b2
                    arg1[i] = ak
                changed = False
                for q in range(n_live):
                    c = live[q]
                    s0 = con_ptr[c, p]
                    s1 = con_ptr[c, p + 1]
                    resid = cap_w[c] - load_w[c]
                    total = 0.0
                    for s in range(s0, s1):
                        i = con_members[s]
                        mu = mu2[i] if arg1[i] == c else mu1[i]
                        e = room[i]
                        if mu < np.inf and weight[i] * mu < e:
                            e = weight[i] * mu
                        room_s[s] = e
                        total += count[i] * e
                    if resid <= 0.0:
                        v = 0.0
                    elif total <= resid:
                        v = np.inf
                    else:
                        v = _level(resid, s0, s1, con_members, count, weight, room_s)
                    lam_new[c] = v
                    old = lam[c]
                    if not (v == old or (old < np.inf and abs(v - old) <= 1e-9 * (1.0 + abs(old)))):
                        changed = True
                for q in range(n_live):
                    c = live[q]
                    lam[c] = lam_new[c]
                rounds += 1
                if rnd % 2 == 0:  # T(upper bound) is a lower bound: feasible
                    for q in range(n_live):
                        c = live[q]
                        lam_low[c] = lam[c]
                if not changed:
                    break
            for j in range(a0, a1):
                i = cls_members[j]
                if room[i] <= 0.0:
                    if phase == 1:
                        bind[i] = -1
                    continue
                b1 = np.inf
                ak = -1
                for k in range(n_layers):
                    c = mem[i, k]
                    if c >= 0 and lam_low[c] < b1:
                        b1 = lam_low[c]
                        ak = c
                inc = room[i]
                cut = False
                if b1 < np.inf and weight[i] * b1 < inc:
                    inc = weight[i] * b1
                    cut = True
                x_w[i] += inc
                for k in range(n_layers):
                    c = mem[i, k]
                    if c >= 0:
                        load_w[c] += count[i] * inc
                if phase == 1:
                    bind[i] = ak if cut else -1
    return rounds


@njit(cache=True, nogil=True)
def constraint_load(count: np.ndarray, x_w: np.ndarray, mem: np.ndarray, m: int) -> np.ndarray:
    """Per constraint: ``sum count*x`` over its member consumers."""
    out = np.zeros(m)
    for i in range(count.shape[0]):
        v = count[i] * x_w[i]
        for k in range(mem.shape[1]):
            c = mem[i, k]
            if c >= 0:
                out[c] += v
    return out


@njit(cache=True, nogil=True)
def group_by_class(grp_ptr: np.ndarray, grp_members: np.ndarray, cls_of: np.ndarray, n_classes: int,
                   con_ptr: np.ndarray, con_members: np.ndarray) -> None:
    """Counting sort of every constraint's members (``grp_members[grp_ptr[c]:grp_ptr[c+1]]``) by
    priority class, stable: ``con_members[con_ptr[c, k]:con_ptr[c, k+1]]`` are the class-k members of c."""
    counts = np.zeros(n_classes, np.int64)
    for c in range(grp_ptr.shape[0] - 1):
        s0 = grp_ptr[c]
        s1 = grp_ptr[c + 1]
        counts[:] = 0
        for s in range(s0, s1):
            counts[cls_of[grp_members[s]]] += 1
        pos = s0
        for k in range(n_classes):
            con_ptr[c, k] = pos
            pos += counts[k]
            counts[k] = con_ptr[c, k]  # now the next free slot of class k
        con_ptr[c, n_classes] = pos
        for s in range(s0, s1):
            i = grp_members[s]
            k = cls_of[i]
            con_members[counts[k]] = i
            counts[k] += 1
