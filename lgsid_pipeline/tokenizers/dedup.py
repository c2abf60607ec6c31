"""Uniqueness of semantic IDs: a separate, named step after ``tokenizer.transform``.

Two strategies:

* ``append_dedup_level(codes, order_key)``: a trailing digit counts the items that share the
  same raw code tuple, as in TIGER / GRID: 0 for the first by ``order_key`` (row order when
  None). ``dedup_order_key`` gives the orders: ``"item_id"`` (row order: the assets sort by
  item_id, so the digit is an arbitrary rank; kept as the ablation), ``"spatial"`` (the rank
  along a Hilbert curve over (lat, lon), so digit d is the d-th place along one global curve
  and items close in the bucket's area get close digits) and ``"popularity"`` (most visited
  first, so digit 0 is the bucket's head item in every bucket).
* ``greedy_reassign(tokenizer, X, items, codes)``: the second and later items of a colliding
  tuple move to the nearest free code at the last level (ranked by distance from the item's
  last-level residual to the alternative centres); if every last-level code under that prefix
  is taken, the item's code one level up is replaced by one of its ``fallback_candidates``
  nearest alternatives and the nearest free last-level code under the new prefix is taken.
  Each item tries a finite list of candidates, so the step always terminates; items still
  unresolved keep their raw code (``unique_sids`` then separates them with the appended digit).

``hub_codes(codes, popularity, share)`` (before either strategy) gives the most visited items
ID-like codes of their own: a new first-level code each, zeros below.

``assign_unique(new_codes, existing_codes)`` gives new items dedup digits that never clash
with a frozen table of existing SIDs, whose rows it never changes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

_CHUNK = 16_384


def _frame(codes: np.ndarray, name: str = "codes") -> pl.DataFrame:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D integer array (n_items, levels), got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {codes.dtype}")
    if codes.size and codes.min() < 0:
        raise ValueError(f"{name} row {int(np.flatnonzero((codes < 0).any(1))[0])} has a negative code")
    return pl.DataFrame({f"c{j}": codes[:, j].astype(np.int64) for j in range(codes.shape[1])})


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code tuple is shared with at least one other item."""
    df = _frame(codes)
    if df.height == 0:
        return 0.0
    shared = df.select((pl.len().over(df.columns) > 1).alias("s"))["s"]
    return float(shared.mean())


def n_duplicates(codes: np.ndarray) -> int:
    """Items beyond the first of each distinct code tuple (0 means every SID is unique)."""
    df = _frame(codes)
    return int(df.height - df.unique().height)


DEDUP_ORDERS = ("item_id", "spatial", "popularity")
DEDUP_STRATEGIES = ("append", "greedy")
HILBERT_BITS = 16  # per axis: about 300 m of latitude per step


def hilbert_index(lat: np.ndarray, lon: np.ndarray, bits: int = HILBERT_BITS) -> np.ndarray:
    """Position of each (lat, lon) along a Hilbert curve over the whole globe, int64.

    The classic ``xy2d`` rotation loop, vectorised over points (no library does it over
    numpy arrays). Points close on the curve are close on the map."""
    n = 1 << bits
    x = np.clip(((np.asarray(lon, dtype=np.float64) + 180.0) / 360.0 * n).astype(np.int64), 0, n - 1)
    y = np.clip(((np.asarray(lat, dtype=np.float64) + 90.0) / 180.0 * n).astype(np.int64), 0, n - 1)
    d = np.zeros(x.shape, dtype=np.int64)
    s = n >> 1
    while s > 0:
        rx = ((x & s) > 0).astype(np.int64)
        ry = ((y & s) > 0).astype(np.int64)
        d += s * s * ((3 * rx) ^ ry)
        flip = ry == 0
        swap_x = np.where(flip & (rx == 1), s - 1 - x, x)
        swap_y = np.where(flip & (rx == 1), s - 1 - y, y)
        x, y = np.where(flip, swap_y, swap_x), np.where(flip, swap_x, swap_y)
        s >>= 1
    return d


