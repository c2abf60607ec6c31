"""Distance-ranked negative lists for the list-wise reward model (paper Eq. 1 and Eq. 3).

Every anchor item gets up to ``k`` (15 in the paper) negative items of the same city, chosen by
haversine distance with a density-aware scheme, sorted near -> far and labelled with Eq. 3.
Negative *locations* are then swapped into the anchor's prompt (Eq. 1, prompt mismatching).

Density-aware hard negatives (``strategy="density"``), per anchor i of a city:

1. Local scale. ``r_i`` = haversine distance to the ``density_k``-th nearest other item
   (k = 10 by default; floored at 1 m so co-located items do not collapse the scale). In a
   dense centre ``r_i`` is small, in a sparse suburb it is large.
2. Hard negatives. ``round(hard_share * k)`` negatives (5 of 15 by default) are drawn uniformly
   without replacement from the items within ``near_scale * r_i`` (2 r_i by default, ~4 *
   density_k items under locally uniform density; the candidates are the anchor's
   ``ceil(near_scale^2 * density_k)`` nearest other items from the KD-tree, so where the band
   is unusually crowded the hard negatives come from its nearest 40 items by default).
3. Ring negatives. The other negatives cover geometric rings from ``near_scale * r_i`` out to
   the city scale R (2 x the 95th-percentile distance of the city's items from its centre,
   at least twice the inner radius): the log-distance range is split into equal strata, one
   negative per stratum; in each a distance d is drawn log-uniformly and a bearing uniformly,
   and the negative is the item nearest to the point at (d, bearing) from the anchor (a 1-NN
   KD-tree query; the next nearest is taken if that item is the anchor or already in the
   list). Far rings therefore land on real items even where the city is patchy, and the
   distance used for ranking is the true anchor-negative distance.
4. Optional far negatives. With ``far_items`` (items of other cities) and ``far_share > 0``,
   ``round(far_share * k)`` of the ``k`` slots are uniform draws from ``far_items``; they sort
   to the far end of the list (``far_share`` is the share of the list, not an extra).

``strategy="plain"``: ``k`` uniform random items of the city (the DPO-LR ablation), still
sorted by distance and labelled with Eq. 3.

``strategy="distinct"``: distinct *locations* instead of items. Under the paper's template a
negative only changes the prompt through its admin names (``LOCATION_COLUMNS``), so same-town
negatives render the true prompt and are left out by :func:`dedupe_prompt_lists`; on gowalla_nyc
that left lists of 2 negatives. Here every location (one distinct admin tuple) is represented by
its item nearest the location's centroid, and an anchor's list holds the ``k - round(far_share
* k)`` locations nearest to it (other than its own, across city borders: the next admin level
up when the town level runs out), plus ``round(far_share * k)`` uniform draws among the other
locations, all sorted by true distance and labelled with Eq. 3. The search runs on a KD-tree
over the locations, never on all pairs.

Lists are sorted by distance (ties keep the sampling order, so seeded runs repeat), ``rank`` = 1..n_i and ``label`` =
n_i - rank + 1 (Eq. 3, with K read as the list's own length n_i). A city with fewer than
k + 1 items gives shorter lists (every other item of the city, n_i = n_city - 1 plus far
negatives); a city with one item gives no list. The anchor is never its own negative and a
list never repeats an item. Everything runs on ``GeoIndex`` (a KD-tree), never on all pairs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from lgsid_pipeline import paper
from lgsid_pipeline.alignment import prompts
from lgsid_pipeline.geo import (
    GeoIndex,
    chord_to_km,
    destination_vectors,
    haversine_km,
    tangent_basis,
    unit_vectors,
    validate_lat_lon,
)

STRATEGIES = ("density", "plain", "distinct")
LOCATION_COLUMNS = ("province", "city", "district", "town")
"""The admin fields of the paper's location line: two items alike in all of them render one
location text, which is what the ``distinct`` strategy de-duplicates on."""
_CHUNK = 65_536
"""Anchors processed at once (bounds the (anchors x candidates) working arrays)."""
_MIN_SCALE_KM = 1e-3

LIST_SCHEMA: dict[str, pl.DataType] = {
    "anchor_id": pl.Utf8(),
    "negative_id": pl.Utf8(),
    "rank": pl.Int32(),
    "distance_km": pl.Float64(),
    "label": pl.Float64(),
    "strategy": pl.Utf8(),
    "negative_city_key": pl.Utf8(),
    "density_radius_km": pl.Float64(),
}


@dataclass
class NegativesResult:
    lists: pl.DataFrame
    """One row per (anchor, negative): see ``LIST_SCHEMA``."""
    metrics: dict = field(default_factory=dict)
    rank_quantiles: pl.DataFrame = field(default_factory=pl.DataFrame)
    """rank -> n, p10/p50/p90 distance (km) and p50 distance in units of the anchor's r_k."""


