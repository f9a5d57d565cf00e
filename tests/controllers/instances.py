"""Random allocation instances: a power tree plus a crossing loop partition."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from controllers.allocate import Structure

F64 = NDArray[np.float64]


@dataclass
class Instance:
    """One random problem."""

    s: Structure
    floor_w: F64
    demand_w: F64
    ceiling_w: F64
    cap_w: F64


def random_instance(seed: int, n: int = 60, depth: int = 4, fanout: int = 3, classes: int = 3,
                    tight: float = 0.7, loops: int = 3, int_counts: bool = True) -> Instance:
    """A site-like instance: nested groups (site > ... > rack) and loops across racks."""
    rng = np.random.default_rng(seed)
    # Tree: level 0 is the site, each lower level splits groups of the level above.
    layers = []
    group = np.zeros(n, np.int64)
    n_groups = 1
    offset = 0
    layers.append(group + offset)
    offset += n_groups
    for _ in range(1, depth):
        sub = rng.integers(0, fanout, n)
        group = group * fanout + sub
        _, group = np.unique(group, return_inverse=True)
        n_groups = int(group.max()) + 1
        layers.append(group + offset)
        offset += n_groups
    rack = layers[-1] - (offset - n_groups)
    loop_of_rack = rng.integers(0, max(1, loops), n_groups)
    layers.append(loop_of_rack[rack] + offset)
    offset += max(1, loops)
    mem = np.stack(layers, axis=1).astype(np.int32)
    # Some constraints absent (unlimited), as PDUs and nodes without limits are.
    drop = rng.random(mem.shape) < 0.1
    drop[:, 0] = False
    mem[drop] = -1
    count = rng.integers(1, 5, n).astype(np.float64) if int_counts else rng.uniform(0.5, 4, n)
    weight = rng.choice([1.0, 1.0, 2.0, 0.5], n)
    prio = rng.integers(0, classes, n)
    floor_w = rng.uniform(100, 300, n)
    ceiling_w = floor_w + rng.uniform(0, 600, n)
    demand_w = rng.uniform(floor_w * 0.8, ceiling_w * 1.1)
    s = Structure.build(count, weight, prio, mem, offset)
    load_ceiling = np.bincount(mem[mem >= 0], np.repeat(count * ceiling_w, mem.shape[1])[mem.ravel() >= 0],
                               minlength=offset)
    load_floor = np.bincount(mem[mem >= 0], np.repeat(count * floor_w, mem.shape[1])[mem.ravel() >= 0],
                             minlength=offset)
    frac = rng.uniform(tight * 0.6, min(1.2, tight * 1.4), offset)
    cap_w = load_floor + frac * (load_ceiling - load_floor)
    return Instance(s, floor_w, demand_w, ceiling_w, cap_w)
