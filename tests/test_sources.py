"""Source adapters: shared-schema folders, files with a column mapping, Yelp JSON, Foursquare TSV."""

import json
import os
import time
from pathlib import Path

import polars as pl
import pytest

from lgsid_pipeline.data.catalog import DataValidationError, validate_interactions, validate_items
from lgsid_pipeline.data.sources import SourceSpec, load_foursquare, load_source, load_yelp

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_yelp(folder: Path) -> None:
    biz = [
        {"business_id": "b1", "name": "Pho 99", "city": "Phoenix", "state": "AZ", "postal_code": "85004",
         "latitude": 33.45, "longitude": -112.07, "categories": "Restaurants, Vietnamese, Pho",
         "attributes": {"RestaurantsPriceRange2": "2"}},
        {"business_id": "b2", "name": "Bagel Co", "city": "Phoenix", "state": "AZ", "postal_code": "85004",
         "latitude": 33.46, "longitude": -112.08, "categories": "Bakeries", "attributes": None},
        {"business_id": "b3", "name": "", "city": "Phoenix", "state": "AZ", "postal_code": None,
         "latitude": 33.47, "longitude": -112.09, "categories": None, "attributes": None},
    ]
    reviews = [
        {"review_id": "r1", "user_id": "u1", "business_id": "b1", "stars": 5, "date": "2018-01-01 10:00:00"},
        {"review_id": "r2", "user_id": "u1", "business_id": "b2", "stars": 4, "date": "2018-01-02 10:00:00"},
        {"review_id": "r3", "user_id": "u2", "business_id": "zz", "stars": 3, "date": "2018-01-03 10:00:00"},
    ]
    (folder / "business.json").write_text("\n".join(json.dumps(b) for b in biz))
    (folder / "review.json").write_text("\n".join(json.dumps(r) for r in reviews))


def test_yelp_adapter(tmp_path):
    _write_yelp(tmp_path)
    ds = load_yelp(tmp_path)
    items = validate_items(ds.items)
    assert items.valid["item_id"].to_list() == ["b1", "b2"]
    row = items.valid.row(0, named=True)
    assert (row["cat1"], row["cat2"], row["cat3"], row["price"], row["district"]) == (
        "Restaurants", "Vietnamese", "Pho", 2.0, "85004")
    assert items.quarantine["reason"].to_list() == ["empty_name"]
    inter = validate_interactions(ds.interactions, items.valid)
    assert inter.valid.height == 2 and inter.quarantine["reason"].to_list() == ["unknown_item"]
    assert inter.valid["timestamp"].dtype == pl.Datetime("us", "UTC")


def test_yelp_adapter_missing_field(tmp_path):
    (tmp_path / "business.json").write_text(json.dumps({"business_id": "b1", "city": "X"}))
    with pytest.raises(DataValidationError, match="business.json.*latitude"):
        load_yelp(tmp_path)


def test_foursquare_tsmc_adapter(tmp_path):
    path = tmp_path / "dataset_TSMC2014_NYC.txt"
    rows = [
        "470\t49bbd6c0f964a520f4531fe3\t4bf58dd8d48988d127951735\tArts & Crafts Store\t40.719810\t-74.002581\t-240\tTue Apr 03 18:00:09 +0000 2012",
        "979\t4a43c0aef964a520c6a61fe3\t4bf58dd8d48988d1df941735\tBridge\t40.606800\t-74.044170\t-240\tTue Apr 03 18:00:25 +0000 2012",
        "470\t4a43c0aef964a520c6a61fe3\t4bf58dd8d48988d1df941735\tBridge\t40.606800\t-74.044170\t-240\tWed Apr 04 18:00:25 +0000 2012",
    ]
    path.write_text("\n".join(rows) + "\n")
    ds = load_foursquare(path)
    items = validate_items(ds.items)
    assert items.valid.height == 2 and set(items.valid["city"]) == {"New York"}
    assert items.valid.filter(pl.col("item_id") == "4a43c0aef964a520c6a61fe3")["cat1"].item() == "Bridge"
    inter = validate_interactions(ds.interactions, items.valid)
    assert inter.valid.height == 3
    assert inter.valid["timestamp"].min().year == 2012


def test_foursquare_empty_file(tmp_path):
    path = tmp_path / "dataset_TSMC2014_NYC.txt"
    path.write_text("")
    with pytest.raises(DataValidationError, match="empty"):
        load_foursquare(path)


def test_csv_files_with_column_mapping(tmp_path):
    (tmp_path / "shops.csv").write_text(
        "shop,title,latitude,longitude,town_name\ns1,A,51.5,-0.12,London\ns2,B,51.51,-0.13,London\n")
    (tmp_path / "clicks.csv").write_text("uid,shop,ts\nu1,s1,2020-01-01T00:00:00\nu1,s2,2020-01-02T00:00:00\n")
    spec = SourceSpec(kind="files", items_file=str(tmp_path / "shops.csv"),
                      interactions_file=str(tmp_path / "clicks.csv"),
                      column_map={"item_id": "shop", "name": "title", "lat": "latitude",
                                  "lon": "longitude", "city": "town_name", "user_id": "uid",
                                  "timestamp": "ts"})
    ds = load_source(spec)
    items = validate_items(ds.items)
    assert items.valid["city_key"].unique().to_list() == ["london"]
    assert items.valid["lat"].dtype == pl.Float64
    inter = validate_interactions(ds.interactions, items.valid)
    assert inter.valid.height == 2


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "items.parquet"
    bad.write_bytes(b"this is not parquet")
    (tmp_path / "interactions.parquet").write_bytes(b"")
    with pytest.raises(DataValidationError, match="items.parquet"):
        load_source(SourceSpec(kind="folder", path=str(tmp_path)))


