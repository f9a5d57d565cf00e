"""A writer process for the crash drill: spools numbered batches, prints each number once acknowledged.

Run: python -m tests.store.writer_proc URL SPOOL_DIR FIRST_BATCH
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from models.readings import ReadingBatch, SeriesRegistry
from store.influx import InfluxSink

SERIES = 50
T0_MS = 1_700_000_000_000


def batch_of(k: int, reg: SeriesRegistry) -> ReadingBatch:
    """Batch ``k``: one point per series at ``T0 + k`` ms, value ``k * 1000 + series``."""
    sids = np.array([reg.id("power.power_w", site="drill", level="node", id=f"n{i}") for i in range(SERIES)],
                    np.int32)
    return ReadingBatch.of((T0_MS + k) * 1_000_000, sids, k * 1000.0 + np.arange(SERIES), 0, reg)


def main() -> None:
    """Write batches forever (until killed), acknowledging each on stdout."""
    url, spool, first = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    reg = SeriesRegistry()
    sink = InfluxSink(url, "", "org", "db", spool_dir=spool, batch_size=200, flush_interval_s=0.02)
    k = first
    while True:
        sink.write(batch_of(k, reg))
        print(k, flush=True)  # acknowledged: write() returned
        k += 1


if __name__ == "__main__":
    main()
