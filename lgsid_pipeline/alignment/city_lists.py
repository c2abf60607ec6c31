"""Per-city construction of the distance-ranked negative lists (:mod:`.negatives` is the public API).

For every anchor of one city, its negatives are drawn (``density``/``plain``), far negatives from
the other cities appended, and the list sorted near -> far and labelled by :func:`soft_labels`.

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
sorted by distance and labelled.
"""

from __future__ import annotations

import zlib

import numpy as np
import polars as pl

from lgsid_pipeline.geo import GeoIndex, chord_to_km, destination_vectors, haversine_km, tangent_basis

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

FarPool = tuple[pl.Series, np.ndarray, np.ndarray, pl.Series]
"""The far items (ids, lat, lon, city_key), sorted by item_id."""


def soft_labels(ranks, k: int):
    """Eq. 3: ``p = K - Rank(dis) + 1`` (rank 1..K -> labels K..1; the true location, rank 0,
    gets K + 1). The one home of Eq. 3, for numpy arrays, torch tensors and polars expressions
    alike. ``k`` is the list's length: each stored list uses its own (n_i, also after
    ``negatives.dedupe_prompt_lists`` drops repeated prompts), the reward model the common K its
    (A, K + 1) training tensors are cut to (reward.common_list_length)."""
    return k - ranks + 1