def dedup_order_key(items: pl.DataFrame | None, order: str, popularity: np.ndarray | None = None) -> np.ndarray | None:
    """Sort key (ascending) for the dedup digit; None for row order (``"item_id"``).

    ``"spatial"``: Hilbert index of (lat, lon); items without coordinates sort last.
    ``"popularity"``: minus ``popularity`` (visit counts aligned with the items' rows, e.g.
    training interactions per item), so the most visited item gets digit 0."""
    if order not in DEDUP_ORDERS:
        raise ValueError(f"unknown dedup order {order!r}; choose one of {DEDUP_ORDERS}")
    if order == "item_id":
        return None
    if order == "popularity":
        if popularity is None:
            raise ValueError("dedup order 'popularity' needs per-item visit counts")
        pop = np.asarray(popularity, dtype=np.float64)
        if items is not None and pop.shape[0] != items.height:
            raise ValueError(f"popularity has {pop.shape[0]} entries but items has {items.height} rows")
        return -pop
    if items is None or "lat" not in items.columns or "lon" not in items.columns:
        raise ValueError("dedup order 'spatial' needs the items' lat and lon columns")
    lat = items["lat"].cast(pl.Float64, strict=False).to_numpy()
    lon = items["lon"].cast(pl.Float64, strict=False).to_numpy()
    ok = np.isfinite(lat) & np.isfinite(lon)
    key = hilbert_index(np.where(ok, lat, 0.0), np.where(ok, lon, 0.0)).astype(np.float64)
    return np.where(ok, key, np.inf)


