"""Independent cross-check: the same instance as a linear program, solved by HiGHS.

Lexicographic priority: for each class in order 0, 1, ... maximise the class's total
allocation (up to demand) under every constraint and bound, with the totals of the classes
above held at their optimum. Max-min fairness inside a class and the maximum total can
differ when two hierarchies cross (the feasible set is then not a polymatroid);
``class_gaps`` measures by how much. scipy is a test/benchmark dependency, imported here
only when the cross-check runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from controllers.allocate import Allocation, Structure
from models.errors import ControlError

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LpResult:
    """Per priority class: the LP's optimum total (GPU watts up to demand) and the solve time."""

    classes: NDArray[np.int16]
    totals_w: F64
    solve_ms: float


def lexicographic_totals(s: Structure, floor_w: F64, demand_w: F64, cap_w: F64, rel_hold: float = 1e-9) -> LpResult:
    """Best total per priority class, classes in order, as HiGHS finds it."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, vstack

    d = np.clip(demand_w, floor_w, None)
    ii, kk = np.nonzero(s.mem >= 0)
    a_ub = csr_matrix((s.count[ii], (s.mem[ii, kk], ii)), shape=(s.n_constraints, s.n))
    rows = [a_ub]
    rhs = [cap_w]
    bounds = np.stack([floor_w, d], axis=1)
    totals = np.zeros(len(s.classes))
    t0 = time.perf_counter()
    for k, prio in enumerate(s.classes):
        mask = (s.priority == prio).astype(np.float64)
        c = -(s.count * mask)
        res = linprog(c, A_ub=vstack(rows).tocsr(), b_ub=np.concatenate(rhs), bounds=bounds, method="highs")
        if res.status != 0:
            raise ControlError(f"HiGHS failed on class {prio}: {res.message}")
        totals[k] = -res.fun
        # Hold this class at (almost) its optimum while the next ones are maximised.
        rows.append(csr_matrix(-(s.count * mask)[None, :]))
        rhs.append(np.array([-totals[k] * (1.0 - rel_hold)]))
    return LpResult(s.classes, totals, (time.perf_counter() - t0) * 1e3)


def class_totals(s: Structure, alloc: Allocation, demand_w: F64, floor_w: F64) -> F64:
    """Our total per class, counting allocation up to demand (headroom above it is not served load)."""
    served = np.minimum(alloc.x_w, np.clip(demand_w, floor_w, None)) * s.count
    return np.array([served[s.priority == p].sum() for p in s.classes])


def class_gaps(ours_w: F64, lp_w: F64) -> F64:
    """Relative shortfall of ours against the LP per class (negative: ours is larger)."""
    return np.where(lp_w > 0, (lp_w - ours_w) / np.where(lp_w > 0, lp_w, 1.0), 0.0)