def soft_labels(ranks, k: int):
    """Eq. 3: ``p = K - Rank(dis) + 1`` (rank 1..K -> labels K..1; the true location, rank 0,
    gets K + 1). The one home of Eq. 3, for numpy arrays and torch tensors alike. ``k`` is the
    list's length: each stored list uses its own (n_i), the reward model the common K its
    (A, K + 1) training tensors are cut to (reward.common_list_length)."""
    return k - ranks + 1

def _check_items(items: pl.DataFrame, name: str) -> tuple[pl.Series, np.ndarray, np.ndarray]:
    for col in ("item_id", "lat", "lon"):
        if col not in items.columns:
            raise ValueError(f"{name} lack the required column {col!r}")
    for col in ("item_id", "lat", "lon"):
        nulls = items[col].is_null()
        if nulls.any():
            raise ValueError(f"{name} column {col!r} is null in row {int(nulls.arg_true()[0])}")
    ids = items["item_id"]
    if ids.flags["SORTED_ASC"]:
        # sorted (a batch's far pool): a duplicate sits right after its twin, so one pass over
        # neighbours replaces the hash of every id (1.4 s a call at 2.3M items); row = the first
        # of the pair, the row is_duplicated would name
        second = (ids == ids.shift(1)).fill_null(False)
        if second.any():
            row = int(second.arg_true()[0]) - 1
            raise ValueError(f"{name} item_id {ids[row]!r} is duplicated (row {row})")
    else:
        dup = ids.is_duplicated()
        if dup.any():
            row = int(dup.arg_true()[0])
            raise ValueError(f"{name} item_id {ids[row]!r} is duplicated (row {row})")
    try:
        lat, lon = validate_lat_lon(items["lat"].to_numpy(), items["lon"].to_numpy())
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return items["item_id"].cast(pl.Utf8), lat, lon


def _sample_distinct(
    rng: np.random.Generator, n_rows: int, pool: int, m: int, exclude: np.ndarray | None
) -> np.ndarray:
    """(n_rows, m) distinct indices in [0, pool) per row, never ``exclude[row]``."""
    avail = pool - (exclude is not None)
    if m > avail:
        raise ValueError(f"cannot draw {m} distinct items from {avail}")
    if m == 0 or n_rows == 0:
        return np.zeros((n_rows, m), dtype=np.int64)
    if pool <= 16 * m:  # small pool: a random permutation per row
        keys = rng.random((n_rows, pool))
        if exclude is not None:
            keys[np.arange(n_rows), exclude] = np.inf
        return np.argsort(keys, axis=1)[:, :m].astype(np.int64)
    out = np.empty((n_rows, m), dtype=np.int64)
    todo = np.arange(n_rows)
    while todo.size:
        draw = rng.integers(0, avail, size=(todo.size, m))
        if exclude is not None:
            draw += draw >= exclude[todo, None]
        s = np.sort(draw, axis=1)
        ok = ~(s[:, 1:] == s[:, :-1]).any(axis=1)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def _city_scale_km(vec: np.ndarray) -> float:
    """2 x the 95th-percentile distance of the city's items from its centre."""
    centre = vec.mean(axis=0)
    norm = np.linalg.norm(centre)
    if norm < 1e-12:
        return float(np.pi * 6371.0)
    chord = np.linalg.norm(vec - centre / norm, axis=1)
    return float(2.0 * np.quantile(chord_to_km(chord), 0.95))


