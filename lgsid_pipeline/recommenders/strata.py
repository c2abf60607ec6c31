"""Strata of the held-out targets, to show where geography matters in a results table.

Each stratum is a boolean mask over users, computed from the stage's target and history only
(never from a method's output), so every method is scored on the same user subsets:

* ``airport_or_popular``: the target is a hub (a given airport item) or among the most popular
  items by training count: places anyone might visit, where geography says little;
* ``near_recent``: the target lies within ``near_km`` of one of the user's last ``last_n``
  history items (the local-life case geography should help with);
* ``revisit``: the target already appears in the stage's history;
* ``long_jump``: the target is more than ``jump_km`` from the user's last history item (travel,
  where a "nearby" prior should hurt).

Strata overlap; they are not a partition. Items without coordinates make the geographic strata
False. :func:`stratified_scores` turns per-user Hit@10 / NDCG@10 arrays into per-stratum means
with bootstrap confidence intervals over users.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from lgsid_pipeline.geo import haversine_km

from .data import SplitData
from .heuristics import item_counts, popularity_order
from .reachability import reachable_share_per_user

STRATA = ("airport_or_popular", "near_recent", "revisit", "long_jump")


def item_coords(split: SplitData, item_lat, item_lon) -> tuple[np.ndarray, np.ndarray]:
    """``item_lat`` / ``item_lon`` as float64 arrays, checked to be aligned to the split's items."""
    lat = np.asarray(item_lat, dtype=np.float64)
    lon = np.asarray(item_lon, dtype=np.float64)
    if lat.shape != (split.n_items,) or lon.shape != (split.n_items,):
        raise ValueError(
            f"item_lat / item_lon must be aligned to the split's {split.n_items} items; got {lat.shape}, {lon.shape}"
        )
    return lat, lon


def _airport_mask(split: SplitData, airports) -> np.ndarray:
    out = np.zeros(split.n_items, dtype=bool)
    if airports is None:
        return out
    a = np.asarray(airports)
    if a.dtype == bool:
        if a.shape != (split.n_items,):
            raise ValueError("a boolean airports mask must have one entry per item")
        return a.copy()
    a = a.astype(np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= split.n_items):
        raise ValueError("airport item indices must lie in [0, n_items)")
    out[a] = True
    return out


def popular_items(split: SplitData, share: float = 0.01) -> np.ndarray:
    """Item indices of the top ``share`` of the catalogue by training count (at least one item;
    ties broken by lower index; items never seen in training are never "popular")."""
    if not 0 < share <= 1:
        raise ValueError(f"popular_share must be in (0, 1], got {share}")
    n_top = max(1, math.ceil(share * split.n_items))
    counts = item_counts(split, "test", "train")
    top = popularity_order(split, "test", "train")[:n_top]
    return top[counts[top] > 0]


def target_strata(
    split: SplitData,
    item_lat,
    item_lon,
    *,
    airports=None,
    popular_share: float = 0.01,
    near_km: float = 3.0,
    last_n: int = 5,
    jump_km: float = 10.0,
    stage: str = "test",
) -> dict[str, np.ndarray]:
    """Boolean masks over users, one per stratum of :data:`STRATA` (see the module docstring).

    ``airports`` is an array of item indices (or a boolean mask over items); popularity is the
    training count (top ``popular_share`` of items). ``near_recent`` uses the same distance rule
    as the reachability figure (:func:`reachable_share_per_user`), so it marks exactly the
    targets that count as reachable there.
    """
    if near_km <= 0 or jump_km <= 0 or last_n <= 0:
        raise ValueError("near_km, jump_km and last_n must be positive")
    lat, lon = item_coords(split, item_lat, item_lon)
    target = split.target(stage).astype(np.int64)
    hist = split.history(stage)

    hub = _airport_mask(split, airports)
    hub[popular_items(split, popular_share)] = True

    share = reachable_share_per_user(target[:, None], hist, lat, lon, km=near_km, last_n=last_n)
    near = np.nan_to_num(share, nan=0.0) > 0

    lens = np.fromiter((h.size for h in hist), dtype=np.int64, count=len(hist))
    flat = np.concatenate(hist).astype(np.int64) if lens.sum() else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(split.n_users), lens)
    revisit = np.bincount(owner[flat == target[owner]], minlength=split.n_users) > 0

    last = split.last_item(stage)
    d = haversine_km(lat[target], lon[target], lat[last], lon[last])
    jump = np.isfinite(d) & (d > jump_km)
    return {"airport_or_popular": hub[target], "near_recent": near, "revisit": revisit, "long_jump": jump}


