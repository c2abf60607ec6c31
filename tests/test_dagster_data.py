"""Dagster wiring of the data stage: partitions, Delta isolation, sensor cursor, schedule."""

import datetime
import os
import time

import dagster as dg
import polars as pl
import pytest

from assets.partitions import request_cities, result_cities
from assets.data import catalog_assets, catalog_schema_and_coordinates, quarantine_rate
from orchestration.definitions import build_defs, build_resources
from orchestration.schedules import weekly_refresh_schedule
from orchestration.sensors import new_items_sensor
from resources import DataSource, LgsidHome

ASSETS = [catalog_assets, catalog_schema_and_coordinates, quarantine_rate]
SOURCE = DataSource(kind="generator", preset="test", seed=0)


def _materialize(home, city, source=SOURCE, instance=None):
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("city", [city])
    result = dg.materialize(ASSETS, partition_key=city, instance=instance,
                            resources=build_resources(str(home), source))
    assert result.success
    return result


def test_definitions_load_and_validate():
    defs = build_defs(home="/tmp/lgsid-defs-test", source=SOURCE)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"item_catalog", "user_interactions", "catalog_quarantine"} <= keys
    defs.resolve_job_def("city_refresh_job")
    defs.resolve_job_def("global_refit_job")


def test_catalog_for_two_generator_cities(home):
    instance = dg.DagsterInstance.ephemeral()
    cities = SOURCE.city_keys()
    assert {"springfield-illinois", "springfield-massachusetts"} <= set(cities)
    for city in cities[:2]:
        result = _materialize(home, city, instance=instance)
        mats = result.asset_materializations_for_node("catalog_assets")
        assert {m.asset_key.to_user_string() for m in mats} == {
            "item_catalog", "user_interactions", "catalog_quarantine"}
        cat_meta = next(m for m in mats if m.asset_key.to_user_string() == "item_catalog").metadata
        assert cat_meta["dagster/row_count"].value > 0
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks)
    table = LgsidHome(home=str(home)).read("item_catalog")
    assert sorted(table["city_key"].unique().to_list()) == sorted(cities[:2])
    # Springfield IL and MA stay apart despite the same display name.
    assert table.group_by("city_key").agg(pl.col("province").n_unique())["province"].to_list() == [1, 1]


def test_rematerializing_one_city_leaves_other_cities_identical(home):
    """dagster#34064: a wrong-typed partition column silently overwrites the whole table."""
    instance = dg.DagsterInstance.ephemeral()
    cities = SOURCE.city_keys()
    for city in cities:
        _materialize(home, city, instance=instance)
    store = LgsidHome(home=str(home))
    before = {t: store.read(t).sort(pl.all()) for t in ("item_catalog", "user_interactions")}
    _materialize(home, cities[0], instance=instance)
    for table, old in before.items():
        new = store.read(table).sort(pl.all())
        for city in cities[1:]:
            assert new.filter(pl.col("city_key") == city).equals(old.filter(pl.col("city_key") == city))
        assert new.filter(pl.col("city_key") == cities[0]).height == old.filter(
            pl.col("city_key") == cities[0]).height
        assert new["city_key"].dtype == pl.Utf8


def test_hostile_partition_key_is_refused(home):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("city", ["../../etc"])
    result = dg.materialize(ASSETS, partition_key="../../etc", instance=instance,
                            resources=build_resources(str(home), SOURCE), raise_on_error=False)
    assert not result.success
    assert not any(p.name == "etc" for p in home.parent.rglob("etc"))


def test_split_order_survives_the_delta_round_trip(tmp_path, home, test_world):
    """A source ordered only by its file (yelp_multicity: a fixed split, no timestamps) gives
    the same leave-one-out split from the user_interactions Delta table as from the file,
    because the catalog stage keeps each row's ``source_row``."""
    from lgsid_pipeline.recommenders.data import next_item_split

    base = tmp_path / "setlike"
    base.mkdir()
    test_world.items.write_parquet(base / "items.parquet")
    # One row per (user, item), as in yelp_multicity (repeats would be exact duplicates here).
    inter = (test_world.interactions.drop("timestamp", "seq_idx", "split", strict=False)
             .unique(["user_id", "item_id"], keep="first", maintain_order=True))
    rank = pl.int_range(pl.len()).over("user_id") / pl.len().over("user_id")
    inter = inter.with_columns(pl.when(rank < 0.7).then(pl.lit("train")).when(rank < 0.8).then(pl.lit("tune"))
                               .otherwise(pl.lit("test")).alias("split")).sample(fraction=1.0, shuffle=True, seed=0)
    inter.write_parquet(base / "interactions.parquet")
    source = DataSource(kind="folder", path=str(base))
    instance = dg.DagsterInstance.ephemeral()
    cities = source.city_keys()
    for city in cities:
        _materialize(home, city, source=source, instance=instance)
    table = LgsidHome(home=str(home)).read("user_interactions")
    assert table.height == inter.height  # nothing quarantined: the comparison is like for like
    assert table["source_row"].null_count() == 0 and table["source_row"].n_unique() == table.height
    on_file = next_item_split(inter, min_core=0)
    from_delta = next_item_split(table.sample(fraction=1.0, shuffle=True, seed=1), min_core=0)
    assert from_delta.order == on_file.order == "split"
    assert from_delta.user_ids == on_file.user_ids
    assert [a.tolist() for a in from_delta.history("serve")] == [a.tolist() for a in on_file.history("serve")]


