"""Validation and quarantine reasons: every rejected row is kept with a reason."""

import math

import polars as pl
import pytest

from lgsid_pipeline.data.catalog import DataValidationError, validate_interactions, validate_items
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


# -- format mismatches (issue tracker: integer epochs, list-typed lat, "Unassigned" city) --------

def _inter(timestamps, dtype=pl.Int64):
    n = len(timestamps)
    return pl.DataFrame({"user_id": ["u1"] * n, "item_id": [f"i{i}" for i in range(n)],
                         "timestamp": pl.Series(timestamps, dtype=dtype)})


def test_integer_epoch_seconds_and_milliseconds_are_timestamps():
    import datetime as dt

    catalog = validate_items(_items()).valid
    res = validate_interactions(_inter([1_700_000_000, 1_700_000_001, 1_700_000_000_123]), catalog)
    assert res.quarantine.height == 0, res.quarantine
    utc = dt.timezone.utc
    ts = res.valid.sort("item_id")["timestamp"].to_list()
    assert ts[0] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=utc)  # seconds
    assert ts[2] == dt.datetime(2023, 11, 14, 22, 13, 20, 123_000, tzinfo=utc)  # milliseconds
    # A CSV column (read as text) of epoch digits is accepted the same way.
    text = validate_interactions(_inter(["1700000000", " 1700000001 "], dtype=pl.Utf8), catalog)
    assert text.quarantine.height == 0 and text.valid["timestamp"].null_count() == 0


def test_implausible_integer_timestamp_is_quarantined_with_reason():
    catalog = validate_items(_items()).valid
    res = validate_interactions(_inter([1_700_000_000, 10**17]), catalog)
    assert res.valid.height == 1
    row = res.quarantine.row(0, named=True)
    assert (row["reason"], row["field"]) == ("wrong_type", "timestamp")
    assert "epoch" in row["detail"]


def test_list_typed_lat_is_quarantined_naming_column_and_type():
    items = pl.DataFrame({"item_id": ["a", "b"], "name": ["A", "B"], "lat": [[40.7], [40.71]],
                          "lon": [-74.0, -74.01], "city": ["New York"] * 2, "province": ["NY"] * 2})
    res = validate_items(items)  # no raw polars InvalidOperationError
    assert res.valid.height == 0 and res.quarantine.height == 2
    assert set(res.quarantine["reason"]) == {"wrong_type"} and set(res.quarantine["field"]) == {"lat"}
    detail = res.quarantine["detail"][0]
    assert "lat" in detail and "List" in detail and "Float64" in detail


def test_real_city_named_unassigned_is_not_the_exempt_partition():
    from lgsid_pipeline.partitions import UNASSIGNED

    items = _items(city=(0, None)).with_columns(
        pl.when(pl.col("item_id").is_in(["i1", "i2", "i3"])).then(pl.lit("Unassigned"))
        .otherwise(pl.col("city")).alias("city"))
    res = validate_items(items)
    keys = dict(res.valid.select("item_id", "city_key").iter_rows())
    assert keys["i1"] == keys["i2"] == keys["i3"] != UNASSIGNED
    assert res.quarantine.filter(pl.col("reason") == "missing_city")["city_key"].to_list() == [UNASSIGNED]
