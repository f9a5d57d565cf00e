"""Energy, PUE, peaks, headroom, demand-response compliance and downsampling: pure pandas.

Every function takes time-indexed frames as ``EmbeddedStore.query`` returns them (a UTC
``DatetimeIndex`` named ``time``, tag columns, ``value``) or plain Series, and returns values.

Gap rule. Power is integrated with the trapezoid rule between consecutive samples of one
series, except across a gap: an interval longer than ``max_gap_factor`` (default 3) times
the series' median interval contributes nothing. A collector that was down for ten
minutes thus leaves ten minutes of unknown energy instead of a straight line drawn across
the outage; ``coverage`` reports how much of the span was integrated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

MAX_GAP_FACTOR = 3.0
_NS_PER_S = 1e9
_WS_PER_KWH = 3.6e6


def _series(data: pd.Series | pd.DataFrame) -> pd.Series:
    s = data["value"] if isinstance(data, pd.DataFrame) else data
    s = s[~s.index.duplicated(keep="last")].sort_index()
    return s.astype(np.float64)


def _times_s(s: pd.Series) -> NDArray[np.float64]:
    return np.asarray(pd.DatetimeIndex(s.index).as_unit("ns").asi8, np.float64) / _NS_PER_S


@dataclass(frozen=True, slots=True)
class Energy:
    """Energy of one power series and how much of its span it covers."""

    kwh: float
    integrated_s: float  # seconds inside intervals that were integrated
    span_s: float  # first to last sample
    gaps: int  # intervals skipped by the gap rule

    @property
    def coverage(self) -> float:
        """Share of the span that was integrated (1.0 without gaps)."""
        return self.integrated_s / self.span_s if self.span_s > 0 else 0.0


def energy(power_w: pd.Series | pd.DataFrame, *, max_gap_factor: float = MAX_GAP_FACTOR) -> Energy:
    """Energy of one power series (W), trapezoid rule, not across gaps (see the module docstring)."""
    s = _series(power_w)
    s = s[np.isfinite(s.to_numpy())]
    if len(s) < 2:
        return Energy(0.0, 0.0, 0.0, 0)
    t = _times_s(s)
    v = s.to_numpy()
    dt = np.diff(t)
    limit = max_gap_factor * float(np.median(dt))
    ok = dt <= limit
    ws = float(np.sum(0.5 * (v[1:] + v[:-1]) * dt * ok))
    return Energy(ws / _WS_PER_KWH, float(dt[ok].sum()), float(t[-1] - t[0]), int((~ok).sum()))


def energy_kwh(power_w: pd.Series | pd.DataFrame, *, max_gap_factor: float = MAX_GAP_FACTOR) -> float:
    """kWh of one power series (W), not integrated across gaps."""
    return energy(power_w, max_gap_factor=max_gap_factor).kwh


def energy_kwh_by(frame: pd.DataFrame, by: str = "id", *, max_gap_factor: float = MAX_GAP_FACTOR) -> pd.Series:
    """kWh per value of tag ``by`` (one series per group)."""
    out = {str(k): energy_kwh(g, max_gap_factor=max_gap_factor) for k, g in frame.groupby(by, sort=True)}
    return pd.Series(out, name="energy_kwh", dtype=np.float64)


def pue(facility_w: pd.Series | pd.DataFrame, it_w: pd.Series | pd.DataFrame, *,
        max_gap_factor: float = MAX_GAP_FACTOR) -> float:
    """PUE over the window: facility energy / IT energy (NaN without IT energy)."""
    it = energy_kwh(it_w, max_gap_factor=max_gap_factor)
    fac = energy_kwh(facility_w, max_gap_factor=max_gap_factor)
    return fac / it if it > 0 else float("nan")


def headroom(frame: pd.DataFrame, limit_w: pd.Series, by: str = "id") -> pd.DataFrame:
    """Per entity: ``peak_w``, ``mean_w``, ``limit_w``, ``min_headroom_w``, ``peak_pct`` of limit.

    ``limit_w`` maps the values of tag ``by`` to each entity's limit (W).
    """
    rows = []
    for key, g in frame.groupby(by, sort=True):
        v = _series(g)
        lim = float(limit_w.get(key, np.nan))
        peak = float(v.max())
        rows.append({by: str(key), "peak_w": peak, "mean_w": float(v.mean()), "limit_w": lim,
                     "min_headroom_w": lim - peak, "peak_pct": 100.0 * peak / lim if lim > 0 else np.nan})
    cols = [by, "peak_w", "mean_w", "limit_w", "min_headroom_w", "peak_pct"]
    return pd.DataFrame(rows, columns=cols).set_index(by)


def level_summary(frame: pd.DataFrame, limit_w: pd.Series, by: str = "id") -> pd.Series:
    """One level's busiest moment: entities, highest peak, and the entity with the least headroom."""
    h = headroom(frame, limit_w, by)
    if h.empty:
        return pd.Series({"entities": 0, "peak_w": np.nan, "min_headroom_w": np.nan, "tightest": ""})
    finite = h[np.isfinite(h["min_headroom_w"])]
    tight = finite["min_headroom_w"].idxmin() if not finite.empty else ""
    return pd.Series({"entities": len(h), "peak_w": float(h["peak_w"].max()),
                      "min_headroom_w": float(finite["min_headroom_w"].min()) if not finite.empty else np.nan,
                      "tightest": str(tight)})


