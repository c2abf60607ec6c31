"""Small planted-pattern data for tests and smoke runs of the recommenders.

``planted_sequences`` builds users whose next item is a fixed function of the last one
(``next = (a * last + b) mod n_items``, with an optional share of random jumps), items spread
over a few "cities" with coordinates, and random unique semantic IDs. A sequence model can
learn the pattern exactly, while popularity stays near chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl


@dataclass
class PlantedData:
    interactions: pl.DataFrame
    items: pl.DataFrame
    sids: pl.DataFrame  # item_id, method, codebook_version, sid


def successor(items: np.ndarray, n_items: int, a: int = 7, b: int = 3) -> np.ndarray:
    return (a * np.asarray(items) + b) % n_items


def random_unique_sids(n_items: int, levels: int, size: int, seed: int) -> np.ndarray:
    """(n_items, levels) distinct random codes in ``[0, size)``."""
    if size**levels < n_items:
        raise ValueError(f"{size}^{levels} codes cannot hold {n_items} unique SIDs")
    rng = np.random.default_rng(seed)
    flat = rng.choice(size**levels, n_items, replace=False)
    return np.stack([(flat // size ** (levels - 1 - lvl)) % size for lvl in range(levels)], axis=1)


def planted_sequences(
    n_items: int = 300,
    n_users: int = 120,
    min_len: int = 8,
    max_len: int = 14,
    noise: float = 0.0,
    n_cities: int = 3,
    levels: int = 3,
    codebook: int = 8,
    methods: tuple[str, ...] = ("random",),
    seed: int = 0,
) -> PlantedData:
    rng = np.random.default_rng(seed)
    city = rng.integers(0, n_cities, n_items)
    centres = np.array([[40.0 + 0.5 * c, -74.0 + 0.5 * c] for c in range(n_cities)])
    lat = centres[city, 0] + rng.normal(0, 0.02, n_items)
    lon = centres[city, 1] + rng.normal(0, 0.02, n_items)
    item_ids = [f"i{j}" for j in range(n_items)]
    items = pl.DataFrame(
        {
            "item_id": item_ids,
            "name": [f"shop {j}" for j in range(n_items)],
            "city": [f"City {c}" for c in city],
            "city_key": [f"city_{c}" for c in city],
            "lat": lat,
            "lon": lon,
        }
    )
    rows_u, rows_i, rows_t, rows_s = [], [], [], []
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for u in range(n_users):
        n = int(rng.integers(min_len, max_len + 1))
        cur = int(rng.integers(0, n_items))
        for k in range(n):
            rows_u.append(f"u{u}")
            rows_i.append(item_ids[cur])
            rows_t.append(t0 + timedelta(hours=u * 1000 + k))
            rows_s.append(k)
            cur = int(rng.integers(0, n_items)) if rng.random() < noise else int(successor(cur, n_items))
    inter = pl.DataFrame(
        {"user_id": rows_u, "item_id": rows_i, "timestamp": rows_t, "seq_idx": rows_s},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Datetime("us", "UTC"), "seq_idx": pl.Int64},
    ).with_columns(pl.lit(None, dtype=pl.Utf8).alias("split"))
    frames = []
    for m_i, m in enumerate(methods):
        codes = random_unique_sids(n_items, levels, codebook, seed + 1 + m_i)
        frames.append(
            pl.DataFrame(
                {
                    "item_id": item_ids,
                    "method": [m] * n_items,
                    "codebook_version": ["test"] * n_items,
                    "sid": codes.tolist(),
                },
                schema={"item_id": pl.Utf8, "method": pl.Utf8, "codebook_version": pl.Utf8, "sid": pl.List(pl.Int64)},
            )
        )
    return PlantedData(interactions=inter, items=items, sids=pl.concat(frames))
