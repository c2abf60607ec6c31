"""Budgets by total, allocated across cities: the cost of a default grows with the work, not
with the number of city partitions.

:func:`allocate` splits a total budget (reward-model anchors, G-DPO preference pairs) over
cities: first a floor per city (so a small city is still seen), capped by what the city has,
then the rest in proportion to each city's remaining size (largest remainders, ties by city
key, so it is deterministic). No city gets more than it has. When the floors alone exceed the
total, the floors win: every city is seen, and the allocation says it went over.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl


def allocate(sizes: Mapping[str, int], total: int | None, floor: int = 0) -> dict[str, int]:
    """``{city: n}`` with ``sum(n) == min(total, sum(sizes))`` unless the floors exceed ``total``;
    ``total=None`` takes everything."""
    keys = sorted(sizes)
    have = np.array([max(int(sizes[k]), 0) for k in keys], dtype=np.int64)
    if total is None:
        return dict(zip(keys, have.tolist()))
    if total < 0 or floor < 0:
        raise ValueError(f"total and floor must be non-negative, got total={total}, floor={floor}")
    base = np.minimum(have, floor)
    left = total - int(base.sum())
    room = have - base
    if left <= 0 or room.sum() == 0:
        return dict(zip(keys, base.tolist()))
    left = min(left, int(room.sum()))
    share = room / room.sum() * left
    extra = np.floor(share).astype(np.int64)
    extra = np.minimum(extra, room)
    short = left - int(extra.sum())
    if short > 0:  # largest remainders first, among cities with room left
        rema = np.where(extra < room, share - np.floor(share), -1.0)
        order = np.lexsort((np.arange(len(keys)), -rema))
        for i in order[:short]:
            if extra[i] < room[i]:
                extra[i] += 1
    return dict(zip(keys, (base + extra).tolist()))


def sample_by_city(frame: pl.DataFrame, id_col: str, total: int | None, floor: int, seed: int,
                   city_col: str = "city_key") -> tuple[pl.DataFrame, dict[str, int]]:
    """The rows of a seeded sample of distinct ``id_col`` values, ``allocate``-d across
    ``city_col``; returns (rows, allocation)."""
    ids = frame.select(id_col, city_col).unique().sort(id_col)
    sizes = dict(ids.group_by(city_col).len().iter_rows())
    alloc = allocate(sizes, total, floor)
    quota = pl.DataFrame({city_col: list(alloc), "_quota": list(alloc.values())},
                         schema={city_col: frame.schema[city_col], "_quota": pl.Int64})
    picked = (ids.join(quota, on=city_col, maintain_order="left")  # the shuffle below ranks rows in this order
              .with_columns(pl.int_range(pl.len()).shuffle(seed=seed).over(city_col).alias("_r"))
              .filter(pl.col("_r") < pl.col("_quota")))
    return frame.join(picked.select(id_col), on=id_col, maintain_order="left"), alloc


def allocation_summary(alloc: Mapping[str, int], sizes: Mapping[str, int] | None = None) -> dict:
    """What metadata records of an allocation: total, cities, min / median / max per city."""
    v = np.array(list(alloc.values()), dtype=np.int64)
    out = {"total": int(v.sum()), "cities": len(alloc), "min_per_city": int(v.min()) if v.size else 0,
           "median_per_city": float(np.median(v)) if v.size else 0.0, "max_per_city": int(v.max()) if v.size else 0}
    if sizes is not None:
        out["available"] = int(sum(sizes.values()))
    return out
