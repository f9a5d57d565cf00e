"""What keeps the control period on time in a process that also does other work.

The control loop shares its process (and, on a small box or a pinned controller, its core)
with the store writer and paho's network thread. Two things stretched a 1M-GPU period far
beyond its CPU time (``bench/period.py``):

- **the store writer** competing for the core: SQLite releases the GIL while it inserts, so
  the OS shares the core fairly between the loop and the writer, and a period that should
  take 0.4 s took up to 2 s. ``lower_this_thread`` puts a background thread in Linux's
  ``SCHED_IDLE`` class (nice 19 where that is refused): it runs in the time the loop leaves,
  and a bounded queue in front of it says so when that time is not enough.
- **the cyclic garbage collector** walking every object of a large site (series keys, the
  registry, layouts) in a full collection: 12 collections of up to 224 ms in 50 periods at
  1M GPUs. ``freeze_heap`` moves everything alive once the plane is warm into the
  permanent generation (``gc.freeze``), so later collections walk only what is new.
"""

from __future__ import annotations

import gc
import logging
import os
import threading

log = logging.getLogger("powerplane.realtime")

GC_GEN0 = 20_000  # allocations between two young collections (CPython's default: 700)


def lower_this_thread() -> str:
    """Let the calling thread run only when nothing else of higher class wants the CPU; what was done."""
    tid = threading.get_native_id()
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))  # Linux: per thread
            return "SCHED_IDLE"
        except OSError:
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
        return "nice 19"
    except (OSError, AttributeError):
        return "unchanged"


def freeze_heap() -> int:
    """Collect once, then keep everything alive out of later collections; the objects frozen."""
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)
    return gc.get_freeze_count()
