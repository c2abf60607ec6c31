"""Measured properties of a generated world (used by docs/world.md and the tests):
``world_statistics``: geography, co-visits, density contrast, chains and reference baselines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from scipy.spatial import cKDTree

from lgsid_pipeline.world.gazetteer import CITIES, haversine_km

if TYPE_CHECKING:
    from lgsid_pipeline.world.generator import World

__all__ = ["world_statistics"]


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def _click_sequence(items: pl.DataFrame, inter: pl.DataFrame) -> pl.DataFrame:
    """Clicks sorted by user then ``seq_idx``, with the clicked item's row and attributes."""
    idx = items.select("item_id", "lat", "lon", "cat1", "cat2", "brand", "city", "province") \
        .with_row_index("row")
    return inter.select("user_id", "item_id", "seq_idx").join(idx, on="item_id", how="left") \
        .sort(["user_id", "seq_idx"])


def _transition_stats(seq: pl.DataFrame) -> dict[str, float]:
    """Distances, category and city agreement of consecutive clicks, their chance levels,
    immediate repeats and revisits."""
    same_user = (seq["user_id"].to_numpy()[1:] == seq["user_id"].to_numpy()[:-1])
    lat, lon = seq["lat"].to_numpy(), seq["lon"].to_numpy()
    d = haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:])[same_user]
    c1, c2 = seq["cat1"].to_numpy(), seq["cat2"].to_numpy()
    row = seq["row"].to_numpy()
    out: dict[str, float] = {}
    for km in (1, 3, 10):
        out[f"next_within_{km}km"] = _share(d <= km)
    out["next_median_km"] = float(np.median(d)) if len(d) else float("nan")
    # Random pairs of clicks in the same city (the geographic chance level).
    rng = np.random.default_rng(0)
    city = (seq["province"] + "|" + seq["city"]).to_numpy()
    a = rng.integers(0, len(seq), size=min(200_000, 4 * len(seq)))
    b = rng.integers(0, len(seq), size=len(a))
    same_city = city[a] == city[b]
    out["random_same_city_pair_median_km"] = float(np.median(
        haversine_km(lat[a][same_city], lon[a][same_city], lat[b][same_city], lon[b][same_city])))
    out["next_same_cat1"] = _share((c1[:-1] == c1[1:])[same_user])
    out["next_same_cat2"] = _share((c2[:-1] == c2[1:])[same_user])
    p1 = seq["cat1"].value_counts(normalize=True)["proportion"].to_numpy()
    p2 = seq["cat2"].value_counts(normalize=True)["proportion"].to_numpy()
    out["chance_same_cat1"] = float((p1**2).sum())
    out["chance_same_cat2"] = float((p2**2).sum())
    out["next_same_city"] = _share((city[:-1] == city[1:])[same_user])
    out["immediate_repeat"] = _share((row[:-1] == row[1:])[same_user])
    out["revisit_share"] = float(seq.select(pl.col("item_id").is_duplicated().over("user_id")).to_series()
                                 .mean()) if seq.height else 0.0
    return out


def _geography_stats(items: pl.DataFrame, cities: tuple[str, ...]) -> dict[str, float]:
    """Density contrast between city centres and suburbs, and how chains spread over cities."""
    out: dict[str, float] = {}
    # Density contrast: items per km2 within 3 km of the city centre vs the 15-30 km ring.
    centres = pl.DataFrame({
        "city": [CITIES[k].name for k in cities],
        "province": [CITIES[k].state for k in cities],
        "_lat0": [CITIES[k].lat for k in cities],
        "_lon0": [CITIES[k].lon for k in cities],
    })
    ll = items.select("city", "province", "lat", "lon").join(centres, on=["city", "province"], how="left",
                                                             maintain_order="left")
    dc = haversine_km(ll["lat"].to_numpy(), ll["lon"].to_numpy(), ll["_lat0"].to_numpy(), ll["_lon0"].to_numpy())
    n_cities = centres.height
    ring = ((dc >= 15) & (dc < 30)).sum() / (np.pi * (30**2 - 15**2))
    out["centre_density_per_km2"] = float((dc < 3).sum() / (np.pi * 9) / max(1, n_cities))
    out["suburb_density_per_km2"] = float(ring / max(1, n_cities))
    out["share_items_within_5km_of_centre"] = float((dc < 5).mean()) if len(dc) else 0.0
    brand_cities = items.filter(pl.col("brand") != pl.col("name")).group_by("brand") \
        .agg(pl.struct("province", "city").n_unique().alias("n"))
    out["brands"] = float(brand_cities.height)
    out["brands_in_2plus_cities"] = float((brand_cities["n"] >= 2).sum())
    return out