@dataclass(frozen=True, slots=True)
class DrCompliance:
    """How the site held demand-response targets over a window."""

    active_s: float  # time with an event in force
    over_s: float  # of which facility power exceeded the target
    max_excess_w: float  # worst excess over the target
    excess_kwh: float  # energy drawn above the target

    @property
    def compliance(self) -> float:
        """Share of DR time at or under the target (1.0 when there was no event)."""
        return 1.0 - self.over_s / self.active_s if self.active_s > 0 else 1.0


def dr_compliance(facility_w: pd.Series | pd.DataFrame, dr_active: pd.Series | pd.DataFrame,
                  dr_target_w: pd.Series | pd.DataFrame, *, max_gap_factor: float = MAX_GAP_FACTOR) -> DrCompliance:
    """Facility power against the DR target while ``dr_active`` is 1 (signals held until they change)."""
    fac = _series(facility_w)
    if len(fac) < 2:
        return DrCompliance(0.0, 0.0, 0.0, 0.0)
    act = _series(dr_active).reindex(fac.index, method="ffill").fillna(0.0).to_numpy() > 0.5
    tgt = _series(dr_target_w).reindex(fac.index, method="ffill").to_numpy()
    t = _times_s(fac)
    dt = np.diff(t)
    ok = dt <= max_gap_factor * float(np.median(dt))
    # Each interval takes the state at its start (a step-wise view of the signals).
    a = act[:-1] & ok & np.isfinite(tgt[:-1])
    excess = np.where(a, np.maximum(fac.to_numpy()[:-1] - np.nan_to_num(tgt[:-1]), 0.0), 0.0)
    over = a & (excess > 0)
    return DrCompliance(float(dt[a].sum()), float(dt[over].sum()), float(excess.max(initial=0.0)),
                        float((excess * dt).sum()) / _WS_PER_KWH)


def downsample(frame: pd.DataFrame, every: str, how: str = "mean", by: tuple[str, ...] = ()) -> pd.DataFrame:
    """``value`` aggregated into ``every`` buckets (pandas offset, e.g. ``"1min"``) per tag group ``by``."""
    if frame.empty:
        return frame[[*by, "value"]].copy()
    if not by:
        return frame[["value"]].resample(every).agg(how).dropna()
    parts = []
    for key, g in frame.groupby(list(by), sort=True):
        r = g[["value"]].resample(every).agg(how).dropna()
        keys = key if isinstance(key, tuple) else (key,)
        for name, val in zip(by, keys, strict=True):
            r[name] = val
        parts.append(r)
    return pd.concat(parts)[[*by, "value"]]
