"""Distance-ranked negative lists for the list-wise reward model (paper Eq. 1 and Eq. 3).

Every anchor item gets up to ``k`` (15 in the paper) negative items of the same city, chosen by
haversine distance with a density-aware scheme, sorted near -> far and labelled by
:func:`soft_labels`. Negative *locations* are then swapped into the anchor's prompt (Eq. 1,
prompt mismatching).

The ``density`` strategy (density-aware hard negatives, optional far negatives from other
cities) and the ``plain`` one (the DPO-LR ablation) build their lists city by city in
:mod:`lgsid_pipeline.alignment.city_lists`, whose docstring gives the sampling scheme.

``strategy="distinct"``: distinct *locations* instead of items. Under the paper's template a
negative only changes the prompt through its admin names (``LOCATION_COLUMNS``), so same-town
negatives render the true prompt and are left out by :func:`dedupe_prompt_lists`; on gowalla_nyc
that left lists of 2 negatives. Here every location (one distinct admin tuple) is represented by
its item nearest the location's centroid, and an anchor's list holds the ``k - round(far_share
* k)`` locations nearest to it (other than its own, across city borders: the next admin level
up when the town level runs out), plus ``round(far_share * k)`` uniform draws among the other
locations, all sorted by true distance and labelled the same way. The search runs on a KD-tree
over the locations, never on all pairs.

Lists are sorted by distance (ties keep the sampling order, so seeded runs repeat), ``rank`` = 1..n_i and ``label`` =
n_i - rank + 1 (:func:`soft_labels`, with K read as the list's own length n_i). A city with fewer than
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
from lgsid_pipeline.alignment.city_lists import (
    LIST_SCHEMA,
    FarPool,
    all_city_lists,
    ranked_lists,
    sample_distinct,
    soft_labels,
)
from lgsid_pipeline.geo import GeoIndex, haversine_km, unit_vectors, validate_lat_lon

__all__ = ["LIST_SCHEMA", "LOCATION_COLUMNS", "STRATEGIES", "NegativesResult",
           "dedupe_prompt_lists", "distance_ranked_negatives", "mismatched_prompts", "soft_labels"]

STRATEGIES = ("density", "plain", "distinct")
LOCATION_COLUMNS = ("province", "city", "district", "town")
"""The admin fields of the paper's location line: two items alike in all of them render one
location text, which is what the ``distinct`` strategy de-duplicates on."""


@dataclass
class NegativesResult:
    lists: pl.DataFrame
    """One row per (anchor, negative): see ``LIST_SCHEMA``."""
    metrics: dict = field(default_factory=dict)
    rank_quantiles: pl.DataFrame = field(default_factory=pl.DataFrame)
    """rank -> n, p10/p50/p90 distance (km) and p50 distance in units of the anchor's r_k."""


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


def _check_settings(strategy: str, k: int, density_k: int, far_share: float, hard_share: float,
                    near_scale: float, max_anchors: int | None, far_items: pl.DataFrame | None) -> None:
    """Refuse settings outside their ranges (see :func:`distance_ranked_negatives`)."""
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


def _far_pool(far_items: pl.DataFrame) -> FarPool:
    """The checked far items as (ids, lat, lon, city_key); city_key is null without the column."""
    f_ids, f_lat, f_lon = _check_items(far_items, "far_items")
    f_city = (
        far_items["city_key"].cast(pl.Utf8)
        if "city_key" in far_items.columns else pl.Series([None] * f_ids.len(), dtype=pl.Utf8)
    )
    return f_ids, f_lat, f_lon, f_city


