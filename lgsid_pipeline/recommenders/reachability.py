"""Share of recommendations a user can reach: within ``km`` of one of their recent items.

"Recommends reachable items" is the local-life constraint of the paper (delivery / walking
distance). For each user the top-K list is compared with the user's last ``last_n`` history
items; a recommendation counts as reachable when its great-circle distance to at least one of
them is <= ``km``. Cost is users x K x last_n distances, never items x items. Items without
coordinates are left out of the share (a user with no located recommendation or no located
recent item is left out of the mean).
"""

from __future__ import annotations

import numpy as np

from lgsid_pipeline.geo import haversine_km


def recent_items(histories: list[np.ndarray], last_n: int) -> np.ndarray:
    """(users, last_n) matrix of the last ``last_n`` history items, -1 padded on the left."""
    out = np.full((len(histories), last_n), -1, dtype=np.int64)
    for u, h in enumerate(histories):
        tail = np.asarray(h[-last_n:], dtype=np.int64)
        if tail.size:
            out[u, last_n - tail.size :] = tail
    return out


def reachable_share_per_user(
    topk: np.ndarray,
    histories: list[np.ndarray],
    item_lat: np.ndarray,
    item_lon: np.ndarray,
    *,
    km: float = 3.0,
    last_n: int = 5,
) -> np.ndarray:
    """Per-user share of located top-K items within ``km`` of a located recent item (NaN if none)."""
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim != 2 or topk.shape[0] != len(histories):
        raise ValueError(f"topk must be (users, K) with one row per history; got {topk.shape}")
    if km <= 0 or last_n <= 0:
        raise ValueError("km and last_n must be positive")
    lat = np.asarray(item_lat, dtype=np.float64)
    lon = np.asarray(item_lon, dtype=np.float64)
    rec = recent_items(histories, last_n)
    rec_ok = rec >= 0
    r_lat = np.where(rec_ok, lat[np.maximum(rec, 0)], np.nan)
    r_lon = np.where(rec_ok, lon[np.maximum(rec, 0)], np.nan)
    top_ok = topk >= 0
    t_lat = np.where(top_ok, lat[np.maximum(topk, 0)], np.nan)
    t_lon = np.where(top_ok, lon[np.maximum(topk, 0)], np.nan)
    d = haversine_km(t_lat[:, :, None], t_lon[:, :, None], r_lat[:, None, :], r_lon[:, None, :])
    d = np.where(np.isnan(d), np.inf, d)
    reach = (d <= km).any(axis=2)
    located = np.isfinite(t_lat) & (np.isfinite(r_lat).any(axis=1)[:, None])
    n_loc = located.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_loc > 0, (reach & located).sum(axis=1) / n_loc, np.nan)
    return share


def reachable_share(topk, histories, item_lat, item_lon, *, km: float = 3.0, last_n: int = 5) -> float:
    """Mean over users of :func:`reachable_share_per_user` (NaN when nothing is located)."""
    s = reachable_share_per_user(topk, histories, item_lat, item_lon, km=km, last_n=last_n)
    return float(np.nanmean(s)) if np.isfinite(s).any() else float("nan")
