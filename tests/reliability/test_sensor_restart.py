"""The new-items sensor across daemon restarts: every landed file is processed exactly once.

The daemon persists a sensor's cursor in the instance's storage after each tick; here the
cursor is stored in a real sqlite ``DagsterInstance`` (a temporary ``DAGSTER_HOME``), the
instance is closed ("daemon stopped"), files land, and a fresh instance on the same home
("daemon restarted") reads the cursor back and ticks again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import polars as pl

from assets.partitions import request_cities, result_cities
from orchestration.sensors import new_items_sensor
from resources import DataSource

CURSOR_KEY = "sensor_cursor/new_items_sensor"


def _instance(dagster_home: Path) -> dg.DagsterInstance:
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(dagster_home))


def _tick(instance, source, requested: dict[str, list[str]], run_keys: list[str]):
    """One daemon tick: read the stored cursor, evaluate, record the requests, store the cursor."""
    cursor = instance.run_storage.get_cursor_values({CURSOR_KEY}).get(CURSOR_KEY)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"source": source})
    result = new_items_sensor(ctx)
    if isinstance(result, dg.SkipReason):
        return result
    order = list(instance.get_dynamic_partitions("city"))
    for add in result.dynamic_partitions_requests or []:
        order += [k for k in add.partition_keys if k not in order]
    for req in result.run_requests:
        run_keys.append(req.run_key)
        for name in req.tags["lgsid/files"].split(","):
            requested.setdefault(name.split("@")[0], []).extend(request_cities(req, order))
    if result.dynamic_partitions_requests:
        instance.add_dynamic_partitions("city", list(result.dynamic_partitions_requests[0].partition_keys))
    instance.run_storage.set_cursor_values({CURSOR_KEY: result.cursor})
    return result


def _land(landing: Path, name: str, items: pl.DataFrame, suffix: str) -> None:
    time.sleep(0.01)  # distinct mtimes, as real landings have
    items.with_columns((pl.col("item_id") + suffix).alias("item_id")).write_parquet(landing / name)


def test_files_landed_while_daemon_is_down_are_processed_exactly_once(tmp_path, landing_folder, test_world, figures):
    base, landing = landing_folder
    source = DataSource(kind="folder", path=str(base), landing_dir=str(landing))
    home = tmp_path / "dagster_home"
    home.mkdir()
    portland = test_world.items.filter(pl.col("city") == "Portland").head(3)
    illinois = test_world.items.filter(pl.col("province") == "Illinois").head(3)
    requested: dict[str, list[str]] = {}
    run_keys: list[str] = []

    inst = _instance(home)
    assert isinstance(_tick(inst, source, requested, run_keys), dg.SkipReason)
    _land(landing, "batch-001.parquet", portland, "-a")
    first = _tick(inst, source, requested, run_keys)
    assert result_cities(first, inst) == ["portland"]
    inst.dispose()  # daemon stopped

    _land(landing, "batch-002.parquet", illinois, "-b")
    _land(landing, "batch-003.parquet", pl.concat([portland, illinois]), "-c")
    inst = _instance(home)  # daemon restarted: a fresh instance on the same storage
    second = _tick(inst, source, requested, run_keys)
    assert result_cities(second, inst) == ["portland", "springfield-illinois"]
    assert isinstance(_tick(inst, source, requested, run_keys), dg.SkipReason)
    inst.dispose()

    inst = _instance(home)  # a second restart with nothing new
    assert isinstance(_tick(inst, source, requested, run_keys), dg.SkipReason)
    _land(landing, "batch-004.parquet", illinois, "-d")
    third = _tick(inst, source, requested, run_keys)
    assert result_cities(third, inst) == ["springfield-illinois"]
    inst.dispose()

    # Each file is carried by exactly one run request, once per city of that run. batch-002
    # (Illinois only) landed beside batch-003 (both cities) while the daemon was down, so one
    # batch run refreshes both cities and lists both files.
    expected = {"batch-001.parquet": ["portland"], "batch-002.parquet": ["portland", "springfield-illinois"],
                "batch-003.parquet": ["portland", "springfield-illinois"],
                "batch-004.parquet": ["springfield-illinois"]}
    assert {k: sorted(v) for k, v in requested.items()} == expected
    assert len(run_keys) == len(set(run_keys))
    figures.add("sensor restarts with every file processed exactly once", 2)
    figures.add("landed files processed exactly once", len(expected))


def test_tick_lost_before_cursor_saved_repeats_same_run_keys(landing_folder, test_world, figures):
    """Daemon killed after evaluating a tick but before storing its cursor: the re-evaluated
    tick requests the same runs with the same ``run_key``s, which Dagster launches only once."""
    base, landing = landing_folder
    source = DataSource(kind="folder", path=str(base), landing_dir=str(landing))
    _land(landing, "batch-001.parquet", test_world.items.filter(pl.col("city") == "Portland").head(2), "-x")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"source": source})
        lost = new_items_sensor(ctx)  # its cursor never reaches storage
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"source": source})
        again = new_items_sensor(ctx)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in lost.run_requests]
    assert again.cursor == lost.cursor
    figures.add("sensor crash-before-cursor drills (deduplicated by run_key)")


def test_corrupt_landed_file_does_not_block_other_files(landing_folder, test_world, figures):
    """A landed file that cannot be read is reported with its name and skipped; it must not
    wedge the sensor (before the fix every tick failed on it)."""
    base, landing = landing_folder
    source = DataSource(kind="folder", path=str(base), landing_dir=str(landing))
    (landing / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    _land(landing, "good.parquet", test_world.items.filter(pl.col("city") == "Portland").head(2), "-g")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"source": source})
        result = new_items_sensor(ctx)
        assert result_cities(result, instance) == ["portland"]  # the good file
        # Not marked processed: it is retried (and named) on the next tick, never forgotten.
        assert "broken.parquet" not in json.loads(result.cursor)
        assert "good.parquet" in json.loads(result.cursor)
        ctx = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"source": source})
        again = new_items_sensor(ctx)
        assert isinstance(again, dg.SkipReason) and "broken.parquet" in again.skip_message
    from lgsid_pipeline.data.sources import load_source

    ds = load_source(source.spec())
    assert len(ds.landing_errors) == 1 and "broken.parquet" in ds.landing_errors[0]
    assert ds.items.filter(pl.col("item_id").str.ends_with("-g")).height == 2
    figures.add("corrupt landed files skipped with a named error", 1)


def test_sensor_applies_the_sources_column_map_and_retries_unplannable_files(tmp_path, test_world):
    """A files source with a column_map ({"item_id": "shop"}): landed files in the source's own
    column names are planned with that mapping; a file that cannot be planned stays out of the
    cursor (retried next tick) and is named with the missing column."""
    base = tmp_path / "base"
    base.mkdir()
    test_world.items.rename({"item_id": "shop"}).write_parquet(base / "shops.parquet")
    test_world.interactions.rename({"item_id": "shop"}).write_parquet(base / "visits.parquet")
    landing = tmp_path / "landing"
    landing.mkdir()
    source = DataSource(kind="files", items_file=str(base / "shops.parquet"),
                        interactions_file=str(base / "visits.parquet"),
                        column_map={"item_id": "shop"}, landing_dir=str(landing))
    portland = test_world.items.filter(pl.col("city") == "Portland").head(2)
    time.sleep(0.01)
    portland.with_columns((pl.col("item_id") + "-m").alias("item_id")).rename(
        {"item_id": "shop"}).write_parquet(landing / "mapped.parquet")
    time.sleep(0.01)
    portland.drop("item_id").write_parquet(landing / "no-id.parquet")  # neither shop nor item_id
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"source": source})
        result = new_items_sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        assert result_cities(result, instance) == ["portland"]
        assert "mapped.parquet" in result.run_requests[0].tags["lgsid/files"]
        cursor = json.loads(result.cursor)
        assert "mapped.parquet" in cursor and "no-id.parquet" not in cursor
        ctx = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"source": source})
        again = new_items_sensor(ctx)  # retried, and named with the missing column
        assert isinstance(again, dg.SkipReason)
        assert "no-id.parquet" in again.skip_message and "shop" in again.skip_message
        # Once the file is fixed it is planned and processed.
        time.sleep(0.01)
        portland.with_columns((pl.col("item_id") + "-n").alias("item_id")).rename(
            {"item_id": "shop"}).write_parquet(landing / "no-id.parquet")
        ctx = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"source": source})
        fixed = new_items_sensor(ctx)
        assert result_cities(fixed, instance) == ["portland"]
        assert "no-id.parquet" in json.loads(fixed.cursor)


def _plan_source(landing_folder):
    base, landing = landing_folder
    return base, landing, DataSource(kind="folder", path=str(base), landing_dir=str(landing))


def test_the_tick_plans_from_the_landed_files_without_validating_the_dataset(landing_folder, test_world, monkeypatch):
    """Planning reads the landed files and the items file's (province, city) columns only: a
    corrupt interactions file, or a validator that would fail, does not stop the tick, and
    same-name cities still get the run's own keys."""
    from lgsid_pipeline.data import catalog
    from orchestration.sensors import plan_landing

    base, landing, source = _plan_source(landing_folder)
    (base / "interactions.parquet").write_bytes(b"not parquet at all")

    def refuse(*a, **k):
        raise AssertionError("the sensor's tick validated the whole dataset")
    monkeypatch.setattr(catalog, "validate_items", refuse)
    monkeypatch.setattr(catalog, "validate_interactions", refuse)
    monkeypatch.setattr(DataSource, "validated", refuse)
    springfields = test_world.items.filter(pl.col("city") == "Springfield")
    assert springfields["province"].n_unique() >= 2  # the test world has same-name cities
    _land(landing, "batch.parquet", springfields.filter(pl.col("province") == "Illinois").head(2), "-s")
    new, by_city, cursor, errors = plan_landing(str(landing), None, source)
    assert [p.name for p in new] == ["batch.parquet"] and not errors
    assert list(by_city) == ["springfield-illinois"]


