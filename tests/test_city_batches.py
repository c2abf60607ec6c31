"""Per-city assets materialize a batch of cities per run: one run and one Delta commit per
batch, metadata per partition, and no write outside the batch's cities."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from assets.data import catalog_assets, catalog_schema_and_coordinates, quarantine_rate
from assets.partitions import batch_request_args
from lgsid_pipeline.partitions import city_batches
from orchestration.definitions import build_resources
from resources import DataSource, LgsidHome

SOURCE = DataSource(kind="generator", preset="test", seed=0)
ASSETS = [catalog_assets, catalog_schema_and_coordinates, quarantine_rate]


def test_city_batches_are_contiguous_bounded_and_cover_the_selection():
    order = ["a", "b", "c", "d", "e", "f"]
    assert city_batches(order, order, 64) == [order]
    assert city_batches(order, order, 4) == [["a", "b", "c", "d"], ["e", "f"]]
    assert city_batches(["a", "b", "d", "f"], order, 64) == [["a", "b"], ["d"], ["f"]]  # never c or e
    assert city_batches(["f", "a", "b", "a"], order, 64) == [["a", "b"], ["f"]]  # order and duplicates
    assert city_batches([], order) == []
    with pytest.raises(ValueError, match="not partitions"):
        city_batches(["zz"], order)
    with pytest.raises(ValueError, match=">= 1"):
        city_batches(order, order, 0)


def test_a_batch_is_one_run_and_one_commit_that_touches_only_its_cities(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    cities = SOURCE.city_keys()
    assert len(cities) >= 3
    instance.add_dynamic_partitions("city", cities)
    resources = build_resources(str(tmp_path), SOURCE)
    first = dg.materialize(ASSETS, partition_key=cities[-1], instance=instance, resources=resources)
    assert first.success
    store = LgsidHome(home=str(tmp_path))
    outside = store.read("item_catalog").sort(pl.all())
    version = DeltaTable(str(store.table_path("item_catalog"))).version()

    batch = cities[:-1]
    args = batch_request_args(batch)
    assert "partition_key" not in args  # several cities: a partition range, not a key
    result = dg.materialize(ASSETS, instance=instance, resources=resources, tags=args["tags"])
    assert result.success
    # one Delta commit for the whole batch; the city outside it is untouched
    assert DeltaTable(str(store.table_path("item_catalog"))).version() == version + 1
    table = store.read("item_catalog")
    assert table.filter(pl.col("city_key") == cities[-1]).sort(pl.all()).equals(outside)
    items, _, _ = SOURCE.validated()
    for city in batch:
        assert table.filter(pl.col("city_key") == city).height == items.valid.filter(
            pl.col("city_key") == city).height
    # metadata per partition: each city's materialization carries its own row count
    mats = [m for m in result.asset_materializations_for_node("catalog_assets")
            if m.asset_key == dg.AssetKey("item_catalog")]
    by_city = {m.partition: m.metadata["dagster/row_count"].value for m in mats}
    assert by_city == {c: table.filter(pl.col("city_key") == c).height for c in batch}
    # the checks judge every city of the batch
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    rate = next(c for c in checks if c.check_name == "quarantine_rate")
    assert rate.metadata["cities_checked"].value == len(batch)


def test_the_quarantine_check_fails_a_batch_naming_the_bad_city(tmp_path):
    """One city of a batch over the quarantine limit fails the batch's check, naming that city."""
    from lgsid_pipeline.world.generator import generate_world

    world = generate_world("test", seed=0)
    portland = world.items["city"] == "Portland"
    bad = world.items.with_columns(pl.when(portland & (pl.int_range(pl.len()) % 2 == 0))
                                   .then(pl.lit(999.0)).otherwise(pl.col("lat")).alias("lat"))
    folder = tmp_path / "data"
    folder.mkdir()
    bad.write_parquet(folder / "items.parquet")
    world.interactions.write_parquet(folder / "interactions.parquet")
    source = DataSource(kind="folder", path=str(folder))
    instance = dg.DagsterInstance.ephemeral()
    cities = source.city_keys()
    instance.add_dynamic_partitions("city", cities)
    batch = [c for c in cities if c != "unassigned"]
    assert "portland" in batch and len(batch) >= 2
    result = dg.materialize(ASSETS, instance=instance, resources=build_resources(str(tmp_path / "home"), source),
                            tags=batch_request_args(batch)["tags"], raise_on_error=False)
    rate = next(c for c in result.get_asset_check_evaluations() if c.check_name == "quarantine_rate")
    assert not rate.passed and "portland" in rate.description
    assert all(c not in rate.description for c in batch if c != "portland")