def test_landing_files_supersede_older_rows(landing_folder, test_world):
    base, landing = landing_folder
    first = test_world.items.head(1).with_columns(pl.lit("Renamed Shop").alias("name"))
    new = test_world.items.head(1).with_columns(pl.lit("brand-new-item").alias("item_id"))
    pl.concat([first, new]).write_parquet(landing / "batch1.parquet")
    ds = load_source(SourceSpec(kind="folder", path=str(base), landing_dir=str(landing)))
    res = validate_items(ds.items)
    assert res.quarantine.height == 0
    assert res.valid.height == test_world.items.height + 1
    first_id = test_world.items["item_id"][0]
    assert res.valid.filter(pl.col("item_id") == first_id)["name"].item() == "Renamed Shop"


@pytest.mark.parametrize("name", ["gowalla_nyc", "yelp_multicity", "foursquare_nyc"])
def test_shared_datasets_load_with_one_config_line(name):
    folder = SHARED / name
    if not folder.exists():
        pytest.skip(f"{folder} not present")
    ds = load_source(SourceSpec(kind="folder", path=str(folder)))
    items = validate_items(ds.items)
    inter = validate_interactions(ds.interactions, items.valid)
    assert items.valid.height > 10_000
    assert items.valid.height + items.quarantine.height == ds.items.height
    assert inter.valid.height + inter.quarantine.height == ds.interactions.height
    if name == "gowalla_nyc":  # about 19% of check-ins name unknown items
        share = inter.counts.get("reason:unknown_item", 0) / ds.interactions.height
        assert 0.15 < share < 0.25


def test_a_generated_folder_loads_with_one_config_line_and_every_row_is_accounted(tmp_path, test_world):
    """The twin of the shared-data test above, on a generated world written in the same folder
    schema, with unknown-item check-ins and bad coordinates mixed in: nothing is lost."""
    items = test_world.items.with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(pl.lit(95.0)).otherwise(pl.col("lat")).alias("lat"))
    ghost = test_world.interactions.head(7).with_columns(pl.lit("no-such-item").alias("item_id"))
    items.write_parquet(tmp_path / "items.parquet")
    pl.concat([test_world.interactions, ghost]).write_parquet(tmp_path / "interactions.parquet")
    ds = load_source(SourceSpec(kind="folder", path=str(tmp_path)))
    res = validate_items(ds.items)
    inter = validate_interactions(ds.interactions, res.valid)
    assert res.valid.height == items.height - 3 and res.counts["reason:coordinates_swapped"] == 3
    assert res.valid.height + res.quarantine.height == ds.items.height
    assert inter.valid.height + inter.quarantine.height == ds.interactions.height
    assert inter.counts.get("reason:unknown_item", 0) >= 7  # the ghosts, plus check-ins on the 3 rejected items


def test_duplicate_csv_header_is_refused_naming_the_column(tmp_path):
    (tmp_path / "items.csv").write_text(
        "item_id,name,lat,lon,lat,city\ns1,A,51.5,-0.12,0.0,London\n")
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1,s1\n")
    with pytest.raises(DataValidationError, match=r"items\.csv.*duplicate column.*'lat'"):
        load_source(SourceSpec(kind="folder", path=str(tmp_path)))
    # A landed CSV with a duplicate header is reported by name (not silently merged).
    (tmp_path / "items.csv").write_text("item_id,name,lat,lon,city\ns1,A,51.5,-0.12,London\n")
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "new.csv").write_text("item_id,lat,lat,lon,city\ns2,51.5,1.0,-0.12,London\n")
    ds = load_source(SourceSpec(kind="folder", path=str(tmp_path), landing_dir=str(landing)))
    assert len(ds.landing_errors) == 1 and "new.csv" in ds.landing_errors[0]
    assert "'lat'" in ds.landing_errors[0]


def test_landed_versions_follow_the_explicit_sequence_not_mtime(landing_folder, test_world):
    """Numbered landing files are ordered by their number, whatever their mtimes; inside the
    files a row's ``updated_at`` decides before file order does."""
    import os
    import time

    base, landing = landing_folder
    first_id = test_world.items["item_id"][0]
    row = test_world.items.head(1)
    row.with_columns(pl.lit("From 10").alias("name")).write_parquet(landing / "10-shops.parquet")
    row.with_columns(pl.lit("From 2").alias("name")).write_parquet(landing / "2-shops.parquet")
    # 2-shops is written last and made newest by mtime: the sequence still says 10 is newer
    later = time.time_ns() + 10_000_000_000
    os.utime(landing / "2-shops.parquet", ns=(later, later))
    spec = SourceSpec(kind="folder", path=str(base), landing_dir=str(landing))
    from lgsid_pipeline.data.sources import landing_files
    assert [p.name for p in landing_files(landing)] == ["2-shops.parquet", "10-shops.parquet"]
    name = lambda: validate_items(load_source(spec).items).valid.filter(  # noqa: E731
        pl.col("item_id") == first_id)["name"].item()
    assert name() == "From 10"
    # updated_at wins over file order: the older-numbered file holds the later version
    row.with_columns(pl.lit("From 2").alias("name"), pl.lit("2026-12-02T10:00:00Z").alias("updated_at")
                     ).write_parquet(landing / "2-shops.parquet")
    row.with_columns(pl.lit("From 10").alias("name"), pl.lit("2026-12-01T10:00:00Z").alias("updated_at")
                     ).write_parquet(landing / "10-shops.parquet")
    assert name() == "From 2"
    res = validate_items(load_source(spec).items)
    assert res.valid.height + res.quarantine.height == test_world.items.height
