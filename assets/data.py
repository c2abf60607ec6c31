"""Data assets: the validated item catalog, user interactions and the quarantine, per city."""


import dagster as dg
import polars as pl

from assets.metadata import Timer, image, table
from assets.partitions import DELTA, city_partitions
from lgsid_pipeline import schema
from lgsid_pipeline.geo import plot_item_map
from lgsid_pipeline.partitions import UNASSIGNED, validate_city_key
from resources import DataSource, LgsidHome

GROUP = "data"
OWNERS = ["team:lgsid-data"]


@dg.multi_asset(
    outs={
        "item_catalog": dg.AssetOut(group_name=GROUP, owners=OWNERS, kinds={"polars", "delta"},
                     metadata=DELTA,
                     description="Validated local-life items of one city (name, category tree, brand, "
                                 "price, admin hierarchy, coordinates). Rejected rows go to "
                                 "catalog_quarantine. Core: lgsid_pipeline/catalog.py"),
        "user_interactions": dg.AssetOut(group_name=GROUP, owners=OWNERS, kinds={"polars", "delta"},
                     metadata=DELTA,
                     description="User clicks / check-ins on this city's items (timestamp or seq_idx "
                                 "order; source_row keeps each row's position in the source file, the "
                                 "order of sources that have neither). Interactions on unknown items "
                                 "are quarantined."),
        "catalog_quarantine": dg.AssetOut(group_name=GROUP, owners=OWNERS, kinds={"polars", "delta"},
                     metadata=DELTA,
                     description="Every rejected item or interaction row with its reason, field and raw "
                                 "record: nothing is dropped silently."),
    },
    partitions_def=city_partitions,
    can_subset=False,
)
def catalog_assets(context: dg.AssetExecutionContext, source: DataSource, home: LgsidHome):
    """Load the source, validate it, and emit this city's slice of the three tables."""
    city = validate_city_key(context.partition_key)
    timer = Timer()
    with timer("load_and_validate"):
        items, inter, dataset = source.validated()
    catalog = items.valid.filter(pl.col("city_key") == city)
    interactions = inter.valid.filter(pl.col("city_key") == city)
    quarantine = pl.concat(
        [items.quarantine.filter(pl.col("city_key") == city),
         inter.quarantine.filter(pl.col("city_key") == city)]
    )
    if catalog.height == 0 and quarantine.height == 0:
        raise dg.Failure(f"city partition {city!r} has no rows in dataset {dataset!r}; "
                         f"known cities: {sorted(set(items.valid['city_key'].to_list()))[:20]}")
    display = catalog["city"].drop_nulls().head(1).to_list() or [city]
    reasons = (quarantine.group_by("source", "reason").len().sort("len", descending=True)
               if quarantine.height else pl.DataFrame({"source": [], "reason": [], "len": []}))
    n_in = catalog.height + quarantine.filter(pl.col("source").str.ends_with("items")).height
    plot = {}
    if catalog.height:
        with timer("map"):
            path = plot_item_map(catalog["lat"].to_numpy(), catalog["lon"].to_numpy(), catalog["cat1"].to_list(),
                                 home.artifact_dir("plots", "item_catalog") / f"{city}.png",
                                 title=f"{display[0]}: {catalog.height} items by cat1")
        plot = {"map": image(path, f"{city} items")}
    common = {"dataset": dataset, "source": source.describe(), "city": display[0], **timer.metadata(),
              "seconds.dataset_load": items.counts.get("seconds_load", 0.0),
              "seconds.dataset_validation": items.counts.get("seconds_validate", 0.0)}
    yield dg.Output(
        catalog, output_name="item_catalog",
        metadata={**common, "dagster/row_count": catalog.height, "quarantined_items":
                  quarantine.filter(pl.col("source").str.ends_with("items")).height,
                  "quarantine_rate": round(1 - catalog.height / n_in, 4) if n_in else 0.0,
                  "n_brands": catalog["brand"].n_unique(), "n_towns": catalog["town"].n_unique(),
                  "n_cat1": catalog["cat1"].n_unique(), **plot},
    )
    yield dg.Output(
        interactions, output_name="user_interactions",
        metadata={**common, "dagster/row_count": interactions.height,
                  "n_users": interactions["user_id"].n_unique(),
                  "quarantined_interactions":
                      quarantine.filter(pl.col("source").str.ends_with("interactions")).height},
    )
    yield dg.Output(
        quarantine, output_name="catalog_quarantine",
        metadata={**common, "dagster/row_count": quarantine.height, "reasons": table(reasons)},
    )