def _baseline_stats(seq: pl.DataFrame, items: pl.DataFrame, k: int) -> dict[str, float]:
    """Leave-one-out reference baselines: nearest items to the query, and most clicked items."""
    out: dict[str, float] = {}
    row = seq["row"].to_numpy()
    last = seq.filter(pl.len().over("user_id") >= 2).group_by("user_id", maintain_order=True).agg(
        pl.col("row").get(pl.len() - 1).alias("target"), pl.col("row").get(pl.len() - 2).alias("query"))
    target, query = last["target"].to_numpy(), last["query"].to_numpy()
    ilat, ilon = items["lat"].to_numpy(), items["lon"].to_numpy()
    vec = np.column_stack([np.cos(np.radians(ilat)) * np.cos(np.radians(ilon)),
                           np.cos(np.radians(ilat)) * np.sin(np.radians(ilon)), np.sin(np.radians(ilat))])
    kk = min(k + 1, items.height)
    _, nn = cKDTree(vec).query(vec[query], k=kk)
    nn = nn.reshape(len(query), kk)
    keep = nn != query[:, None]  # the query item is masked
    in_top = keep & (np.cumsum(keep, axis=1) <= k)
    hit = ((nn == target[:, None]) & in_top).any(axis=1)
    out[f"geo_nearest_hit@{k}"] = _share(hit)
    counts = np.bincount(row, minlength=items.height).astype(np.float64)
    counts -= np.bincount(target, minlength=items.height)
    top = np.argsort(-counts, kind="stable")[: k + 1]
    rank = np.full(items.height, k + 1)
    rank[top] = np.arange(len(top))
    rt, rq = rank[target], rank[query]
    # The query item is masked: when it is in the top k, the (k+1)-th item moves up.
    pop_hit = np.where(rq < k, (rt <= k) & (rt != rq), rt < k)
    out[f"popularity_hit@{k}"] = _share(pop_hit)
    return out


def world_statistics(world: World, k: int = 10) -> dict[str, float]:
    """Measured behaviour of a world: geography, co-visits and reference baselines.

    Consecutive pairs are (click t, click t+1) of one user. Baselines use leave-one-out on
    the raw histories (last click = target, the click before it = query, full catalogue
    ranked, the query item masked; no k-core filtering): ``geo_nearest_hit@k`` ranks items by
    distance from the query item, ``popularity_hit@k`` by click counts outside the targets.

    Keys: items, users, interactions, mean_history, chain_item_share (``brand != name``),
    next_within_{1,3,10}km, next_median_km, random_same_city_pair_median_km,
    next_same_cat1/cat2 and their chance levels chance_same_cat1/cat2 (sum of squared click
    shares), next_same_city, immediate_repeat, revisit_share (clicks on an item the user
    clicks more than once), centre_density_per_km2 (within 3 km of a city centre, per city),
    suburb_density_per_km2 (15-30 km ring), share_items_within_5km_of_centre, brands,
    brands_in_2plus_cities, geo_nearest_hit@k, popularity_hit@k. Undefined shares are NaN.
    """
    items, inter = world.items, world.interactions
    seq = _click_sequence(items, inter)
    out: dict[str, float] = {
        "items": float(items.height),
        "users": float(inter["user_id"].n_unique()),
        "interactions": float(inter.height),
        "mean_history": inter.height / max(1, inter["user_id"].n_unique()),
        "chain_item_share": float((items["brand"] != items["name"]).mean()) if items.height else 0.0,
    }
    out.update(_transition_stats(seq))
    out.update(_geography_stats(items, world.config.cities))
    out.update(_baseline_stats(seq, items, k))
    return out
