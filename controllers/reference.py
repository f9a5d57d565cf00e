"""Plain NumPy reference of ``controllers.kernels.allocate``: same allocation, other method.

Vectorised over all constraints at once; each constraint's level is found by an exact
sorted sweep (the kernel uses Newton first). Tests compare the two on many shapes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I32 = NDArray[np.int32]


def _levels(pc: NDArray[np.intp], cnt: F64, w: F64, e: F64, resid: F64) -> F64:
    """Per constraint: the level where ``sum cnt*min(e, w*L)`` reaches ``resid`` (inf if never)."""
    m = resid.shape[0]
    total = np.bincount(pc, cnt * e, minlength=m)
    out = np.full(m, np.inf)
    need = total > resid
    out[resid <= 0] = 0.0
    sel = need[pc] & (resid[pc] > 0)
    if not sel.any():
        return out
    pc, cnt, w, e = pc[sel], cnt[sel], w[sel], e[sel]
    bp = e / w
    o = np.lexsort((bp, pc))
    pc, cnt, w, e, bp = pc[o], cnt[o], w[o], e[o], bp[o]
    first = np.ones(pc.shape[0], bool)
    first[1:] = pc[1:] != pc[:-1]
    start = np.flatnonzero(first)
    grp = np.cumsum(first) - 1
    cw = cnt * w
    ce = cnt * e
    w_tot = np.add.reduceat(cw, start)
    cum_w = np.cumsum(cw)
    cum_e = np.cumsum(ce)
    base_w = (cum_w - cw)[start]
    base_e = (cum_e - ce)[start]
    w_before = cum_w - cw - base_w[grp]
    sat = cum_e - ce - base_e[grp]
    w_rem = w_tot[grp] - w_before
    f = sat + bp * w_rem
    hit = f >= resid[pc]
    pos = np.flatnonzero(hit)
    gpos, first_pos = np.unique(grp[pos], return_index=True)
    k = pos[first_pos]
    lvl = np.where(w_rem[k] > 0, (resid[pc[k]] - sat[k]) / np.where(w_rem[k] > 0, w_rem[k], 1.0), bp[k])
    out[pc[k]] = lvl
    del gpos
    return out


def allocate(count: F64, floor_w: F64, demand_w: F64, ceiling_w: F64, weight: F64, mem: I32,
             cls_ptr: I32, cls_members: I32, cap_w: F64, max_rounds: int,
             x_w: F64, bind: I32, load_w: F64) -> int:
    """NumPy version of ``kernels.allocate`` (same arguments except the constraint index)."""
    m = cap_w.shape[0]
    x_w[:] = floor_w
    bind[:] = -1
    memv = mem >= 0
    ii, kk = np.nonzero(memv)
    load_w[:] = np.bincount(mem[ii, kk], count[ii] * floor_w[ii], minlength=m)
    rounds = 0
    for phase in range(2):
        top = demand_w if phase == 0 else ceiling_w
        for p in range(cls_ptr.shape[0] - 1):
            idx = cls_members[cls_ptr[p]:cls_ptr[p + 1]]
            room = np.maximum(top[idx] - x_w[idx], 0.0)
            if not (room > 0).any():
                continue
            sub = mem[idx]  # (n_p, K)
            valid = sub >= 0
            ri, rk = np.nonzero(valid)
            pc = sub[ri, rk].astype(np.intp)
            resid = cap_w - load_w
            cnt, w = count[idx][ri], weight[idx][ri]
            lam = np.full(m, np.inf)
            lam_low = lam.copy()
            for rnd in range(max_rounds):
                lv = np.where(valid, lam[np.where(valid, sub, 0)], np.inf)
                a = np.argmin(lv, axis=1)
                mu1 = lv[np.arange(len(idx)), a]
                mu2 = np.partition(lv, 1, axis=1)[:, 1] if lv.shape[1] > 1 else np.full(len(idx), np.inf)
                is_arg = rk == a[ri]
                mu = np.where(is_arg, mu2[ri], mu1[ri])
                e = np.minimum(room[ri], w * mu)
                new = _levels(pc, cnt, w, e, resid)
                rounds += 1
                with np.errstate(invalid="ignore"):  # inf - inf where both are unbounded
                    close = (new == lam) | (np.isfinite(lam) & (np.abs(new - lam) <= 1e-9 * (1.0 + np.abs(lam))))
                lam = new
                if rnd % 2 == 0:
                    lam_low = lam.copy()
                if close.all():
                    break
            lv = np.where(valid, lam_low[np.where(valid, sub, 0)], np.inf)
            a = np.argmin(lv, axis=1)
            b1 = lv[np.arange(len(idx)), a]
            grant = weight[idx] * b1
            cut = (grant < room) & (room > 0)
            inc = np.where(cut, grant, room)
            x_w[idx] += inc
            load_w += np.bincount(pc, cnt * inc[ri], minlength=m)
            if phase == 1:
                bind[idx] = np.where(cut, sub[np.arange(len(idx)), a], -1)
    return rounds


def group_by_class(grp_ptr: I32, grp_members: I32, cls_of: I32, n_classes: int) -> tuple[I32, I32]:
    """NumPy twin of ``kernels.group_by_class``: one stable sort on (constraint, class)."""
    m = grp_ptr.shape[0] - 1
    con = np.repeat(np.arange(m, dtype=np.int64), np.diff(grp_ptr))
    key = con * (n_classes + 1) + cls_of[grp_members]
    o = np.argsort(key, kind="stable")
    bounds = np.arange(m, dtype=np.int64)[:, None] * (n_classes + 1) + np.arange(n_classes + 1)[None, :]
    return np.searchsorted(key[o], bounds).astype(np.int32), grp_members[o].astype(np.int32)
