"""Training signals for alignment, per city: co-occurrence pairs (Eq. 5) and distance-ranked
negatives (Eq. 1, 3)."""

import dagster as dg
import polars as pl
from pydantic import Field

from assets.metadata import Timer, config_json, flat, table
from assets.partitions import DELTA, city_partitions
from lgsid_pipeline.cooccurrence import cooccurrence_pairs as compute_pairs
from lgsid_pipeline.negatives import distance_ranked_negatives as compute_negatives
from lgsid_pipeline.partitions import validate_city_key
from resources import LgsidHome

GROUP = "alignment"
OWNERS = ["team:lgsid-ml"]


class CooccurrenceConfig(dg.Config):
    s_th: int | None = Field(default=None, description="Keep pairs with s > s_th; None scales with the data "
                                                       "(see cooccurrence.default_threshold).")
    max_history: int = Field(default=50, description="Most recent clicks kept per user (bounds the cost).")


@dg.asset(
    partitions_def=city_partitions, group_name=GROUP, owners=OWNERS, kinds={"polars", "delta"},
    metadata=DELTA, io_manager_key="io_manager",
    description="Eq. 5: item pairs co-clicked by more than s_th users (domain-collaborative pairs "
                "D_dc for G-DPO). Core: lgsid_pipeline/cooccurrence.py",
)
def cooccurrence_pairs(context: dg.AssetExecutionContext, config: CooccurrenceConfig,
                       user_interactions: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    city = validate_city_key(context.partition_key)
    timer = Timer()
    with timer("compute"):
        result = compute_pairs(user_interactions, s_th=config.s_th, max_history=config.max_history)
    pairs = result.pairs.with_columns(pl.lit(city).alias("city_key"))
    return dg.Output(pairs, metadata={
        "dagster/row_count": pairs.height, "config": config_json(config),
        "input_interactions": user_interactions.height, **flat(result.metrics), **timer.metadata(),
    })


class NegativesConfig(dg.Config):
    k: int = Field(default=15, description="Negatives per anchor (the paper: 15).")
    density_k: int = Field(default=10, description="k of the anchor's k-th neighbour distance r_k, the "
                                                   "local density scale.")
    near_scale: float = Field(default=2.0, description="Hard negatives lie within near_scale * r_k.")
    hard_share: float = Field(default=1 / 3, description="Share of each list drawn from the hard band.")
    far_share: float = Field(default=0.2, description="Share of negatives drawn from other cities, so the reward "
                             "model also sees the other-city locations that G-DPO's far items come from.")
    max_anchors: int | None = Field(default=None, description="Cap anchors per city (seeded sample).")
    plain_variant: bool = Field(default=True, description="Also emit uniformly random lists (DPO-LR ablation).")
    seed: int = 0


@dg.asset(
    partitions_def=city_partitions, group_name=GROUP, owners=OWNERS, kinds={"polars", "delta"},
    metadata=DELTA, io_manager_key="io_manager", deps=[dg.AssetDep("item_catalog")],
    description="Eq. 1/3: for every anchor item, K negatives chosen by haversine distance with a "
                "density-aware scale (hard near negatives mixed with far ones), sorted near to far with "
                "soft labels p = K - rank + 1; plus the plain uniform variant for the DPO-LR ablation. "
                "Core: lgsid_pipeline/negatives.py",
)
def distance_ranked_negatives(context: dg.AssetExecutionContext, config: NegativesConfig,
                              item_catalog: pl.DataFrame, home: LgsidHome) -> dg.Output[pl.DataFrame]:
    city = validate_city_key(context.partition_key)
    timer = Timer()
    far = None
    if config.far_share > 0:
        lf = home.scan("item_catalog")
        far = lf.filter(pl.col("city_key") != city).collect() if lf is not None else None
    kwargs = dict(k=config.k, seed=config.seed, density_k=config.density_k, max_anchors=config.max_anchors,
                  far_items=far, far_share=config.far_share if far is not None else 0.0)
    with timer("density"):
        dense = compute_negatives(item_catalog, strategy="density", near_scale=config.near_scale,
                                  hard_share=config.hard_share, **kwargs)
    frames, meta = [dense.lists], {"rank_quantiles.density": table(dense.rank_quantiles)}
    if config.plain_variant:
        with timer("plain"):
            plain = compute_negatives(item_catalog, strategy="plain", **kwargs)
        frames.append(plain.lists)
        meta["rank_quantiles.plain"] = table(plain.rank_quantiles)
    lists = pl.concat(frames, how="diagonal_relaxed").with_columns(pl.lit(city).alias("city_key"))
    return dg.Output(lists, metadata={
        "dagster/row_count": lists.height, "config": config_json(config), "n_items": item_catalog.height,
        **meta, **flat(dense.metrics, prefix="density."), **timer.metadata(),
    })
