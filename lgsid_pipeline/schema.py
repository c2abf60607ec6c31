"""Canonical table schemas shared by every stage of the pipeline.

The item and interaction schemas follow ``../shared/data/README.md`` so the public datasets
load with one config line; the generator (``world/generator.py``) emits the same columns plus the
optional ``goods`` / ``top_sellers`` text used by the paper's prompt (Appendix A).

``city_key`` is the sanitised partition key (see ``partitions.py``); ``city`` keeps the
display name. Every per-city table carries ``city_key`` as a plain ``Utf8`` column: the Delta
partition column must always have that one type (a wrong-typed partition column silently
overwrites the whole table, dagster#34064).
"""

from __future__ import annotations

import polars as pl

ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8(),
    "name": pl.Utf8(),
    "cat1": pl.Utf8(),
    "cat2": pl.Utf8(),
    "cat3": pl.Utf8(),
    "brand": pl.Utf8(),
    "price": pl.Float64(),
    "province": pl.Utf8(),
    "city": pl.Utf8(),
    "district": pl.Utf8(),
    "town": pl.Utf8(),
    "lat": pl.Float64(),
    "lon": pl.Float64(),
    "goods": pl.Utf8(),
    "top_sellers": pl.Utf8(),
}
"""Columns of a validated catalog row, before ``city_key`` is attached."""

ITEM_COLUMNS: list[str] = list(ITEM_SCHEMA)
CATALOG_SCHEMA: dict[str, pl.DataType] = {**ITEM_SCHEMA, "city_key": pl.Utf8()}

INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8(),
    "item_id": pl.Utf8(),
    "timestamp": pl.Datetime("us", "UTC"),
    "seq_idx": pl.Int64(),
    "split": pl.Utf8(),
}
INTERACTIONS_TABLE_SCHEMA: dict[str, pl.DataType] = {
    **INTERACTION_SCHEMA,
    "city_key": pl.Utf8(),
    # 0-based row of the source interactions file. A Delta table read back does not keep row
    # order, and for sources ordered by neither timestamp nor seq_idx (yelp_multicity: order
    # inside a split is the file order) this column is the order.
    "source_row": pl.Int64(),
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.Utf8(),  # "items" or "interactions" (or the file name for adapters)
    "row_index": pl.Int64(),  # 0-based row number in the source file / frame
    "field": pl.Utf8(),  # the offending column
    "reason": pl.Utf8(),  # machine-readable reason code, e.g. "lat_out_of_range"
    "detail": pl.Utf8(),  # human-readable explanation
    "record": pl.Utf8(),  # the raw row as JSON (truncated), so nothing is lost
    "city_key": pl.Utf8(),
}

PARTITION_COLUMN = "city_key"

MAX_TEXT_CHARS = 2_000
"""Longer text fields are 'absurdly long' and the row is quarantined."""


def source_order(df: pl.DataFrame) -> pl.Series:
    """Source row order of ``df``: its ``source_row`` column when present and complete (tables
    written before the column existed read back with nulls), else the frame's own row order."""
    if "source_row" in df.columns and df.height and df["source_row"].null_count() == 0:
        return df["source_row"].cast(pl.Int64)
    return pl.int_range(0, df.height, dtype=pl.Int64, eager=True)


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select ``schema``'s columns in order with their dtypes; absent columns become nulls."""
    exprs = []
    for col, dtype in schema.items():
        if col in df.columns:
            exprs.append(pl.col(col).cast(dtype, strict=False).alias(col))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(col))
    return df.select(exprs)
