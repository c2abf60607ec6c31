"""Data assets: the validated item catalog, user interactions and the quarantine, per city."""


import dagster as dg
import polars as pl

from assets.metadata import Timer, image, table
from assets.partitions import CITY_BACKFILL, DELTA, city_partitions, emit, run_cities, run_partition_keys
from lgsid_pipeline import schema
from lgsid_pipeline.geo import plot_item_map
from lgsid_pipeline.data.checks import QUARANTINE_RATE_LIMIT, catalog_problems, quarantine_rates, quarantine_verdict
from resources import DataSource, LgsidHome

GROUP = "data"
OWNERS = ["team:lgsid-data"]


@dg.multi_asset(
    outs={
        "item_catalog": dg.AssetOut(group_name=GROUP, owners=OWNERS, kinds={"polars", "delta"},
                     metadata=DELTA,
                     description="Validated local-life items of one city (name, category tree, brand, "
                                 "price, admin hierarchy, coordinates). Rejected rows go to "
                                 "catalog_quarantine. Core: lgsid_pipeline/data/catalog.py"),
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
    backfill_policy=CITY_BACKFILL,
    can_subset=False,
)
def catalog_assets(context: dg.AssetExecutionContext, source: DataSource, home: LgsidHome):
    """Load the source, validate it, and emit the slices of the three tables of this run's cities."""
    cities = run_cities(context)
    timer = Timer()
    with timer("load_and_validate"):
        items, inter, dataset = source.validated()
    # one partition by city for each table (group_by, not a filter per city: O(rows), not O(rows x cities))
    by_city = {name: dict(frame.filter(pl.col("city_key").is_in(cities)).partition_by("city_key", as_dict=True))
               for name, frame in (("items", items.valid), ("inter", inter.valid),
                                   ("q_items", items.quarantine), ("q_inter", inter.quarantine))}
    pick = lambda name, city, like: by_city[name].get((city,), like.clear())  # noqa: E731
    empty = [c for c in cities
             if pick("items", c, items.valid).height == 0 and pick("q_items", c, items.quarantine).height == 0
             and pick("q_inter", c, inter.quarantine).height == 0]
    if empty:
        raise dg.Failure(f"city partition(s) {empty[:10]} have no rows in dataset {dataset!r}; "
                         f"known cities: {sorted(set(items.valid['city_key'].to_list()))[:20]}")
    out = {"item_catalog": [], "user_interactions": [], "catalog_quarantine": []}
    meta = {"item_catalog": {}, "user_interactions": {}, "catalog_quarantine": {}}
    common = {"dataset": dataset, "source": source.describe(),
              "seconds.dataset_load": items.counts.get("seconds_load", 0.0),
              "seconds.dataset_validation": items.counts.get("seconds_validate", 0.0)}
    for city in cities:
        catalog = pick("items", city, items.valid)
        interactions = pick("inter", city, inter.valid)
        quarantine = pl.concat([pick("q_items", city, items.quarantine), pick("q_inter", city, inter.quarantine)])
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
        here = {"city": display[0]}
        meta["item_catalog"][city] = {
            **here, "dagster/row_count": catalog.height,
            "quarantined_items": quarantine.filter(pl.col("source").str.ends_with("items")).height,
            "quarantine_rate": round(1 - catalog.height / n_in, 4) if n_in else 0.0,
            "n_brands": catalog["brand"].n_unique(), "n_towns": catalog["town"].n_unique(),
            "n_cat1": catalog["cat1"].n_unique(), **plot}
        meta["user_interactions"][city] = {
            **here, "dagster/row_count": interactions.height, "n_users": interactions["user_id"].n_unique(),
            "quarantined_interactions": quarantine.filter(pl.col("source").str.ends_with("interactions")).height}
        meta["catalog_quarantine"][city] = {**here, "dagster/row_count": quarantine.height, "reasons": table(reasons)}
        out["item_catalog"].append(catalog)
        out["user_interactions"].append(interactions)
        out["catalog_quarantine"].append(quarantine)
    common.update(timer.metadata())
    if len(cities) > 1:
        common["batch_cities"] = len(cities)
    for name, frames in out.items():
        yield emit(context, pl.concat(frames), meta[name], common, output_name=name)


def _partition_slice(context: dg.AssetCheckExecutionContext, home: LgsidHome, table: str) -> pl.DataFrame:
    """The checked city's rows (checks read Delta directly; the IO manager loads one partition only)."""
    return home.read(table, run_partition_keys(context))


@dg.asset_check(asset="item_catalog", blocking=True,
                description="Schema, unique ids and valid coordinates; blocks downstream if broken.")
def catalog_schema_and_coordinates(context: dg.AssetCheckExecutionContext, home: LgsidHome) -> dg.AssetCheckResult:
    item_catalog = _partition_slice(context, home, "item_catalog")
    problems = catalog_problems(item_catalog)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none",
                                                              "rows": item_catalog.height})


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
    cities = run_partition_keys(context) or sorted(set(catalog["city_key"].to_list())
                                                   | set(quarantine["city_key"].to_list()))
    failing, figures = quarantine_verdict(quarantine_rates(catalog, interactions, quarantine, cities))
    return dg.AssetCheckResult(passed=not failing, severity=dg.AssetCheckSeverity.ERROR,
                               description="; ".join(failing) or None, metadata=figures)