def ranked_lists(dist: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row sorted near -> far (stable: ties keep the sampling order), flattened ranks 1..n and
    their :func:`soft_labels` (float64): returns (dist, neg, rank, label)."""
    order = np.argsort(dist, axis=1, kind="stable")
    dist = np.take_along_axis(dist, order, axis=1)
    neg = np.take_along_axis(neg, order, axis=1)
    width = neg.shape[1]
    rank = np.tile(np.arange(1, width + 1, dtype=np.int32), neg.shape[0])
    return dist, neg, rank, soft_labels(rank, width).astype(np.float64)


def sample_distinct(
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


def _local_negatives(
    index: GeoIndex,
    anchors: np.ndarray,
    k_local: int,
    rng: np.random.Generator,
    *,
    strategy: str,
    city_scale: float,
    density_k: int,
    near_scale: float,
    hard_share: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The anchors' negatives inside their city (indices into its items) and the anchors' r_k."""
    n, a = index.n, anchors.size
    if k_local >= n - 1:  # tiny city: every other item
        others = np.tile(np.arange(n), (a, 1))
        return others[others != anchors[:, None]].reshape(a, n - 1), _local_r_k(index, anchors, density_k)
    if strategy == "plain":
        return sample_distinct(rng, a, n, k_local, anchors), _local_r_k(index, anchors, density_k)
    return _density_chunk(
        index, anchors, k_local, rng, density_k=density_k, near_scale=near_scale,
        hard_share=hard_share, city_scale=city_scale,
    )


def _with_far(rng: np.random.Generator, a_lat: np.ndarray, a_lon: np.ndarray, dist: np.ndarray,
              neg: np.ndarray, far: tuple, n_far: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Append ``n_far`` uniform draws from the far pool (never its ``skip`` positions) to every
    row; a far negative is indexed as ``n`` + its pool position."""
    _, f_lat, f_lon, _, skip = far
    fi = _unskipped(sample_distinct(rng, a_lat.size, f_lat.size - skip.size, n_far, None), skip)
    dist = np.concatenate(
        [dist, haversine_km(a_lat[:, None], a_lon[:, None], f_lat[fi], f_lon[fi])],
        axis=1,
    )
    return dist, np.concatenate([neg, fi + n], axis=1)


def _chunk_frame(ids: pl.Series, anchors: np.ndarray, neg: np.ndarray, dist: np.ndarray, rank: np.ndarray,
                 label: np.ndarray, r_k: np.ndarray, city_key: str | None, strategy: str,
                 far: tuple | None) -> pl.DataFrame:
    """The ranked lists of one chunk of anchors as rows (``LIST_SCHEMA`` plus ``_far``)."""
    n = ids.len()
    width = neg.shape[1]
    flat = neg.reshape(-1)
    is_far = flat >= n
    neg_ids = ids.gather(np.where(is_far, 0, flat))
    neg_city = pl.Series([city_key] * flat.size, dtype=pl.Utf8)
    if is_far.any():
        local_mask = pl.Series(~is_far)
        pos = np.where(is_far, flat - n, 0)
        neg_ids = neg_ids.zip_with(local_mask, far[0].gather(pos))
        neg_city = neg_city.zip_with(local_mask, far[3].gather(pos))
    return pl.DataFrame(
        {
            "anchor_id": ids.gather(np.repeat(anchors, width)),
            "negative_id": neg_ids,
            "rank": rank,
            "distance_km": dist.reshape(-1),
            "label": label,
            "negative_city_key": neg_city,
            "density_radius_km": np.repeat(r_k, width),
            "_far": is_far,
        }
    ).with_columns(pl.lit(strategy, dtype=pl.Utf8).alias("strategy"))


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
        local, r_k = _local_negatives(
            index, anchors, k_local, rng, strategy=strategy, city_scale=city_scale, density_k=density_k,
            near_scale=near_scale, hard_share=hard_share,
        )
        dist = haversine_km(lat[anchors, None], lon[anchors, None], lat[local], lon[local])
        neg = local
        if n_far and far is not None:
            dist, neg = _with_far(rng, lat[anchors], lon[anchors], dist, neg, far, n_far, n)
        dist, neg, rank, label = ranked_lists(dist, neg)
        frames.append(_chunk_frame(ids, anchors, neg, dist, rank, label, r_k, city_key, strategy, far))
    return pl.concat(frames)


def _city_groups(city: pl.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The sorted city keys, the rows ordered by city and each city's bounds in that order."""
    cities = city.unique().sort().to_list()
    city_code = (
        pl.DataFrame({"c": city})
        .join(pl.DataFrame({"c": pl.Series(cities, dtype=pl.Utf8), "code": np.arange(len(cities))}),
              on="c", how="left",
              maintain_order="left")["code"].to_numpy()
    )
    by_city = np.argsort(city_code, kind="stable")
    bounds = np.searchsorted(city_code[by_city], np.arange(len(cities) + 1))
    return cities, by_city, bounds


def _far_index(f_city: pl.Series) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pool positions grouped by city, once: each city then finds its own items in the pool
    without a pass over it (null cities are never skipped, as the ids check alone decides)."""
    f_code = pl.DataFrame({"c": f_city}).select(pl.col("c").rank("dense").fill_null(0))["c"].to_numpy()
    f_by_code = np.argsort(f_code, kind="stable")
    f_bounds = np.searchsorted(f_code[f_by_code], np.arange(int(f_code.max(initial=0)) + 2))
    f_code_of = dict(pl.DataFrame({"c": f_city, "k": f_code}).drop_nulls().unique("c").iter_rows())
    return f_by_code, f_bounds, f_code_of


def _own_positions(far: FarPool, far_index: tuple, city_key: str | None, city_ids: pl.Series) -> np.ndarray:
    """The city's own items in the pool (sorted positions): its rows by city key, and its ids (the
    pool is sorted by item_id, so a binary search each)."""
    f_by_code, f_bounds, f_code_of = far_index
    code = f_code_of.get(city_key) if city_key is not None else None
    own = f_by_code[f_bounds[code] : f_bounds[code + 1]] if code else np.zeros(0, dtype=np.int64)
    hit = np.clip(far[0].search_sorted(city_ids, side="left").to_numpy(), 0, max(far[0].len() - 1, 0))
    same = (far[0].gather(hit) == city_ids).to_numpy() if far[0].len() else np.zeros(hit.size, dtype=bool)
    return np.union1d(own, hit[same]).astype(np.int64)


def all_city_lists(
    ids: pl.Series,
    lat: np.ndarray,
    lon: np.ndarray,
    city: pl.Series,
    *,
    has_city: bool,
    far: FarPool | None,
    n_far: int,
    seed: int,
    k: int,
    strategy: str,
    density_k: int,
    near_scale: float,
    hard_share: float,
    max_anchors: int | None,
) -> tuple[list[pl.DataFrame], int]:
    """The lists of every city (``city`` holds each item's key, "" without a city column), each
    city seeded by (seed, crc32(key)) and drawing its far negatives from ``far`` minus its own
    items. Returns the non-empty per-city frames and the number of cities."""
    cities, by_city, bounds = _city_groups(city)
    far_index = _far_index(far[3]) if far is not None else None
    frames = []
    for ci, c in enumerate(cities):
        rows = by_city[bounds[ci] : bounds[ci + 1]]
        city_ids = ids.gather(rows)
        rng = np.random.default_rng([seed, zlib.crc32(c.encode())])
        city_far = None
        n_far_c = 0
        if far is not None:
            skip = _own_positions(far, far_index, c if has_city else None, city_ids)
            city_far = (*far, skip)
            n_far_c = min(n_far, far[1].size - skip.size)
        out = _city_lists(
            city_ids, lat[rows], lon[rows], c if has_city else None, k=k, n_far=n_far_c,
            strategy=strategy, rng=rng, far=city_far, density_k=density_k,
            near_scale=near_scale, hard_share=hard_share, max_anchors=max_anchors,
        )
        if out is not None:
            frames.append(out)
    return frames, len(cities)
