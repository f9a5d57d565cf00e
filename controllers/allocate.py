"""The allocation problem and how it is solved.

Consumers are GPU slices: the GPUs of one server node (they share a job, a priority, every
constraint and, with node-level telemetry, a demand), each with ``count`` GPUs and per-GPU
``floor_w`` <= ``demand_w`` <= ``ceiling_w``, a ``weight`` and a ``priority`` (0 highest).
A consumer sits in one constraint per *layer* (``mem[i, k]``): the site IT budget, its
feed, UPS, hall, row, rack, PDU and server (where limited) and its cooling loop. Capacity
``cap_w[c]`` is in GPU watts (a limit's margin, static load and conversion gain already
taken out). Two hierarchies share the racks, so the constraints do not form a tree.

Allocation (``x_w`` per GPU of each consumer):

1. every consumer gets its floor (a constraint whose floors alone exceed it is infeasible);
2. priority classes in order 0, 1, ...: the class fills toward its demand, weighted max-min
   fair — consumer i at level L gets ``min(demand, floor + weight*L)``, and the level of
   every consumer stops at the first constraint that saturates (progressive filling);
3. the same again toward the ceiling, so spare power becomes headroom rather than being
   stranded (a cap above demand costs nothing: the GPU draws what it needs).

Each fill is solved as the fixed point of "every constraint's level given the levels of
all other constraints" (Jacobi iteration; even rounds are lower bounds of the fixed point
and therefore feasible, odd rounds upper bounds; they meet in a few rounds on power trees).
A constraint's own level is a 1-D problem on a concave piecewise-linear function: Newton
from the left, finished by an exact sorted sweep (``controllers.kernels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from controllers import kernels, reference

F64 = NDArray[np.float64]
I32 = NDArray[np.int32]
Method = Literal["numba", "numpy"]
MAX_ROUNDS = 64


@dataclass(frozen=True, eq=False)
class Structure:
    """Who sits in which constraint, indexed for the kernels; built once per topology.

    Membership (``mem``) is fixed by the power tree; priorities and weights follow the jobs.
    ``regroup`` re-indexes a structure for new priorities and weights without re-sorting the
    membership (``grp_*``, members by constraint, are kept): a counting sort per constraint.
    """

    count: F64  # GPUs per consumer
    weight: F64
    priority: NDArray[np.int16]
    mem: I32  # (n, K): constraint per layer, -1 for none
    n_constraints: int
    classes: NDArray[np.int16]  # the distinct priorities, highest (0) first
    cls_ptr: I32
    cls_members: I32
    con_ptr: I32  # (m, P+1)
    con_members: I32
    grp_ptr: I32  # (m+1,): members of constraint c are grp_members[grp_ptr[c]:grp_ptr[c+1]], ascending
    grp_members: I32

    @property
    def n(self) -> int:
        """Number of consumers."""
        return int(self.count.shape[0])

    @classmethod
    def build(cls, count: F64, weight: F64, priority: NDArray[np.integer], mem: NDArray[np.integer],
              n_constraints: int) -> Structure:
        """Index consumers by priority class and constraints by (constraint, class)."""
        count = np.ascontiguousarray(count, np.float64)
        mem32 = np.ascontiguousarray(mem, np.int32)
        n = count.shape[0]
        if mem32.ndim != 2 or mem32.shape[0] != n:
            raise ValueError("consumer arrays differ in length")
        if np.any(count <= 0):
            raise ValueError("counts must be > 0")
        if mem32.size and (mem32.max() >= n_constraints or mem32.min() < -1):
            raise ValueError("membership refers to an unknown constraint")
        ii, kk = np.nonzero(mem32 >= 0)
        cc = mem32[ii, kk]
        o = np.argsort(cc, kind="stable")
        grp_members = np.ascontiguousarray(ii[o], np.int32)
        grp_ptr = np.searchsorted(cc[o], np.arange(n_constraints + 1)).astype(np.int32)
        return cls._classed(count, weight, priority, mem32, int(n_constraints), grp_ptr, grp_members)

    def regroup(self, weight: F64, priority: NDArray[np.integer]) -> Structure:
        """The same consumers and constraints with new weights and priorities (the jobs changed)."""
        return self._classed(self.count, weight, priority, self.mem, self.n_constraints, self.grp_ptr,
                             self.grp_members)

    @classmethod
    def _classed(cls, count: F64, weight: F64, priority: NDArray[np.integer], mem: I32, n_constraints: int,
                 grp_ptr: I32, grp_members: I32) -> Structure:
        n = count.shape[0]
        weight = np.ascontiguousarray(weight, np.float64)
        prio = np.asarray(priority, np.int16)
        if weight.shape != (n,) or prio.shape != (n,):
            raise ValueError("consumer arrays differ in length")
        if np.any(weight <= 0) or not np.all(np.isfinite(weight)):
            raise ValueError("weights must be finite and > 0")
        classes, cls_of = np.unique(prio, return_inverse=True)
        # int16 keys: numpy's stable argsort is a radix sort for them
        cls16 = cls_of.astype(np.int16)
        order = np.argsort(cls16, kind="stable").astype(np.int32)
        cls_ptr = np.searchsorted(cls16[order], np.arange(len(classes) + 1)).astype(np.int32)
        con_ptr = np.empty((n_constraints, len(classes) + 1), np.int32)
        con_members = np.empty_like(grp_members)
        kernels.group_by_class(grp_ptr, grp_members, cls_of.astype(np.int32), len(classes), con_ptr, con_members)
        return cls(count, weight, prio, mem, n_constraints, classes.astype(np.int16), cls_ptr, order, con_ptr,
                   con_members, grp_ptr, grp_members)


@dataclass(frozen=True, eq=False)
class Allocation:
    """What one solve gives: per-GPU allocation of each consumer and its binding constraint."""

    x_w: F64
    bind: I32  # constraint that stops the consumer below its ceiling, -1 if none
    load_w: F64  # per constraint, GPU watts
    rounds: int
    floor_load_w: F64  # per constraint, GPU watts at the floors

    def infeasible(self, cap_w: F64, rel_tol: float = 1e-9) -> NDArray[np.intp]:
        """Constraints whose floors alone exceed their capacity."""
        return np.flatnonzero(self.floor_load_w > cap_w + rel_tol * np.abs(cap_w) + 1e-6)


def _check(s: Structure, floor_w: F64, demand_w: F64, ceiling_w: F64, cap_w: F64) -> tuple[F64, F64, F64, F64]:
    n = s.n
    arrs = [np.ascontiguousarray(a, np.float64) for a in (floor_w, demand_w, ceiling_w)]
    for name, a in zip(("floor_w", "demand_w", "ceiling_w"), arrs, strict=True):
        if a.shape != (n,):
            raise ValueError(f"{name} has shape {a.shape}, expected ({n},)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite (account stale consumers before solving)")
    cap = np.ascontiguousarray(cap_w, np.float64)
    if cap.shape != (s.n_constraints,) or np.isnan(cap).any():
        raise ValueError("cap_w must have one non-NaN value per constraint")
    lo, d, hi = arrs
    if np.any(lo > hi):
        raise ValueError("floor_w exceeds ceiling_w")
    return lo, np.clip(d, lo, hi), hi, cap


def solve(s: Structure, floor_w: F64, demand_w: F64, ceiling_w: F64, cap_w: F64,
          method: Method = "numba", max_rounds: int = MAX_ROUNDS) -> Allocation:
    """Allocate (see the module docstring); ``method`` picks the kernel or its NumPy reference."""
    lo, d, hi, cap = _check(s, floor_w, demand_w, ceiling_w, cap_w)
    x = np.empty(s.n)
    bind = np.empty(s.n, np.int32)
    load = np.empty(s.n_constraints)
    if method == "numba":
        rounds = kernels.allocate(s.count, lo, d, hi, s.weight, s.mem, s.cls_ptr, s.cls_members, s.con_ptr,
                                  s.con_members, cap, max_rounds, x, bind, load)
    elif method == "numpy":
        rounds = reference.allocate(s.count, lo, d, hi, s.weight, s.mem, s.cls_ptr, s.cls_members, cap,
                                    max_rounds, x, bind, load)
    else:
        raise ValueError(f"unknown method {method!r}")
    floor_load = kernels.constraint_load(s.count, lo, s.mem, s.n_constraints)
    return Allocation(x, bind, load, int(rounds), floor_load)
