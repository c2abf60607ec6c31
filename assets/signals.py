"""Training signals for alignment, per city: co-occurrence pairs (Eq. 5) and distance-ranked
negatives (Eq. 1, 3)."""

import dagster as dg
import polars as pl
from pydantic import Field

from assets.metadata import Timer, config_json, flat, table
from assets.partitions import CITY_BACKFILL, DELTA, city_partitions, emit, run_cities
from lgsid_pipeline.alignment.cooccurrence import cooccurrence_pairs as compute_pairs
from lgsid_pipeline.alignment.stage import NegativeSettings, city_negatives
from resources import LgsidHome

GROUP = "alignment"
OWNERS = ["team:lgsid-ml"]


class CooccurrenceConfig(dg.Config):
    s_th: int | None = Field(default=None, description="Keep pairs with s > s_th; None scales with the data "
                                                       "(see cooccurrence.default_threshold).")
    max_history: int = Field(default=50, description="Most recent clicks kept per user (bounds the cost).")


@dg.asset(
    partitions_def=city_partitions, backfill_policy=CITY_BACKFILL, group_name=GROUP, owners=OWNERS, kinds={"polars", "delta"},
    metadata=DELTA, io_manager_key="io_manager",
    description="Eq. 5: item pairs co-clicked by more than s_th users (domain-collaborative pairs "
                "D_dc for G-DPO). Core: lgsid_pipeline/alignment/cooccurrence.py",
)
def cooccurrence_pairs(context: dg.AssetExecutionContext, config: CooccurrenceConfig,
                       user_interactions: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    frames, meta = [], {}
    by_city = user_interactions.partition_by("city_key", as_dict=True)
    for city in run_cities(context):  # Eq. 5 counts co-clicks inside each city
        timer = Timer()
        mine = by_city.get((city,), user_interactions.clear())
        with timer("compute"):
            result = compute_pairs(mine, s_th=config.s_th, max_history=config.max_history)
        frames.append(result.pairs.with_columns(pl.lit(city).alias("city_key")))
        meta[city] = {"dagster/row_count": frames[-1].height, "input_interactions": mine.height,
                      **flat(result.metrics), **timer.metadata()}
    return emit(context, pl.concat(frames), meta, {"config": config_json(config)})


_N = NegativeSettings


class NegativesConfig(dg.Config):
    k: int = Field(default=_N.k, description="Negatives per anchor (the paper: 15).")
    density_k: int = Field(default=_N.density_k, description="k of the anchor's k-th neighbour distance r_k, the "
                                                              "local density scale.")
    near_scale: float = Field(default=_N.near_scale, description="Hard negatives lie within near_scale * r_k.")
    hard_share: float = Field(default=_N.hard_share, description="Share of each list drawn from the hard band.")
    far_share: float = Field(default=_N.far_share, description="Share of negatives drawn from other cities, so the "
                             "reward model also sees the other-city locations that G-DPO's far items come from.")
    max_anchors: int | None = Field(default=_N.max_anchors, description="Cap anchors per city (seeded sample).")
    plain_variant: bool = Field(default=_N.plain_variant, description="Also emit uniformly random lists (DPO-LR "
                                                                      "ablation).")
    distinct_variant: bool = Field(default=_N.distinct_variant, description="Also emit lists of distinct "
                                   "locations (one per admin tuple, nearest first, across city borders).")
    seed: int = _N.seed


@dg.asset(
    partitions_def=city_partitions, backfill_policy=CITY_BACKFILL, group_name=GROUP, owners=OWNERS, kinds={"polars", "delta"},
    metadata=DELTA, io_manager_key="io_manager", deps=[dg.AssetDep("item_catalog")],
    description="Eq. 1/3: for every anchor item, K negatives chosen by haversine distance with a "
                "density-aware scale (hard near negatives mixed with far ones), sorted near to far with "
                "soft labels p = K - rank + 1; plus the plain uniform variant for the DPO-LR ablation. "
                "Core: lgsid_pipeline/alignment/stage.py (city_negatives), lgsid_pipeline/alignment/negatives.py",
)
def distance_ranked_negatives(context: dg.AssetExecutionContext, config: NegativesConfig,
                              item_catalog: pl.DataFrame, home: LgsidHome) -> dg.Output[pl.DataFrame]:
    everything = None
    if config.far_share > 0:  # every city's items, read once for the batch
        lf = home.scan("item_catalog")
        # sorted by item_id once here, as the core sorts its far pool: each city's filtered pool
        # keeps polars' sorted flag, so the core's sort is free instead of O(N log N) per city
        # and strategy (2.4 s a call at 2.3M items); the same stable sort, so the same lists
        everything = lf.collect().sort("item_id", maintain_order=True) if lf is not None else None
    frames, meta = [], {}
    by_city = item_catalog.partition_by("city_key", as_dict=True)
    for city in run_cities(context):
        timer = Timer()
        mine = by_city.get((city,), item_catalog.clear())
        far = everything.filter(pl.col("city_key") != city) if everything is not None else None
        with timer("compute"):
            lists, results = city_negatives(mine, far, NegativeSettings(**config.model_dump()))
        frames.append(lists.with_columns(pl.lit(city).alias("city_key")))
        dense = results["density"]
        meta[city] = {"dagster/row_count": lists.height, "n_items": mine.height,
                      **{f"rank_quantiles.{name}": table(r.rank_quantiles) for name, r in results.items()},
                      **flat(dense.metrics, prefix="density."), **timer.metadata()}
    return emit(context, pl.concat(frames), meta, {"config": config_json(config)})
