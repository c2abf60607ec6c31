"""The data checks' verdicts: is a stored catalog well-formed, and did a city lose too many rows
to the quarantine? Pure functions over frames; the Dagster checks only read the tables and wrap
these results."""

from __future__ import annotations

import polars as pl

from lgsid_pipeline import schema
from lgsid_pipeline.geo import out_of_range
from lgsid_pipeline.partitions import UNASSIGNED

QUARANTINE_RATE_LIMIT = 0.2  # a city fails when more than this share of its rows is rejected


def catalog_problems(catalog: pl.DataFrame) -> list[str]:
    """What is wrong with a stored catalog: missing or mistyped columns first (then nothing else
    is checked), else duplicated ids and rows whose coordinates are missing or out of range."""
    problems = []
    for col, dtype in schema.CATALOG_SCHEMA.items():
        if col not in catalog.columns:
            problems.append(f"missing column {col}")
        elif catalog.schema[col] != dtype:
            problems.append(f"{col} has dtype {catalog.schema[col]}, expected {dtype}")
    if problems:
        return problems
    if catalog["item_id"].is_duplicated().any():
        problems.append("duplicated item_id")
    lat, lon = pl.col("lat"), pl.col("lon")
    bad = catalog.filter(lat.is_null() | lon.is_null() | ~lat.is_finite() | ~lon.is_finite()
                         | out_of_range(lat, lon))
    if bad.height:
        problems.append(f"{bad.height} rows with invalid coordinates")
    return problems


def quarantine_rates(catalog: pl.DataFrame, interactions: pl.DataFrame, quarantine: pl.DataFrame,
                     cities: list[str]) -> pl.DataFrame:
    """One row per city: kept and rejected item and interaction rows and the two rejection rates
    (rejected / (kept + rejected)); the 'unassigned' partition is marked ``exempt``, since it only
    holds rows without a city or on unknown items."""
    def count(frame: pl.DataFrame, name: str, where: pl.Expr | None = None) -> pl.DataFrame:
        frame = frame.filter(where) if where is not None else frame
        return frame.group_by("city_key").agg(pl.len().cast(pl.Int64).alias(name))
    is_items = pl.col("source").str.ends_with("items")
    per = pl.DataFrame({"city_key": cities}, schema={"city_key": pl.Utf8})
    for part in (count(catalog, "n_items"), count(interactions, "n_inter"),
                 count(quarantine, "rejected", is_items), count(quarantine, "rejected_inter", ~is_items)):
        per = per.join(part, on="city_key", how="left")
    per = per.fill_null(0).with_columns(
        (pl.col("rejected") + pl.col("n_items")).alias("total"),
        (pl.col("rejected_inter") + pl.col("n_inter")).alias("total_inter"),
        (pl.col("city_key") == UNASSIGNED).alias("exempt"))
    return per.with_columns(
        pl.when(pl.col("total") > 0).then(pl.col("rejected") / pl.col("total")).otherwise(0.0).alias("rate"),
        pl.when(pl.col("total_inter") > 0).then(pl.col("rejected_inter") / pl.col("total_inter"))
        .otherwise(0.0).alias("rate_inter"))


def quarantine_verdict(per: pl.DataFrame, limit: float = QUARANTINE_RATE_LIMIT) -> tuple[list[str], dict]:
    """The failing cities' messages and the figures of the worst non-exempt city (both rates).
    With one city the messages drop the city prefix."""
    failing = [f"{r['city_key']}: {what} quarantine rate {r[col]:.1%} exceeds {limit:.0%}"
               for r in per.filter(~pl.col("exempt")).iter_rows(named=True)
               for what, col in (("item", "rate"), ("interaction", "rate_inter")) if r[col] > limit]
    ranked = per.with_columns(pl.when(pl.col("exempt")).then(-1.0)
                              .otherwise(pl.max_horizontal("rate", "rate_inter")).alias("worst")).sort("worst")
    w = ranked.row(-1, named=True) if ranked.height else dict(city_key=None, rate=0.0, rejected=0, total=0,
                                                              rate_inter=0.0, rejected_inter=0, total_inter=0,
                                                              exempt=False)
    if per.height == 1:  # one city: its own figures, as before batching
        failing = [f.split(": ", 1)[1] for f in failing]
    figures = {"item_quarantine_rate": float(w["rate"]), "rejected_items": int(w["rejected"]),
               "items_in": int(w["total"]), "interaction_quarantine_rate": float(w["rate_inter"]),
               "rejected_interactions": int(w["rejected_inter"]), "interactions_in": int(w["total_inter"]),
               "limit": limit, "exempt_partition": bool(w["exempt"])}
    if per.height > 1:
        figures.update(cities_checked=per.height, worst_city=w["city_key"] or "none")
    return failing, figures
