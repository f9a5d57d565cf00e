"""What keeps the control period on time in a process that also does other work.

The control loop shares its process (and, on a small box or a pinned controller, its core)
with the store writer and paho's network thread. Two things stretched a 1M-GPU period far
beyond its CPU time (``bench/period.py``):

- **the store writer** competing for the core: SQLite releases the GIL while it inserts, so
  the OS shared the core between the loop and the writer, and a period that should take
  0.4 s took up to 2 s. ``ControlPlane.between_periods`` is the gate the writer waits on
  before each chunk (``runtime.StoreWriter``): it writes in the time the loop leaves, and
  its bounded queue says so when that time is not enough. (Not a lower OS priority for the
  writer: on a box busy with other processes that would starve the store.)
- **the cyclic garbage collector** walking every object of a large site (series keys, the
  registry, layouts) in a full collection: 12 collections of up to 224 ms in 50 periods at
  1M GPUs. ``freeze_heap`` moves everything alive once the plane is warm into the
  permanent generation (``gc.freeze``), so later collections walk only what is new.
"""

from __future__ import annotations

import gc

GC_GEN0 = 20_000  # allocations between two young collections (CPython's default: 700)


def freeze_heap() -> int:
    """Keep everything alive out of later collections; the objects frozen.

    No collection first: a full one inside a period is exactly the pause this avoids (the
    demo missed a period to it). ``collect_before_start`` runs one while nothing is timed;
    cyclic garbage made in the few periods between the two stays (a one-time, bounded cost).
    """
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)
    return gc.get_freeze_count()


def collect_before_start() -> None:
    """One full collection before the first period (start-up garbage: configuration, compilation)."""
    gc.collect()
