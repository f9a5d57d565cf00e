"""Argparse types for numeric flags: finite, in range, or a clear usage error (exit 2).

Every numeric flag of the ``powerplane`` command line goes through ``finite_number``, so
``--at nan`` cannot hang a loop that waits for ``t >= at``, ``--speed inf`` cannot divide a
duration into zero and ``--safe-cap-w inf`` cannot switch a fallback off::

    p.add_argument("--at", type=finite_number(float, ge=0, le=86_400), default=0.0)
    p.add_argument("--racks", type=finite_number(int, ge=1, le=MAX_RACKS), required=True)

A bad value is reported by argparse as ``argument --at: must be >= 0, got '-5'`` with exit
status 2, before any command runs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import overload


@overload
def finite_number(kind: type[int], *, ge: float | None = None, gt: float | None = None,
                  le: float | None = None, lt: float | None = None) -> Callable[[str], int]: ...


@overload
def finite_number(kind: type[float] = float, *, ge: float | None = None, gt: float | None = None,
                  le: float | None = None, lt: float | None = None) -> Callable[[str], float]: ...


def finite_number(kind: type[int] | type[float] = float, *, ge: float | None = None, gt: float | None = None,
                  le: float | None = None, lt: float | None = None) -> Callable[[str], int] | Callable[[str], float]:
    """An argparse ``type=`` that parses ``kind`` (int or float), finite and within the bounds given.

    ``ge``/``gt`` and ``le``/``lt`` are inclusive/exclusive bounds. Ints are parsed as
    decimal integers only (``1.5``, ``1e3``, ``true`` are refused); floats refuse NaN and
    infinities, including overflows such as ``1e999``.
    """
    if kind is not int and kind is not float:
        raise TypeError(f"finite_number parses int or float, not {kind!r}")
    noun = "an integer" if kind is int else "a number"

    def show(bound: float) -> str:
        return str(int(bound)) if kind is int and float(bound).is_integer() else f"{bound:g}"

    def parse(text: str) -> int | float:
        value: int | float
        try:
            value = int(text, 10) if kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text[:40]!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text[:40]!r}")
        if ge is not None and not value >= ge:
            raise argparse.ArgumentTypeError(f"must be >= {show(ge)}, got {text[:40]!r}")
        if gt is not None and not value > gt:
            raise argparse.ArgumentTypeError(f"must be > {show(gt)}, got {text[:40]!r}")
        if le is not None and not value <= le:
            raise argparse.ArgumentTypeError(f"must be <= {show(le)}, got {text[:40]!r}")
        if lt is not None and not value < lt:
            raise argparse.ArgumentTypeError(f"must be < {show(lt)}, got {text[:40]!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


# Bounds shared by several commands.
# How far plan/advise simulate before answering (a compute loop: a week already takes minutes).
MAX_SIM_S = 7 * 86_400.0
# How long a service-like run may last (twin/demo/collect --duration): a deployment runs the twin
# "for a year" (deploy/compose.yaml); the bound only keeps the number finite.
MAX_RUN_S = 10 * 365 * 86_400.0
MAX_SPEED = 10_000.0  # simulated seconds per second
SEED = finite_number(int, ge=0, le=2**63 - 1)  # numpy's generators refuse negative seeds
PORT = finite_number(int, ge=0, le=65_535)