def _list_metrics(lists: pl.DataFrame, quant: pl.DataFrame, settings: dict, *, n_items: int,
                  n_cities: int, far_rows: int) -> dict:
    """The run's settings and the shape of its lists (lengths, near-band and other-city shares)."""
    k, near_scale = settings["k"], settings["near_scale"]
    lens = lists.group_by("anchor_id").len()["len"] if lists.height else pl.Series([], dtype=pl.UInt32)
    near_band = (
        float((lists["distance_km"] <= near_scale * lists["density_radius_km"]).mean())
        if lists.height else None
    )
    return {
        **settings,
        "n_items": n_items,
        "n_cities": n_cities,
        "n_anchors": int(lens.len()),
        "n_rows": lists.height,
        "list_len_min": int(lens.min()) if lens.len() else None,
        "list_len_max": int(lens.max()) if lens.len() else None,
        "n_short_lists": int((lens < k).sum()) if lens.len() else 0,
        "share_within_near_band": near_band,
        "share_other_city": (
            float(far_rows / lists.height) if lists.height else None
        ),
        "rank_quantiles": quant.to_dicts(),
    }


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
    """Distance-ranked negative lists (labelled by :func:`soft_labels`) for every item of ``items``.

    ``items`` needs ``item_id``, ``lat``, ``lon``; with a ``city_key`` column each city is
    handled separately (negatives never cross cities except through ``far_items``).
    ``max_anchors`` caps the anchors per city (a seeded sample). See the module docstrings (here
    and :mod:`lgsid_pipeline.alignment.city_lists`) for the sampling scheme. Returns
    :class:`NegativesResult`.
    """
    _check_settings(strategy, k, density_k, far_share, hard_share, near_scale, max_anchors, far_items)
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
    far = _far_pool(far_items) if far_items is not None and far_share > 0 else None
    frames, n_cities = all_city_lists(
        ids, lat, lon, city, has_city=has_city, far=far, n_far=int(round(far_share * k)) if far is not None else 0,
        seed=seed, k=k, strategy=strategy, density_k=density_k, near_scale=near_scale,
        hard_share=hard_share, max_anchors=max_anchors,
    )
    far_rows = 0
    if frames:
        lists = pl.concat(frames)
        far_rows = int(lists["_far"].sum())
        lists = lists.select(list(LIST_SCHEMA))
    else:
        lists = pl.DataFrame(schema=LIST_SCHEMA)
    quant = _rank_quantiles(lists)
    settings = {"strategy": strategy, "k": k, "density_k": density_k, "near_scale": near_scale,
                "hard_share": hard_share, "far_share": far_share, "seed": seed}
    metrics = _list_metrics(lists, quant, settings, n_items=ids.len(), n_cities=n_cities, far_rows=far_rows)
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
        draw = sample_distinct(rng, anchors.size, n_loc, m, mine)
        taken = (draw[:, :, None] == near[:, None, :]).any(-1)
        pick = np.argsort(taken, axis=1, kind="stable")[:, :n_far]
        cols.append(np.take_along_axis(draw, pick, axis=1))
    neg = np.concatenate(cols, axis=1)
    r_lat, r_lon = reps["lat"].to_numpy(), reps["lon"].to_numpy()
    dist = haversine_km(lat[anchors, None], lon[anchors, None], r_lat[neg], r_lon[neg])
    dist, neg, rank, label = ranked_lists(dist, neg)
    width = neg.shape[1]
    flat = neg.reshape(-1)
    lists = pl.DataFrame({
        "anchor_id": ids.gather(np.repeat(anchors, width)), "negative_id": reps["item_id"].gather(flat),
        "rank": rank, "distance_km": dist.reshape(-1), "label": label,
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
    own = lists.group_by("anchor_id", maintain_order=True).agg(  # the true location: n_i + 1
        soft_labels(0, pl.len().cast(pl.Float64)).alias("label")
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
    prompt at rank 0 always -- and the kept negatives are renumbered 1..n'. The labels
    (:func:`soft_labels`) follow the kept list: n' - rank + 1 for a negative, n' + 1 for the true prompt. Returns the frame and
    the counts (reported as metadata), never silently.
    """
    if prompts_df.height == 0:
        return prompts_df, {"prompt_rows": 0, "duplicate_prompts_dropped": 0, "duplicate_share": 0.0,
                            "anchors": 0, "kept_list_len_min": None, "kept_list_len_median": None}
    ordered = prompts_df.sort("anchor_id", "rank", maintain_order=True)
    kept = ordered.filter(pl.col("prompt").is_first_distinct().over("anchor_id"))
    kept = kept.with_columns(pl.int_range(pl.len(), dtype=pl.Int32).over("anchor_id").alias("rank"))
    # soft labels of the kept list of n' = len - 1 negatives: n' - rank + 1, and n' + 1 at rank 0
    n_kept = pl.len().over("anchor_id") - 1
    kept = kept.with_columns(soft_labels(pl.col("rank"), n_kept).cast(pl.Float64).alias("label"))
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