def target_reachability(split: SplitData, item_lat, item_lon, km: float = 3.0, last_n: int = 5,
                        stage: str = "test") -> float:
    """Share of the stage's targets within ``km`` of one of the user's last ``last_n`` items.

    The ceiling / reference for the reachability figure of top-10 lists: it is
    :func:`reachable_share` applied to a one-item list holding the target (users whose target
    or recent items have no coordinates are left out; NaN when none is located).
    """
    lat, lon = item_coords(split, item_lat, item_lon)
    target = split.target(stage).astype(np.int64)
    share = reachable_share_per_user(target[:, None], split.history(stage), lat, lon, km=km, last_n=last_n)
    return float(np.nanmean(share)) if np.isfinite(share).any() else float("nan")


def _boot_ci(values: list[np.ndarray], rng: np.random.Generator, n_boot: int,
             confidence: float) -> list[tuple[float, float]]:
    """Percentile bootstrap CI of the mean for each array in ``values`` (same length), with the
    same user resamples for all of them; drawn in chunks of at most ~2M indices."""
    n = values[0].size
    chunk = max(1, 2_000_000 // n)
    boots = np.empty((len(values), n_boot))
    for s in range(0, n_boot, chunk):
        m = min(chunk, n_boot - s)
        idx = rng.integers(0, n, size=(m, n))
        for j, v in enumerate(values):
            boots[j, s : s + m] = v[idx].mean(axis=1)
    q = [0.5 - confidence / 2.0, 0.5 + confidence / 2.0]
    return [tuple(float(x) for x in np.quantile(b, q)) for b in boots]


def stratified_scores(
    per_user: dict[str, tuple[np.ndarray, np.ndarray]],
    masks: dict[str, np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict]:
    """Per stratum and method: Hit@10 / NDCG@10 means over the stratum's users, with bootstrap CIs.

    ``per_user`` maps a method to its per-user (hit@10, ndcg@10) arrays over all users (e.g.
    :func:`per_user_hit_ndcg` of its ranks); ``masks`` maps a stratum to a boolean user mask.
    Within a stratum every method is resampled with the same user draws (a Generator seeded
    by ``seed`` and the stratum name, so adding strata leaves the others' intervals unchanged). Rows:
    ``stratum, share, users, method, hit@10, hit@10_ci_low, hit@10_ci_high, ndcg@10,
    ndcg@10_ci_low, ndcg@10_ci_high``; an empty stratum gives NaN scores.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not per_user:
        raise ValueError("per_user holds no method")
    arrays = {}
    n_users = None
    for method, (hit, ndcg) in per_user.items():
        h = np.asarray(hit, dtype=np.float64)
        g = np.asarray(ndcg, dtype=np.float64)
        if h.ndim != 1 or h.shape != g.shape or (n_users is not None and h.size != n_users):
            raise ValueError(f"method {method!r}: hit and ndcg must be 1-D arrays over the same users")
        n_users = h.size
        arrays[method] = (h, g)
    rows: list[dict] = []
    for stratum, mask in masks.items():
        m = np.asarray(mask, dtype=bool)
        if m.shape != (n_users,):
            raise ValueError(f"stratum {stratum!r}: mask must have one entry per user ({n_users})")
        n_s = int(m.sum())
        share = n_s / n_users if n_users else float("nan")
        if n_s:
            vals = [v[m] for pair in arrays.values() for v in pair]
            cis = _boot_ci(vals, np.random.default_rng([seed, zlib.crc32(str(stratum).encode())]), n_boot, confidence)
        for j, method in enumerate(arrays):
            row = {"stratum": stratum, "share": share, "users": n_s, "method": method}
            for t, name in enumerate(("hit@10", "ndcg@10")):
                if n_s:
                    row[name] = float(vals[2 * j + t].mean())
                    row[f"{name}_ci_low"], row[f"{name}_ci_high"] = cis[2 * j + t]
                else:
                    row[name] = row[f"{name}_ci_low"] = row[f"{name}_ci_high"] = float("nan")
            rows.append(row)
    return rows