def hub_codes(codes: np.ndarray, popularity: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Give the most visited items ID-like codes of their own: ``(codes', hub rows)``.

    The top ``ceil(share * N)`` items by ``popularity`` (visit counts aligned with the rows,
    training interactions only; items never visited are never hubs; ties go to the lower row)
    get a new first-level code each, ``codes[:, 0].max() + 1 + rank``, and 0 at every other
    level. A hub is then one decision at the first level of the beam, not ``L`` decisions
    inside a crowded semantic prefix; the other items keep their codes unchanged. Motivation:
    on gowalla_nyc the random-ID control wins the "airport or top-1% popular" stratum, which
    holds about a third of the test targets (benchmarks/results/shootout.md)."""
    codes = np.asarray(codes)
    df = _frame(codes)
    pop = np.asarray(popularity, dtype=np.float64)
    if pop.shape != (df.height,):
        raise ValueError(f"popularity must have one entry per row ({df.height}), got shape {pop.shape}")
    if not 0.0 <= share < 1.0:
        raise ValueError(f"hub share must be in [0, 1), got {share}")
    n_hubs = min(int(np.ceil(share * df.height)), int((pop > 0).sum()))
    out = codes.astype(np.int32, copy=True)
    if n_hubs == 0:
        return out, np.zeros(0, dtype=np.int64)
    hubs = np.lexsort((np.arange(df.height), -pop))[:n_hubs]
    out[hubs] = 0
    out[hubs, 0] = int(codes[:, 0].max()) + 1 + np.arange(n_hubs)
    return out, hubs.astype(np.int64)


def append_dedup_level(codes: np.ndarray, order_key: np.ndarray | None = None) -> np.ndarray:
    """``(N, L) -> (N, L+1)``: trailing digit = rank of the item among those with the same
    tuple, by ``order_key`` ascending (row order when None; ties keep row order). The result is
    unique."""
    df = _frame(codes)
    if order_key is not None:
        key = np.asarray(order_key, dtype=np.float64)
        if key.shape != (df.height,):
            raise ValueError(f"order_key must have one entry per row ({df.height}), got shape {key.shape}")
        df = df.with_columns(pl.Series("_k", key), pl.int_range(pl.len()).alias("_r"))
        digit = df.select(pl.struct("_k", "_r").rank("ordinal").over([c for c in df.columns
                                                                     if c.startswith("c")]).alias("d"))["d"]
        digit = digit.to_numpy().astype(np.int64) - 1
    else:
        digit = df.select(pl.int_range(pl.len()).over(df.columns).alias("d"))["d"].to_numpy()
    return np.concatenate([np.asarray(codes, dtype=np.int32), digit.astype(np.int32)[:, None]], axis=1)


def collision_figures(codes: np.ndarray, sids: np.ndarray | None = None, prompts: list[str] | None = None) -> dict[str, Any]:
    """What the dedup digit has to carry, per method: the collision rate before dedup, the
    largest digit, bucket-size quantiles (items per raw code tuple, over items: the q50 is the
    bucket size of the median item) and, with ``prompts``, the share of items whose prompt is
    byte-identical to another item's: the floor no text tokenizer can get under."""
    df = _frame(codes)
    size = df.select(pl.len().over(df.columns).alias("n"))["n"].to_numpy()
    out: dict[str, Any] = {
        "collision_rate_before": float((size > 1).mean()) if size.size else 0.0,
        "buckets": int(df.unique().height),
        "bucket_size_q50": float(np.quantile(size, 0.5)) if size.size else 0.0,
        "bucket_size_q90": float(np.quantile(size, 0.9)) if size.size else 0.0,
        "bucket_size_q99": float(np.quantile(size, 0.99)) if size.size else 0.0,
        "bucket_size_max": int(size.max()) if size.size else 0,
    }
    if sids is not None:
        out["max_digit"] = int(np.asarray(sids)[:, -1].max()) if len(sids) else 0
    if prompts is not None:
        if len(prompts) != df.height:
            raise ValueError(f"prompts has {len(prompts)} entries but codes has {df.height} rows")
        out["identical_prompt_share"] = float(pl.Series(prompts, dtype=pl.Utf8).is_duplicated().mean()) if prompts else 0.0
    return out


def assign_unique(new_codes: np.ndarray, existing_codes: np.ndarray) -> np.ndarray:
    """Dedup digits for new items against a frozen SID table.

    ``new_codes`` ``(M, L)`` raw codes of new items; ``existing_codes`` ``(N, L+1)`` the existing
    unique SIDs (raw codes + dedup digit). Returns ``(M, L+1)``: a new item's digit is one more
    than the largest digit already used under its prefix (existing or earlier new items), so
    it never clashes; existing SIDs are not touched (they are not even returned).
    """
    new = _frame(new_codes, "new_codes")
    old = _frame(existing_codes, "existing_codes")
    L = new.width
    if old.width != L + 1:
        raise ValueError(
            f"existing_codes must have {L + 1} columns (the {L} raw levels of new_codes + dedup digit), got {old.width}"
        )
    keys = new.columns
    old = old.rename({f"c{L}": "digit"})
    top = old.group_by(keys).agg(pl.col("digit").max().alias("top"))
    ranked = new.with_row_index("row").with_columns(pl.int_range(pl.len()).over(keys).alias("rank"))
    out = ranked.join(top, on=keys, how="left").sort("row")
    digit = (out["top"].fill_null(-1) + 1 + out["rank"]).to_numpy()
    return np.concatenate([np.asarray(new_codes, dtype=np.int32), digit.astype(np.int32)[:, None]], axis=1)


def _movers(codes: np.ndarray, occupied: set[tuple[int, ...]]) -> np.ndarray:
    """Rows that must move: later duplicates of a tuple, and any row whose tuple is already
    occupied by an existing (frozen) SID."""
    df = _frame(codes)
    rank = df.select(pl.int_range(pl.len()).over(df.columns).alias("r"))["r"].to_numpy()
    move = rank > 0
    if occupied:
        taken = np.fromiter((tuple(r) in occupied for r in codes.tolist()), dtype=bool, count=codes.shape[0])
        move |= taken
    return np.flatnonzero(move)


def _subset(items: pl.DataFrame | None, rows: np.ndarray) -> pl.DataFrame | None:
    return None if items is None else items[rows]


def greedy_reassign(
    tokenizer: Any,
    X: np.ndarray,
    items: pl.DataFrame | None,
    codes: np.ndarray,
    *,
    existing_codes: np.ndarray | None = None,
    fallback_candidates: int = 8,
) -> np.ndarray:
    """Move colliding items to the next-best free code; returns ``(N, L)`` int32.

    The first item (row order) of each colliding tuple keeps its code; with ``existing_codes``
    (``(N0, L)`` frozen SIDs, e.g. of a previous release) every tuple they hold counts as taken.
    Unresolvable items keep their raw code and are counted in the log warning; check
    ``n_duplicates(result)`` (``unique_sids`` appends a dedup digit for them).
    """
    codes = np.asarray(codes).astype(np.int64).copy()
    X = np.asarray(X, dtype=np.float32)
    n, L = codes.shape
    if X.shape[0] != n:
        raise ValueError(f"X has {X.shape[0]} rows but codes has {n}")
    occupied: set[tuple[int, ...]] = set()
    if existing_codes is not None:
        existing_codes = np.asarray(existing_codes)
        if existing_codes.ndim != 2 or existing_codes.shape[1] != L:
            raise ValueError(f"existing_codes must have shape (n, {L}), got {existing_codes.shape}")
        occupied = set(map(tuple, existing_codes.astype(np.int64).tolist()))
    movers = _movers(codes, occupied)
    if movers.size == 0:
        return codes.astype(np.int32)
    stay = np.ones(n, dtype=bool)
    stay[movers] = False
    occupied.update(map(tuple, codes[stay].tolist()))

    # 1) next-best code at the last level, nearest first
    unresolved: list[int] = []
    for s in range(0, movers.size, _CHUNK):
        rows = movers[s : s + _CHUNK]
        order = np.argsort(tokenizer.level_distances(X[rows], _subset(items, rows), codes[rows], L - 1), axis=1)
        for i, row in enumerate(rows.tolist()):
            prefix = tuple(codes[row, : L - 1].tolist())
            for c in order[i].tolist():
                key = prefix + (c,)
                if key not in occupied:
                    occupied.add(key)
                    codes[row, L - 1] = c
                    break
            else:
                unresolved.append(row)

    # 2) the last level is exhausted under this prefix: try alternatives one level up
    if unresolved and L >= 2:
        rows = np.asarray(unresolved)
        order_up = np.argsort(tokenizer.level_distances(X[rows], _subset(items, rows), codes[rows], L - 2), axis=1)
        current = codes[rows, L - 2][:, None]
        # every row holds its current code exactly once: drop it, keep the nearest alternatives
        up = order_up[order_up != current].reshape(rows.size, -1)[:, :fallback_candidates]
        pending = np.ones(rows.size, dtype=bool)
        for rank in range(up.shape[1]):
            idx = np.flatnonzero(pending)
            if idx.size == 0:
                break
            trial = codes[rows[idx]].copy()
            trial[:, L - 2] = up[idx, rank]
            order = np.argsort(tokenizer.level_distances(X[rows[idx]], _subset(items, rows[idx]), trial, L - 1), axis=1)
            for i, j in enumerate(idx.tolist()):
                prefix = tuple(trial[i, : L - 1].tolist())
                for c in order[i].tolist():
                    key = prefix + (c,)
                    if key not in occupied:
                        occupied.add(key)
                        codes[rows[j], : L - 1] = trial[i, : L - 1]
                        codes[rows[j], L - 1] = c
                        pending[j] = False
                        break
        unresolved = rows[pending].tolist()
    if unresolved:
        log.warning("greedy_reassign: %d of %d colliding items could not be moved to a free code", len(unresolved), movers.size)
    return codes.astype(np.int32)


def unique_sids(
    codes: np.ndarray,
    strategy: str = "append",
    *,
    tokenizer: Any = None,
    X: np.ndarray | None = None,
    items: pl.DataFrame | None = None,
    order_key: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Make every SID unique; returns ``(sids (N, L+1) int32, info)``. ``order_key`` orders
    the dedup digit within each bucket (``dedup_order_key``; row order when None).

    ``strategy="append"``: raw codes + dedup digit. ``strategy="greedy"``: ``greedy_reassign``
    first, then the dedup digit (all zeros when greedy resolved every collision), so both
    strategies give the same width. ``info`` has ``collision_rate_before``,
    ``n_duplicates_before``, ``n_unresolved`` (duplicates left for the digit) and ``max_digit``.
    """
    codes = np.asarray(codes)
    info: dict[str, Any] = {
        "strategy": strategy,
        "collision_rate_before": collision_rate(codes),
        "n_duplicates_before": n_duplicates(codes),
    }
    if strategy == "append":
        moved = codes
    elif strategy == "greedy":
        if tokenizer is None or X is None:
            raise ValueError("strategy='greedy' needs the fitted tokenizer and X (and items for HGIT)")
        moved = greedy_reassign(tokenizer, X, items, codes)
    else:
        raise ValueError(f"unknown dedup strategy {strategy!r}; choose 'append' or 'greedy'")
    info["n_unresolved"] = n_duplicates(moved)
    info["n_reassigned"] = int((np.asarray(moved) != codes).any(1).sum())
    sids = append_dedup_level(moved, order_key)
    info["max_digit"] = int(sids[:, -1].max()) if sids.size else 0
    return sids, info