def _partition_slice(context: dg.AssetCheckExecutionContext, home: LgsidHome, table: str) -> pl.DataFrame:
    """The checked city's rows (checks read Delta directly; the IO manager loads one partition only)."""
    city = context.run.tags.get("dagster/partition")
    return home.read(table, [city] if city else None)


@dg.asset_check(asset="item_catalog", blocking=True,
                description="Schema, unique ids and valid coordinates; blocks downstream if broken.")
def catalog_schema_and_coordinates(context: dg.AssetCheckExecutionContext, home: LgsidHome) -> dg.AssetCheckResult:
    item_catalog = _partition_slice(context, home, "item_catalog")
    problems = []
    for col, dtype in schema.CATALOG_SCHEMA.items():
        if col not in item_catalog.columns:
            problems.append(f"missing column {col}")
        elif item_catalog.schema[col] != dtype:
            problems.append(f"{col} has dtype {item_catalog.schema[col]}, expected {dtype}")
    if not problems:
        if item_catalog["item_id"].is_duplicated().any():
            problems.append("duplicated item_id")
        bad = item_catalog.filter(~pl.col("lat").is_between(-90, 90) | ~pl.col("lon").is_between(-180, 180)
                                  | pl.col("lat").is_null() | pl.col("lon").is_null())
        if bad.height:
            problems.append(f"{bad.height} rows with invalid coordinates")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none",
                                                              "rows": item_catalog.height})


QUARANTINE_RATE_LIMIT = 0.2


@dg.asset_check(asset="catalog_quarantine", blocking=True,
                description=f"Fails when more than {QUARANTINE_RATE_LIMIT:.0%} of a city's item rows or "
                            "of its interaction rows are rejected (the 'unassigned' partition, which "
                            "only holds rows without a city or on unknown items, is exempt).")
def quarantine_rate(context: dg.AssetCheckExecutionContext, home: LgsidHome) -> dg.AssetCheckResult:
    quarantine = _partition_slice(context, home, "catalog_quarantine")
    catalog = _partition_slice(context, home, "item_catalog")
    try:
        interactions = _partition_slice(context, home, "user_interactions")
    except FileNotFoundError:  # no interaction was ever written (a dataset without any)
        interactions = schema.empty_frame(schema.INTERACTIONS_TABLE_SCHEMA)
    rejected = quarantine.filter(pl.col("source").str.ends_with("items")).height
    rejected_inter = quarantine.filter(pl.col("source").str.ends_with("interactions")).height
    total = rejected + catalog.height
    total_inter = rejected_inter + interactions.height
    rate = rejected / total if total else 0.0
    rate_inter = rejected_inter / total_inter if total_inter else 0.0
    exempt = context.run.tags.get("dagster/partition") == UNASSIGNED
    failing = [] if exempt else [
        f"{what} quarantine rate {r:.1%} exceeds {QUARANTINE_RATE_LIMIT:.0%}"
        for what, r in (("item", rate), ("interaction", rate_inter)) if r > QUARANTINE_RATE_LIMIT]
    return dg.AssetCheckResult(
        passed=not failing,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(failing) or None,
        metadata={"item_quarantine_rate": rate, "rejected_items": rejected, "items_in": total,
                  "interaction_quarantine_rate": rate_inter, "rejected_interactions": rejected_inter,
                  "interactions_in": total_inter, "limit": QUARANTINE_RATE_LIMIT,
                  "exempt_partition": exempt},
    )