def test_reads_across_cities_come_back_in_city_order_whatever_the_write_order(tmp_path):
    """Two homes whose cities were written in different orders read back the same rows in the
    same order (seeded samples downstream index rows)."""
    from deltalake import write_deltalake

    frames = {c: pl.DataFrame({"item_id": [f"{c}-{i}" for i in range(3)], "city_key": [c] * 3})
              for c in ("b-city", "a-city", "c-city")}
    reads = []
    for name, order in (("one", ["b-city", "a-city", "c-city"]), ("two", ["c-city", "a-city", "b-city"])):
        home = LgsidHome(home=str(tmp_path / name))
        for city in order:
            write_deltalake(str(home.table_path("item_catalog")), frames[city].to_arrow(), mode="append",
                            partition_by=["city_key"])
        reads.append(home.read("item_catalog"))
    assert reads[0]["city_key"].to_list()[::3] == ["a-city", "b-city", "c-city"]
    assert reads[0].equals(reads[1])


def test_cli_batches_in_worker_processes_equal_batches_in_turn(tmp_path, monkeypatch):
    """`lgsid materialize --jobs 2` runs a per-city stage's batches in two spawned processes:
    the same tables as one process, one Dagster run per batch, and no city written twice."""
    from orchestration.cli import main

    for var in ("DAGSTER_HOME", "LGSID_HOME"):  # prepare_home points these at each home; restore after
        monkeypatch.setenv(var, str(tmp_path))
    select = "item_catalog,user_interactions,catalog_quarantine,cooccurrence_pairs"
    tables = {}
    for jobs in (1, 2):
        home = tmp_path / f"home{jobs}"
        assert main(["materialize", "--home", str(home), "--preset", "test", "--select", select,
                     "--city-batch", "1", "--jobs", str(jobs)]) == 0
        store = LgsidHome(home=str(home))
        tables[jobs] = {t: store.read(t).sort(pl.all()) for t in ("item_catalog", "cooccurrence_pairs")}
        if jobs == 2:
            instance = dg.DagsterInstance.from_config(str(home / "dagster"))
            runs = instance.get_runs()
            cities = SOURCE.city_keys()
            assert len(runs) == 2 * len(cities)  # two per-city stages, one run per city each
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            done = sorted(r.tags.get("dagster/partition") for r in runs)
            assert done == sorted(cities * 2)
    for t in tables[1]:
        assert tables[1][t].height > 0 and tables[1][t].equals(tables[2][t]), t


def test_a_failing_batch_in_a_worker_process_fails_the_command_naming_its_cities(tmp_path, monkeypatch, capsys):
    from orchestration.cli import main

    for var in ("DAGSTER_HOME", "LGSID_HOME"):
        monkeypatch.setenv(var, str(tmp_path))
    rc = main(["materialize", "--home", str(tmp_path / "home"), "--preset", "test", "--city-batch", "2",
               "--jobs", "2", "--select", "item_catalog,user_interactions,catalog_quarantine,cooccurrence_pairs",
               "--run-config", '{"ops": {"cooccurrence_pairs": {"config": {"max_history": 0}}}}'])
    err = capsys.readouterr().err
    assert rc == 1
    cities = SOURCE.city_keys()
    assert "FAILED at cities" in err and "cooccurrence_pairs" in err and cities[0] in err


def test_the_negatives_batch_sorts_the_far_pool_once(tmp_path, monkeypatch):
    """Every city of a batch gets the other cities' items already sorted by item_id (polars'
    sorted flag set), so the core's own sort of the pool costs nothing per city and strategy;
    the lists equal those of an unsorted pool."""
    import assets.signals as signals
    from lgsid_pipeline.alignment.stage import city_negatives

    instance = dg.DagsterInstance.ephemeral()
    cities = SOURCE.city_keys()
    instance.add_dynamic_partitions("city", cities)
    resources = build_resources(str(tmp_path), SOURCE)
    args = batch_request_args(cities)
    assert dg.materialize(ASSETS, instance=instance, resources=resources, tags=args["tags"]).success
    seen = []

    def spy(items, far_items, settings):
        seen.append(far_items["item_id"].flags["SORTED_ASC"])
        lists, results = city_negatives(items, far_items, settings)
        shuffled = far_items.sample(fraction=1.0, shuffle=True, seed=0)
        assert city_negatives(items, shuffled, settings)[0].equals(lists)
        return lists, results

    monkeypatch.setattr(signals, "city_negatives", spy)
    run = dg.materialize([*ASSETS, signals.distance_ranked_negatives], instance=instance, resources=resources,
                         tags=args["tags"], selection=[signals.distance_ranked_negatives])
    assert run.success
    assert len(seen) == len(cities) and all(seen)


def test_a_step_timed_once_per_city_reports_the_batch_total():
    import time

    from assets.metadata import Timer

    timer = Timer()
    for _ in range(3):  # e.g. the catalog's map, drawn once per city of the batch
        with timer("map"):
            time.sleep(0.02)
    with timer("load"):
        pass
    assert timer.seconds["map"] >= 0.06  # the sum of the three, not the last one
    assert timer.seconds["load"] < timer.seconds["map"]
    assert set(timer.metadata()) == {"seconds.map", "seconds.load"}