def test_older_table_without_source_row_takes_the_new_column(home):
    """Additive schema evolution: a table written before ``source_row`` existed accepts a new
    write of one city; the other cities keep their rows (new column null)."""
    from deltalake import write_deltalake

    instance = dg.DagsterInstance.ephemeral()
    cities = SOURCE.city_keys()[:2]
    for city in cities:
        _materialize(home, city, instance=instance)
    store = LgsidHome(home=str(home))
    old = store.read("user_interactions").drop("source_row")
    write_deltalake(store.table_uri("user_interactions"), old.to_arrow(), mode="overwrite", schema_mode="overwrite", partition_by=["city_key"])
    assert "source_row" not in store.read("user_interactions").columns
    _materialize(home, cities[0], instance=instance)
    new = store.read("user_interactions")
    for city in cities:
        assert new.filter(pl.col("city_key") == city).height == old.filter(pl.col("city_key") == city).height
    assert new.filter(pl.col("city_key") == cities[0])["source_row"].null_count() == 0
    assert new.filter(pl.col("city_key") == cities[1])["source_row"].null_count() == old.filter(
        pl.col("city_key") == cities[1]).height


def _landing_setup(landing_folder):
    base, landing = landing_folder
    return DataSource(kind="folder", path=str(base), landing_dir=str(landing)), landing


def test_sensor_cursor_new_cities_and_exactly_once(landing_folder, test_world):
    source, landing = _landing_setup(landing_folder)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"source": source})
        return new_items_sensor(ctx)

    assert isinstance(tick(None), dg.SkipReason)  # empty landing folder
    one_city = test_world.items.filter(pl.col("city") == "Portland").head(3)
    new_city = one_city.with_columns(pl.lit("São Paulo").alias("city"), pl.lit("SP").alias("province"),
                                     (pl.col("item_id") + "-sp").alias("item_id"),
                                     pl.lit(-23.55).alias("lat"), pl.lit(-46.63).alias("lon"))
    pl.concat([one_city.with_columns(pl.lit("Renamed").alias("name")), new_city]).write_parquet(
        landing / "batch-001.parquet")
    result = tick(None)
    assert isinstance(result, dg.SensorResult)
    requested = result_cities(result, instance)
    assert requested == ["portland", "sao-paulo"]  # only the changed cities
    added = result.dynamic_partitions_requests[0].partition_keys
    assert "sao-paulo" in added
    cursor = result.cursor
    # Second tick with no new files requests nothing (also after a "restart": same stored cursor).
    again = tick(cursor)
    assert isinstance(again, dg.SkipReason)
    # A later file for one Springfield triggers that city only, and once.
    spring = test_world.items.filter(pl.col("province") == "Illinois").head(2).with_columns(
        (pl.col("item_id") + "-new").alias("item_id"))
    time.sleep(0.01)
    spring.write_parquet(landing / "batch-002.parquet")
    third = tick(cursor)
    assert result_cities(third, instance) == ["springfield-illinois"]
    assert isinstance(tick(third.cursor), dg.SkipReason)
    run_keys = [r.run_key for r in result.run_requests + third.run_requests]
    assert len(run_keys) == len(set(run_keys))


def test_weekly_schedule_refreshes_every_city():
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(instance=instance)
        assert isinstance(weekly_refresh_schedule(ctx), dg.SkipReason)
        instance.add_dynamic_partitions("city", ["portland", "springfield-illinois"])
        when = datetime.datetime(2026, 11, 23, 2, tzinfo=datetime.timezone.utc)
        requests = weekly_refresh_schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
        order = list(instance.get_dynamic_partitions("city"))
        assert sorted(c for r in requests for c in request_cities(r, order)) == ["portland", "springfield-illinois"]
        assert len(requests) == 1  # one run for the batch of both cities, not one per city


def test_dagster_definitions_validate_cli(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "dagster.yaml", tmp_path / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "LGSID_HOME": str(tmp_path / "home")}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "All code locations passed validation" in proc.stderr + proc.stdout


def test_quarantine_rate_check_blocks_a_city_whose_interactions_are_all_rejected(tmp_path, home, test_world):
    """The blocking check covers interactions too: 100% of a city's interactions quarantined
    (here: timestamps that are no date at all) fails it, with metadata for items and interactions."""
    data = tmp_path / "data"
    data.mkdir()
    test_world.items.write_parquet(data / "items.parquet")
    portland_ids = test_world.items.filter(pl.col("city") == "Portland")["item_id"]
    inter = test_world.interactions.with_columns(pl.col("timestamp").cast(pl.Utf8)).with_columns(
        pl.when(pl.col("item_id").is_in(portland_ids.implode())).then(pl.lit("not a date"))
        .otherwise(pl.col("timestamp")).alias("timestamp"))
    inter.write_parquet(data / "interactions.parquet")
    source = DataSource(kind="folder", path=str(data))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("city", ["portland"])
    result = dg.materialize(ASSETS, partition_key="portland", instance=instance,
                            resources=build_resources(str(home), source), raise_on_error=False)
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "quarantine_rate")
    assert not check.passed
    meta = {k: v.value for k, v in check.metadata.items()}
    assert meta["interaction_quarantine_rate"] == 1.0 and meta["rejected_interactions"] > 0
    assert meta["item_quarantine_rate"] == 0.0 and "rejected_items" in meta