def test_a_touch_is_not_a_landing_but_new_content_is(landing_folder, test_world):
    """The cursor fingerprint carries a content digest: a file whose bytes did not change is
    not planned again when its mtime moves; a rewrite is, even at the same size."""
    import os

    from orchestration.sensors import plan_landing

    _, landing, source = _plan_source(landing_folder)
    portland = test_world.items.filter(pl.col("city") == "Portland").head(2)
    _land(landing, "batch.parquet", portland, "-t")
    new, by_city, cursor, _ = plan_landing(str(landing), None, source)
    assert list(by_city) == ["portland"]
    st = (landing / "batch.parquet").stat()
    os.utime(landing / "batch.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    new, by_city, cursor2, _ = plan_landing(str(landing), cursor, source)
    assert new == [] and by_city == {}
    assert json.loads(cursor2)["batch.parquet"] != json.loads(cursor)["batch.parquet"]  # the new stat is kept
    assert json.loads(cursor2)["batch.parquet"].split(":")[-1] == json.loads(cursor)["batch.parquet"].split(":")[-1]
    new, _, _, _ = plan_landing(str(landing), cursor2, source)
    assert new == []
    _land(landing, "batch.parquet", portland, "-u")  # same shape, other ids: new content
    new, by_city, _, _ = plan_landing(str(landing), cursor2, source)
    assert [p.name for p in new] == ["batch.parquet"] and list(by_city) == ["portland"]
    # A cursor written before the digest ("mtime:size") is upgraded, not replanned.
    st = (landing / "batch.parquet").stat()
    old = json.dumps({"batch.parquet": f"{st.st_mtime_ns}:{st.st_size}"})
    new, by_city, upgraded, _ = plan_landing(str(landing), old, source)
    assert new == [] and json.loads(upgraded)["batch.parquet"].count(":") == 2