def _density_chunk(
    index: GeoIndex,
    anchors: np.ndarray,
    k_local: int,
    rng: np.random.Generator,
    *,
    density_k: int,
    near_scale: float,
    hard_share: float,
    city_scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative indices (A, k_local) and the anchors' r_k for one chunk (see module doc)."""
    n = index.n
    a = anchors.size
    vec = index.vectors[anchors]
    m_near = min(n, max(int(np.ceil(near_scale**2 * density_k)), density_k) + 1)
    d, idx = index.query_vectors(vec, m_near)
    is_self = idx == anchors[:, None]
    d_other = np.where(is_self, np.inf, d)
    sorted_other = np.sort(d_other, axis=1)
    kth = min(density_k, n - 1) - 1
    r_k = np.maximum(sorted_other[:, kth], _MIN_SCALE_KM)
    inner = near_scale * r_k

    # Hard negatives: uniform among the items within near_scale * r_k.
    n_hard = min(int(round(hard_share * k_local)), k_local)
    keys = rng.random(d.shape)
    keys[is_self | (d > inner[:, None])] = np.inf
    order = np.argsort(keys, axis=1)[:, :n_hard]
    hard_ok = np.isfinite(np.take_along_axis(keys, order, axis=1))
    chosen = np.full((a, k_local), -1, dtype=np.int64)
    chosen[:, :n_hard] = np.where(hard_ok, np.take_along_axis(idx, order, axis=1), -1)
    n_hard_row = hard_ok.sum(axis=1)
    # Move the valid hard picks to the front so the ring slots follow them.
    chosen[:, :n_hard] = -np.sort(-chosen[:, :n_hard], axis=1)

    # Ring negatives: log-uniform stratified distances out to the city scale.
    n_ring = k_local - n_hard_row
    outer = np.maximum(city_scale, 2.0 * inner)
    log_span = np.log(outer / inner)
    east, north = tangent_basis(index.lat[anchors], index.lon[anchors])
    for slot in range(int(n_ring.max(initial=0))):
        active = slot < n_ring
        if not active.any():
            continue
        col = n_hard_row + slot
        t = (slot + rng.random(a)) / np.maximum(n_ring, 1)
        dist = inner * np.exp(t * log_span)
        bearing = rng.random(a) * 2.0 * np.pi
        act = np.flatnonzero(active)
        target = destination_vectors(vec[act], east[act], north[act], bearing[act], dist[act])
        pick = np.full(act.size, -1, dtype=np.int64)
        for n_cand in (min(2, n), min(k_local + 1, n)):
            need = pick < 0
            if not need.any():
                break
            _, cand = index.query_vectors(target[need], n_cand)
            rows_n = act[need]
            bad = cand == anchors[rows_n, None]
            bad |= (cand[:, :, None] == chosen[rows_n][:, None, :]).any(axis=2)
            first = np.argmax(~bad, axis=1)
            got = ~bad[np.arange(cand.shape[0]), first]
            sub = np.flatnonzero(need)
            pick[sub[got]] = cand[np.flatnonzero(got), first[got]]
        chosen[act, col[act]] = pick
    if (chosen < 0).any():  # cannot happen when n > k_local; kept as a hard invariant
        raise RuntimeError("density sampling left an empty slot")
    return chosen, r_k


def _local_r_k(index: GeoIndex, anchors: np.ndarray, density_k: int) -> np.ndarray:
    kk = min(density_k + 1, index.n)
    d, idx = index.query_vectors(index.vectors[anchors], kk)
    d = np.sort(np.where(idx == anchors[:, None], np.inf, d), axis=1)
    return np.maximum(d[:, min(density_k, index.n - 1) - 1], _MIN_SCALE_KM)


def _unskipped(draw: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """Map draws ``j`` over the positions not in ``skip`` (sorted, unique) to pool positions: the
    ``j``-th unskipped position is ``j + #{i : skip[i] - i <= j}``."""
    if skip.size == 0:
        return draw
    return draw + np.searchsorted(skip - np.arange(skip.size), draw, side="right")


def _city_lists(
    ids: pl.Series,
    lat: np.ndarray,
    lon: np.ndarray,
    city_key: str | None,
    *,
    k: int,
    n_far: int,
    strategy: str,
    rng: np.random.Generator,
    far: tuple[pl.Series, np.ndarray, np.ndarray, pl.Series, np.ndarray] | None,
    density_k: int,
    near_scale: float,
    hard_share: float,
    max_anchors: int | None,
) -> pl.DataFrame | None:
    """Ranked, labelled lists for the anchors of one city (see the module docstring).

    ``far`` is the whole far pool ``(ids, lat, lon, city_key, skip)``; ``skip`` holds the sorted
    pool positions this city may not draw (its own items). Far draws are uniform over the other
    positions: draw ``j`` in ``[0, pool - len(skip))`` maps to the ``j``-th position not in
    ``skip`` (:func:`_unskipped`), so a city never copies or filters the pool (O(draws), not
    O(pool) per city, which matters at a million items over a thousand cities)."""
    n = ids.len()
    if n < 2:
        return None
    anchors_all = np.arange(n)
    if max_anchors is not None and max_anchors < n:
        anchors_all = np.sort(rng.choice(n, size=max_anchors, replace=False))
    k_local = min(k - n_far, n - 1)
    index = GeoIndex(lat, lon)
    city_scale = _city_scale_km(index.vectors) if strategy == "density" else 0.0
    # Negatives index the city's items 0..n-1, then (with far negatives) n + their pool position.
    frames = []
    for lo in range(0, anchors_all.size, _CHUNK):
        anchors = anchors_all[lo : lo + _CHUNK]
        a = anchors.size
        if k_local >= n - 1:  # tiny city: every other item
            others = np.tile(np.arange(n), (a, 1))
            local = others[others != anchors[:, None]].reshape(a, n - 1)
            r_k = _local_r_k(index, anchors, density_k)
        elif strategy == "plain":
            local = _sample_distinct(rng, a, n, k_local, anchors)
            r_k = _local_r_k(index, anchors, density_k)
        else:
            local, r_k = _density_chunk(
                index, anchors, k_local, rng, density_k=density_k, near_scale=near_scale,
                hard_share=hard_share, city_scale=city_scale,
            )
        dist = haversine_km(lat[anchors, None], lon[anchors, None], lat[local], lon[local])
        neg = local
        if n_far and far is not None:
            _, f_lat, f_lon, _, skip = far
            fi = _unskipped(_sample_distinct(rng, a, f_lat.size - skip.size, n_far, None), skip)
            dist = np.concatenate(
                [dist, haversine_km(lat[anchors, None], lon[anchors, None], f_lat[fi], f_lon[fi])],
                axis=1,
            )
            neg = np.concatenate([neg, fi + n], axis=1)
        # Eq. 3: sort each list near -> far (stable: ties keep the sampling order), rank 1..n_i,
        # soft label p = n_i - rank + 1 (soft_labels).
        order = np.argsort(dist, axis=1, kind="stable")
        dist = np.take_along_axis(dist, order, axis=1)
        neg = np.take_along_axis(neg, order, axis=1)
        width = neg.shape[1]
        rank = np.tile(np.arange(1, width + 1, dtype=np.int32), a)
        flat = neg.reshape(-1)
        is_far = flat >= n
        neg_ids = ids.gather(np.where(is_far, 0, flat))
        neg_city = pl.Series([city_key] * flat.size, dtype=pl.Utf8)
        if is_far.any():
            local_mask = pl.Series(~is_far)
            pos = np.where(is_far, flat - n, 0)
            neg_ids = neg_ids.zip_with(local_mask, far[0].gather(pos))
            neg_city = neg_city.zip_with(local_mask, far[3].gather(pos))
        frames.append(
            pl.DataFrame(
                {
                    "anchor_id": ids.gather(np.repeat(anchors, width)),
                    "negative_id": neg_ids,
                    "rank": rank,
                    "distance_km": dist.reshape(-1),
                    "label": soft_labels(rank, width).astype(np.float64),
                    "negative_city_key": neg_city,
                    "density_radius_km": np.repeat(r_k, width),
                    "_far": is_far,
                }
            ).with_columns(pl.lit(strategy, dtype=pl.Utf8).alias("strategy"))
        )
    return pl.concat(frames)


def _rank_quantiles(lists: pl.DataFrame) -> pl.DataFrame:
    if lists.height == 0:
        return pl.DataFrame(
            schema={"rank": pl.Int32(), "n": pl.UInt32(), "p10_km": pl.Float64(),
                    "p50_km": pl.Float64(), "p90_km": pl.Float64(), "p50_rel_rk": pl.Float64()}
        )
    rel = pl.col("distance_km") / pl.col("density_radius_km")
    return (
        lists.group_by("rank")
        .agg(
            pl.len().alias("n"),
            pl.col("distance_km").quantile(0.1).alias("p10_km"),
            pl.col("distance_km").quantile(0.5).alias("p50_km"),
            pl.col("distance_km").quantile(0.9).alias("p90_km"),
            rel.quantile(0.5).alias("p50_rel_rk"),
        )
        .sort("rank")
    )


def distance_ranked_negatives(
    items: pl.DataFrame,
    *,
    k: int = paper.NEGATIVES_PER_POSITIVE,
    strategy: str = "density",
    seed: int = 0,
    far_items: pl.DataFrame | None = None,
    far_share: float = 0.0,
    density_k: int = 10,
    max_anchors: int | None = None,
    near_scale: float = 2.0,
    hard_share: float = 1.0 / 3.0,
) -> NegativesResult:
    """Distance-ranked negative lists (Eq. 3 labels) for every item of ``items``.

    ``items`` needs ``item_id``, ``lat``, ``lon``; with a ``city_key`` column each city is
    handled separately (negatives never cross cities except through ``far_items``).
    ``max_anchors`` caps the anchors per city (a seeded sample). See the module docstring for
    the sampling scheme. Returns :class:`NegativesResult`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if density_k < 1:
        raise ValueError(f"density_k must be >= 1, got {density_k}")
    if not 0.0 <= far_share <= 1.0:
        raise ValueError(f"far_share must be in [0, 1], got {far_share}")
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError(f"hard_share must be in [0, 1], got {hard_share}")
    if near_scale <= 0:
        raise ValueError(f"near_scale must be > 0, got {near_scale}")
    if max_anchors is not None and max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
    if far_share > 0 and far_items is None:
        raise ValueError("far_share > 0 needs far_items (items of other cities)")
    _check_items(items, "items")  # errors name the caller's rows, before any reordering
    if far_items is not None and far_share > 0:
        _check_items(far_items, "far_items")
    if far_items is not None and "item_id" in far_items.columns:
        far_items = far_items.sort("item_id", maintain_order=True)
    # The lists depend only on the items, never on their row order: a batch run reads the far pool
    # from several Delta partitions, whose order differs between runs (the seeded draws index rows).
    items = items.sort("item_id", maintain_order=True)
    ids, lat, lon = _check_items(items, "items")
    if strategy == "distinct":
        return _distinct_negatives(items, ids, lat, lon, k=k, seed=seed, far_items=far_items, far_share=far_share,
                                   max_anchors=max_anchors)
    has_city = "city_key" in items.columns
    city = (
        items["city_key"].cast(pl.Utf8).fill_null("")
        if has_city else pl.Series([""] * ids.len(), dtype=pl.Utf8)
    )
    cities = city.unique().sort().to_list()
    city_code = (
        pl.DataFrame({"c": city})
        .join(pl.DataFrame({"c": pl.Series(cities, dtype=pl.Utf8), "code": np.arange(len(cities))}),
              on="c", how="left",
              maintain_order="left")["code"].to_numpy()
    )
    by_city = np.argsort(city_code, kind="stable")
    bounds = np.searchsorted(city_code[by_city], np.arange(len(cities) + 1))

    far = None
    n_far = 0
    if far_items is not None and far_share > 0:
        f_ids, f_lat, f_lon = _check_items(far_items, "far_items")
        f_city = (
            far_items["city_key"].cast(pl.Utf8)
            if "city_key" in far_items.columns else pl.Series([None] * f_ids.len(), dtype=pl.Utf8)
        )
        far = (f_ids, f_lat, f_lon, f_city)
        n_far = int(round(far_share * k))
        # Pool positions grouped by city, once: each city then finds its own items in the pool
        # without a pass over it (null cities are never skipped, as the ids check alone decides).
        f_code = pl.DataFrame({"c": f_city}).select(pl.col("c").rank("dense").fill_null(0))["c"].to_numpy()
        f_by_code = np.argsort(f_code, kind="stable")
        f_bounds = np.searchsorted(f_code[f_by_code], np.arange(int(f_code.max(initial=0)) + 2))
        f_code_of = dict(pl.DataFrame({"c": f_city, "k": f_code}).drop_nulls().unique("c").iter_rows())

    frames = []
    for ci, c in enumerate(cities):
        rows = by_city[bounds[ci] : bounds[ci + 1]]
        city_ids = ids.gather(rows)
        rng = np.random.default_rng([seed, zlib.crc32(c.encode())])
        city_far = None
        n_far_c = 0
        if far is not None:
            # the city's own items in the pool: its rows by city key, and its ids (the pool is
            # sorted by item_id, so a binary search each)
            code = f_code_of.get(c) if has_city else None
            own = f_by_code[f_bounds[code] : f_bounds[code + 1]] if code else np.zeros(0, dtype=np.int64)
            hit = np.clip(far[0].search_sorted(city_ids, side="left").to_numpy(), 0, max(far[0].len() - 1, 0))
            same = (far[0].gather(hit) == city_ids).to_numpy() if far[0].len() else np.zeros(hit.size, dtype=bool)
            skip = np.union1d(own, hit[same]).astype(np.int64)
            city_far = (*far, skip)
            n_far_c = min(n_far, far[1].size - skip.size)
        out = _city_lists(
            city_ids, lat[rows], lon[rows], c if has_city else None, k=k, n_far=n_far_c,
            strategy=strategy, rng=rng, far=city_far, density_k=density_k,
            near_scale=near_scale, hard_share=hard_share, max_anchors=max_anchors,
        )
        if out is not None:
            frames.append(out)

    frames_far_rows = 0
    if frames:
        lists = pl.concat(frames)
        frames_far_rows = int(lists["_far"].sum())
        lists = lists.select(list(LIST_SCHEMA))
    else:
        lists = pl.DataFrame(schema=LIST_SCHEMA)

    quant = _rank_quantiles(lists)
    lens = lists.group_by("anchor_id").len()["len"] if lists.height else pl.Series([], dtype=pl.UInt32)
    near_band = (
        float((lists["distance_km"] <= near_scale * lists["density_radius_km"]).mean())
        if lists.height else None
    )
    metrics = {
        "strategy": strategy,
        "k": k,
        "density_k": density_k,
        "near_scale": near_scale,
        "hard_share": hard_share,
        "far_share": far_share,
        "seed": seed,
        "n_items": ids.len(),
        "n_cities": len(cities),
        "n_anchors": int(lens.len()),
        "n_rows": lists.height,
        "list_len_min": int(lens.min()) if lens.len() else None,
        "list_len_max": int(lens.max()) if lens.len() else None,
        "n_short_lists": int((lens < k).sum()) if lens.len() else 0,
        "share_within_near_band": near_band,
        "share_other_city": (
            float(frames_far_rows / lists.height) if lists.height else None
        ),
        "rank_quantiles": quant.to_dicts(),
    }
    return NegativesResult(lists=lists, metrics=metrics, rank_quantiles=quant)


def _location_keys(frame: pl.DataFrame) -> pl.Series:
    cols = [c for c in LOCATION_COLUMNS if c in frame.columns]
    if not cols:
        raise ValueError(f"strategy 'distinct' needs at least one location column of {LOCATION_COLUMNS}")
    return frame.select(pl.concat_str([pl.col(c).cast(pl.Utf8).fill_null("") for c in cols],
                                      separator="\x1f").alias("k"))["k"]


def _distinct_negatives(items: pl.DataFrame, ids: pl.Series, lat: np.ndarray, lon: np.ndarray, *, k: int,
                        seed: int, far_items: pl.DataFrame | None, far_share: float,
                        max_anchors: int | None) -> NegativesResult:
    """The ``distinct`` strategy (module docstring): lists of distinct locations."""
    city = (items["city_key"].cast(pl.Utf8).fill_null("") if "city_key" in items.columns
            else pl.Series([""] * ids.len(), dtype=pl.Utf8))
    pool = pl.DataFrame({"item_id": ids, "lat": lat, "lon": lon, "city_key": city, "loc": _location_keys(items)})
    if far_items is not None and far_items.height:
        f_ids, f_lat, f_lon = _check_items(far_items, "far_items")
        f_city = (far_items["city_key"].cast(pl.Utf8).fill_null("") if "city_key" in far_items.columns
                  else pl.Series([""] * f_ids.len(), dtype=pl.Utf8))
        far = pl.DataFrame({"item_id": f_ids, "lat": f_lat, "lon": f_lon, "city_key": f_city,
                            "loc": _location_keys(far_items)}).filter(~pl.col("item_id").is_in(ids.implode()))
        pool = pl.concat([pool, far])
    # One representative per location: its item nearest the location's centroid (ties: item_id).
    vec = unit_vectors(pool["lat"].to_numpy(), pool["lon"].to_numpy())
    pool = pool.with_columns(pl.Series("x", vec[:, 0]), pl.Series("y", vec[:, 1]), pl.Series("z", vec[:, 2]))
    reps = (pool.with_columns([pl.col(c).mean().over("loc").alias(f"m{c}") for c in "xyz"])
            .with_columns((pl.col("x") * pl.col("mx") + pl.col("y") * pl.col("my") + pl.col("z") * pl.col("mz"))
                          .alias("dot"))
            .sort(["loc", "dot", "item_id"], descending=[False, True, False])
            .group_by("loc", maintain_order=True).first().sort("loc"))
    n_loc = reps.height
    loc_code = dict(zip(reps["loc"].to_list(), range(n_loc)))
    own = np.fromiter((loc_code[x] for x in pool["loc"].head(ids.len()).to_list()), dtype=np.int64, count=ids.len())
    rng = np.random.default_rng([seed, zlib.crc32(b"distinct")])
    anchors = np.arange(ids.len())
    if max_anchors is not None:  # per city, seeded
        keep = []
        for c in city.unique().sort().to_list():
            rows = np.flatnonzero((city == c).to_numpy())
            keep.append(rows if rows.size <= max_anchors else np.sort(rng.choice(rows, max_anchors, replace=False)))
        anchors = np.concatenate(keep) if keep else anchors[:0]
    n_far = min(int(round(far_share * k)), max(n_loc - 1, 0))
    k_near = min(k - n_far, n_loc - 1)
    if anchors.size == 0 or k_near + n_far == 0:
        empty = pl.DataFrame(schema=LIST_SCHEMA)
        return NegativesResult(lists=empty, metrics={"strategy": "distinct", "k": k, "n_locations": n_loc,
                                                     "n_anchors": 0, "n_rows": 0}, rank_quantiles=_rank_quantiles(empty))
    index = GeoIndex(reps["lat"].to_numpy(), reps["lon"].to_numpy())
    _, near = index.query_vectors(unit_vectors(lat[anchors], lon[anchors]), k_near + 1)
    mine = own[anchors]
    # drop the anchor's own location (present at most once per row), keep k_near
    is_own = near == mine[:, None]
    order = np.argsort(is_own, axis=1, kind="stable")
    near = np.take_along_axis(near, order, axis=1)[:, :k_near]
    cols = [near]
    if n_far:
        m = min(n_loc - 1, k_near + n_far)
        draw = _sample_distinct(rng, anchors.size, n_loc, m, mine)
        taken = (draw[:, :, None] == near[:, None, :]).any(-1)
        pick = np.argsort(taken, axis=1, kind="stable")[:, :n_far]
        cols.append(np.take_along_axis(draw, pick, axis=1))
    neg = np.concatenate(cols, axis=1)
    r_lat, r_lon = reps["lat"].to_numpy(), reps["lon"].to_numpy()
    dist = haversine_km(lat[anchors, None], lon[anchors, None], r_lat[neg], r_lon[neg])
    order = np.argsort(dist, axis=1, kind="stable")  # Eq. 3: near -> far, rank 1..n, p = n - rank + 1
    dist, neg = np.take_along_axis(dist, order, axis=1), np.take_along_axis(neg, order, axis=1)
    width = neg.shape[1]
    rank = np.tile(np.arange(1, width + 1, dtype=np.int32), anchors.size)
    flat = neg.reshape(-1)
    lists = pl.DataFrame({
        "anchor_id": ids.gather(np.repeat(anchors, width)), "negative_id": reps["item_id"].gather(flat),
        "rank": rank, "distance_km": dist.reshape(-1), "label": soft_labels(rank, width).astype(np.float64),
        "strategy": "distinct", "negative_city_key": reps["city_key"].gather(flat),
        "density_radius_km": np.full(flat.size, np.nan),
    }, schema=LIST_SCHEMA)
    other_city = float((lists["negative_city_key"] != city.gather(np.repeat(anchors, width))).mean())
    quant = _rank_quantiles(lists)
    metrics = {"strategy": "distinct", "k": k, "far_share": far_share, "seed": seed, "n_items": ids.len(),
               "n_locations": n_loc, "n_anchors": int(anchors.size), "n_rows": lists.height,
               "list_len_min": width, "list_len_max": width, "n_short_lists": int(anchors.size) if width < k else 0,
               "share_other_city": other_city, "rank_quantiles": quant.to_dicts()}
    return NegativesResult(lists=lists, metrics=metrics, rank_quantiles=quant)


def mismatched_prompts(
    items: pl.DataFrame,
    lists: pl.DataFrame,
    template: prompts.PromptTemplate = prompts.DEFAULT_TEMPLATE,
) -> pl.DataFrame:
    """Eq. 1 prompt mismatching for every list of ``lists``.

    Row ``rank = 0`` is the anchor's own prompt P_i with ``label = n_i + 1``; rank r >= 1 is
    P_i^j: the anchor's content with the location of its r-th negative, label from ``lists``.
    ``items`` must hold every anchor and negative (include ``far_items`` if used). Returns
    columns anchor_id, rank, label, prompt, location_item_id, same_as_true_prompt (the
    negative's location renders exactly like the anchor's, so P_i^j == P_i).
    """
    for col in ("anchor_id", "negative_id", "rank", "label"):
        if col not in lists.columns:
            raise ValueError(f"lists lack the required column {col!r}")
    if "item_id" not in items.columns:
        raise ValueError("items lack the required column 'item_id'")
    schema = {"anchor_id": pl.Utf8(), "rank": pl.Int32(), "label": pl.Float64(),
              "prompt": pl.Utf8(), "location_item_id": pl.Utf8(), "same_as_true_prompt": pl.Boolean()}
    if lists.height == 0:
        return pl.DataFrame(schema=schema)
    for col in ("anchor_id", "negative_id"):
        missing = lists.filter(~pl.col(col).is_in(items["item_id"].implode()))
        if missing.height:
            raise ValueError(
                f"lists {col} {missing[col][0]!r} is not in items ({missing.height} rows)"
            )
    own = lists.group_by("anchor_id", maintain_order=True).agg(
        (pl.len().cast(pl.Float64) + 1.0).alias("label")
    ).with_columns(
        pl.lit(0, dtype=pl.Int32).alias("rank"), pl.col("anchor_id").alias("location_item_id")
    )
    rows = pl.concat(
        [
            own.select("anchor_id", "rank", "label", "location_item_id"),
            lists.select(
                "anchor_id", pl.col("rank").cast(pl.Int32), pl.col("label").cast(pl.Float64),
                pl.col("negative_id").alias("location_item_id"),
            ),
        ]
    ).sort(["anchor_id", "rank"], maintain_order=True)
    content = rows.select("anchor_id").join(
        items, left_on="anchor_id", right_on="item_id", how="left", maintain_order="left"
    )
    location = rows.select("location_item_id").join(
        items, left_on="location_item_id", right_on="item_id", how="left", maintain_order="left"
    )
    # Eq. 1: P_i^j = [P_content of i, P_location of j]
    text = prompts.build_prompts(content, location, template)
    out = rows.with_columns(pl.Series("prompt", text, dtype=pl.Utf8))
    # A negative whose rendered location equals the anchor's (same town and district under the
    # default template) yields the anchor's own prompt: flag it so training can drop it.
    own_prompt = out.filter(pl.col("rank") == 0).select("anchor_id", pl.col("prompt").alias("_own"))
    out = out.join(own_prompt, on="anchor_id", how="left", maintain_order="left").with_columns(
        ((pl.col("rank") > 0) & (pl.col("prompt") == pl.col("_own"))).alias("same_as_true_prompt")
    )
    return out.select(list(schema))


def dedupe_prompt_lists(prompts_df: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Leave out the mismatched prompts that render like an earlier prompt of the same list.

    Under the paper's template (no coordinates) a same-town negative renders exactly the anchor's
    true prompt P_i, and two negatives in one town render alike. Kept in, such a row asks the
    reward model to score one text both as the true location and as a mismatched one (or at two
    ranks). So each list keeps the first (nearest) occurrence of every distinct prompt -- the true
    prompt at rank 0 always -- and the kept negatives are renumbered 1..n'. The Eq. 3 labels follow
    the kept list: n' - rank + 1 for a negative, n' + 1 for the true prompt. Returns the frame and
    the counts (reported as metadata), never silently.
    """
    if prompts_df.height == 0:
        return prompts_df, {"prompt_rows": 0, "duplicate_prompts_dropped": 0, "duplicate_share": 0.0,
                            "anchors": 0, "kept_list_len_min": None, "kept_list_len_median": None}
    ordered = prompts_df.sort("anchor_id", "rank", maintain_order=True)
    kept = ordered.filter(pl.col("prompt").is_first_distinct().over("anchor_id"))
    kept = kept.with_columns(pl.int_range(pl.len(), dtype=pl.Int32).over("anchor_id").alias("rank"))
    # Eq. 3 on the kept list of n' negatives: label = n' - rank + 1, and n' + 1 at rank 0.
    kept = kept.with_columns((pl.len().over("anchor_id") - pl.col("rank")).cast(pl.Float64).alias("label"))
    if "same_as_true_prompt" in kept.columns:
        kept = kept.with_columns(pl.lit(False).alias("same_as_true_prompt"))
    lens = kept.group_by("anchor_id").agg((pl.len() - 1).alias("n"))["n"]
    dropped = prompts_df.height - kept.height
    negatives = prompts_df.height - lens.len()
    return kept, {
        "prompt_rows": prompts_df.height,
        "duplicate_prompts_dropped": int(dropped),
        "duplicate_share": float(dropped / negatives) if negatives else 0.0,
        "anchors": int(lens.len()),
        "kept_list_len_min": int(lens.min()),
        "kept_list_len_median": float(lens.median()),
    }
