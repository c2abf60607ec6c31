"""Dagster wiring of the data stage: partitions, Delta isolation, sensor cursor, schedule."""

import datetime
import os
import time

import dagster as dg
import polars as pl
import pytest

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


def _landing_setup(tmp_path, test_world):
    base = tmp_path / "base"
    base.mkdir()
    test_world.items.write_parquet(base / "items.parquet")
    test_world.interactions.write_parquet(base / "interactions.parquet")
    landing = tmp_path / "landing"
    landing.mkdir()
    return DataSource(kind="folder", path=str(base), landing_dir=str(landing)), landing


def test_sensor_cursor_new_cities_and_exactly_once(tmp_path, test_world):
    source, landing = _landing_setup(tmp_path, test_world)
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
    requested = sorted(r.partition_key for r in result.run_requests)
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
    assert [r.partition_key for r in third.run_requests] == ["springfield-illinois"]
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
        assert sorted(r.partition_key for r in requests) == ["portland", "springfield-illinois"]
        assert len({r.run_key for r in requests}) == 2


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
