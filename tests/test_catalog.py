"""Validation and quarantine reasons: every rejected row is kept with a reason."""

import math

import polars as pl
import pytest

from lgsid_pipeline.catalog import DataValidationError, validate_interactions, validate_items
from lgsid_pipeline.schema import CATALOG_SCHEMA, MAX_TEXT_CHARS, QUARANTINE_SCHEMA


def _items(**overrides):
    base = {
        "item_id": [f"i{i}" for i in range(8)],
        "name": [f"Shop {i}" for i in range(8)],
        "lat": [40.70 + i * 0.001 for i in range(8)],
        "lon": [-74.00 - i * 0.001 for i in range(8)],
        "city": ["New York"] * 8,
        "province": ["NY"] * 8,
    }
    for col, (idx, val) in overrides.items():
        base[col] = list(base[col])
        base[col][idx] = val
    return pl.DataFrame(base, strict=False)


@pytest.mark.parametrize("col,value,reason", [
    ("lat", None, "missing_coordinates"),
    ("lat", math.nan, "non_finite_coordinates"),
    ("lon", math.inf, "non_finite_coordinates"),
    ("lat", 123.0, "coordinates_swapped"),
    ("lon", 200.0, "coordinates_out_of_range"),
    ("name", "   ", "empty_name"),
    ("city", None, "missing_city"),
    ("item_id", "", "missing_item_id"),
    ("item_id", "i0", "duplicate_item_id"),
    ("name", "x" * (MAX_TEXT_CHARS + 1), "text_too_long"),
    ("name", "bad\ufffdbyte", "invalid_utf8"),
    ("name", "nul\x00byte", "control_characters"),
])
def test_each_bad_item_is_quarantined_with_its_reason(col, value, reason):
    res = validate_items(_items(**{col: (3, value)}))
    assert res.valid.height == 7
    assert res.quarantine.height == 1
    row = res.quarantine.row(0, named=True)
    assert row["reason"] == reason
    assert row["row_index"] == 3
    assert row["field"] in (col, "lat", "item_id")
    assert row["record"]  # the raw row is kept
    assert res.counts["input_rows"] == 8 and res.counts["quarantined_rows"] == 1


def test_far_from_city_catches_in_range_swapped_coordinates():
    res = validate_items(_items(lat=(2, -74.0), lon=(2, 40.70)))
    assert res.quarantine["reason"].to_list() == ["far_from_city"]


def test_null_island():
    res = validate_items(_items(lat=(1, 0.0), lon=(1, 0.0)))
    assert res.quarantine["reason"].to_list() == ["null_island_coordinates"]


def test_wrong_type_names_field():
    df = _items().with_columns(pl.Series("price", ["1.5", "cheap", "2", "3", "1", "1", "1", "1"]))
    res = validate_items(df)
    row = res.quarantine.row(0, named=True)
    assert (row["reason"], row["field"], row["row_index"]) == ("wrong_type", "price", 1)
    assert res.valid["price"].dtype == pl.Float64


def test_invalid_utf8_bytes_in_binary_column():
    df = _items().with_columns(pl.Series("name", [b"ok"] * 5 + [b"\xff\xfe bad"] + [b"ok"] * 2))
    res = validate_items(df)
    assert res.quarantine["reason"].to_list() == ["invalid_utf8"]
    assert res.quarantine["row_index"].to_list() == [5]


def test_missing_required_column_is_a_clear_error():
    with pytest.raises(DataValidationError, match=r"required column\(s\) \['lat'\]"):
        validate_items(_items().drop("lat"))


def test_dataset_without_names_keeps_items():
    res = validate_items(_items().with_columns(pl.lit(None, dtype=pl.Utf8).alias("name")))
    assert res.quarantine.height == 0 and res.valid.height == 8


def test_outputs_follow_schemas():
    res = validate_items(_items(lat=(0, None)))
    assert dict(res.valid.schema) == CATALOG_SCHEMA
    assert dict(res.quarantine.schema) == QUARANTINE_SCHEMA
    assert res.valid["city_key"].unique().to_list() == ["new-york"]


def test_interactions_unknown_items_duplicates_and_types():
    cat = validate_items(_items()).valid
    inter = pl.DataFrame({
        "user_id": ["u1", "u1", "u1", "u2", None, "u3"],
        "item_id": ["i1", "nope", "i1", "i2", "i1", "i3"],
        "timestamp": ["2020-01-01T00:00:00", "2020-01-02T00:00:00", "2020-01-01T00:00:00",
                      "not a date", "2020-01-01T00:00:00", None],
    })
    res = validate_interactions(inter, cat)
    reasons = dict(zip(res.quarantine["row_index"].to_list(), res.quarantine["reason"].to_list()))
    assert reasons == {1: "unknown_item", 2: "duplicate_interaction", 3: "wrong_type", 4: "missing_user_id"}
    assert res.valid.height == 2
    assert res.valid["city_key"].to_list() == ["new-york", "new-york"]
    assert res.valid["source_row"].to_list() == [0, 5]  # the file's row, kept for ordering
    assert res.quarantine.filter(pl.col("reason") == "unknown_item")["city_key"].to_list() == ["unassigned"]


def test_nothing_is_lost(test_world):
    items = test_world.items
    broken = pl.concat([items, items.head(5)])  # 5 duplicates
    res = validate_items(broken)
    assert res.valid.height + res.quarantine.height == broken.height
    assert res.quarantine["reason"].to_list() == ["duplicate_item_id"] * 5
