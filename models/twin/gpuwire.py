"""The twin's GPU boards on the wire: topics and the compact power encoding (pure; no I/O).

An agent with ``--backend sim`` sets the GPU power limits of the nodes it serves by
publishing to the twin, and reads enforced limits and power back, one message per rack::

    twin/<site>/gpu/set            agent -> twin  QoS 1
        {"rack": "r01", "nodes": [0, 1, ...] (rack-local, [] = all), "caps_mw": "<b64 uint32 per GPU>"}
    twin/<site>/gpu/state/<rack>   twin -> agents QoS 0, retained, every BOARD_PERIOD_S of site time
        {"ts_ns": ..., "limit_mw": "<b64 uint32 per GPU of the rack>", "power_mw": "<same>"}

The twin side is ``twin.boards``, the agent side ``controllers.actuation.simbackend``.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

BOARD_PERIOD_S = 0.25  # NVML's power reading is a 1 s average; the twin reports four times as often
MAX_SET_BYTES = 64 * 1024


def set_topic(site: str) -> str:
    """Where agents send GPU power limits to the twin."""
    return f"twin/{site}/gpu/set"


def state_topic(site: str, rack: str) -> str:
    """Where the twin reports a rack's GPU limits and power."""
    return f"twin/{site}/gpu/state/{rack}"


def encode_mw(w: np.ndarray) -> str:
    """Watts as base64 uint32 milliwatts."""
    return base64.b64encode(np.round(np.clip(w, 0, 4e6) * 1000.0).astype("<u4").tobytes()).decode()


def decode_mw(text: str, n: int) -> np.ndarray | None:
    """Inverse of ``encode_mw``; None unless exactly ``n`` values."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 4 * n:
        return None
    return np.frombuffer(raw, "<u4").astype(np.float64) / 1000.0
