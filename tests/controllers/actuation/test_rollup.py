"""The verifier's compiled per-node pass against its NumPy formulation."""

from __future__ import annotations

import numpy as np
import pytest

from controllers.actuation.rollup import node_rollup


def numpy_rollup(first: np.ndarray, count: np.ndarray, enf: np.ndarray, req: np.ndarray, power: np.ndarray,
                 tol: float) -> tuple[np.ndarray, ...]:
    ok = np.minimum.reduceat((np.isfinite(enf) & (enf <= req + tol)).astype(np.int8), first) > 0
    req_min = np.minimum.reduceat(np.where(np.isnan(req), np.inf, req), first)
    req_mean = np.add.reduceat(np.nan_to_num(req, nan=0.0), first) / count
    draw = np.add.reduceat(power, first) / count
    enf_max = np.maximum.reduceat(np.where(np.isnan(enf), -np.inf, enf), first)
    return ok, req_min, req_mean, draw, enf_max


@pytest.mark.parametrize("seed", range(5))
def test_the_compiled_pass_is_the_numpy_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = rng.integers(1, 9, 2000).astype(np.intp)
    first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.intp)
    g = int(count.sum())
    req = rng.uniform(100, 700, g)
    enf = req + rng.uniform(-5, 3, g)  # some enforce above their request (+1 W tolerance)
    power = rng.uniform(50, 700, g)
    for a, share in ((req, 0.02), (enf, 0.03), (power, 0.02)):
        a[rng.random(g) < share] = np.nan  # unsent, unknown, unmeasured
    req[:8] = np.nan  # a node with nothing sent at all
    got = node_rollup(first, count, enf, req, power, 1.0)
    want = numpy_rollup(first, count, enf, req, power, 1.0)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[4], want[4])
    for x, y in zip(got[2:4], want[2:4], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-9)  # NaN where NaN
    assert np.isinf(got[1][0]) and not got[0][0] and np.isnan(got[3]).any() and got[0].any()
