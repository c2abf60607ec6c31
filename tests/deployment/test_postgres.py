"""The pipeline against PostgreSQL instance storage, as in the compose and Kubernetes deployments.

A local PostgreSQL is started from the distribution's binaries; `lgsid materialize` runs one
city partition of the data stage in a subprocess with run, event-log and schedule storage in
that database; the run, the materializations and the city partitions are then read back both
through Dagster and with plain SQL.
"""

import json

import pytest
import yaml

from local_services import REPO, LocalPostgres, child_env, lgsid_cli, pg_bindir, require

DATA_STAGE = "item_catalog,user_interactions,catalog_quarantine"
CITY = "portland"


@pytest.fixture(scope="module")
def postgres():
    bindir = pg_bindir()
    require(bindir, "PostgreSQL server binaries (initdb, postgres)")
    server = LocalPostgres(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_home(postgres, tmp_path_factory):
    """An lgsid home whose Dagster instance (HOME/dagster/dagster.yaml) stores everything in
    PostgreSQL, with one city of the test world's data stage materialized by the CLI."""
    url = postgres.create_database("lgsid_test")
    sa_url = postgres.sqlalchemy_url("lgsid_test")
    home = tmp_path_factory.mktemp("pg") / "home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    # prepare_home() keeps an existing dagster.yaml, so the CLI uses this one.
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump({
        "telemetry": {"enabled": False},
        "storage": {"postgres": {"postgres_url": sa_url}},
    }))
    out = lgsid_cli("materialize", "--preset", "test", "--select", DATA_STAGE, "--cities", CITY,
                    "--home", str(home), "--log-level", "WARNING",
                    env=child_env(DAGSTER_HOME=str(dagster_home)))
    assert "materialized 3 assets" in out.stdout
    return home, url


def test_run_and_materializations_are_in_postgres(pg_home):
    import dagster as dg

    home, _ = pg_home
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        runs = instance.get_runs()
        assert len(runs) == 1
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == CITY and run.tags["lgsid/trigger"] == "cli"
        assert CITY in instance.get_dynamic_partitions("city")
        for key in DATA_STAGE.split(","):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[CITY]), limit=10).records
            assert len(records) == 1 and records[0].run_id == run.run_id, key
        meta = instance.fetch_materializations(dg.AssetKey("item_catalog"), limit=1).records[0] \
            .asset_materialization.metadata
        assert meta["dagster/row_count"].value > 0
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("item_catalog"), "catalog_schema_and_coordinates"), limit=5)
        assert checks and checks[0].status.value == "SUCCEEDED"
    # Nothing went to the default SQLite files.
    assert not list((home / "dagster").rglob("*.db"))


def test_rows_are_readable_with_sql(pg_home):
    import psycopg2

    _, url = pg_home
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, status FROM runs")
        (run_id, status), = cur.fetchall()
        assert status == "SUCCESS"
        cur.execute("SELECT asset_key, partition FROM event_logs "
                    "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND run_id = %s", (run_id,))
        rows = cur.fetchall()
        assert sorted(json.loads(k)[0] for k, _ in rows) == sorted(DATA_STAGE.split(","))
        assert {p for _, p in rows} == {CITY}
        cur.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'city'")
        assert [r[0] for r in cur.fetchall()] == [CITY]
    conn.close()


def test_report_cli_reads_back_from_postgres(pg_home):
    home, _ = pg_home
    out = lgsid_cli("report", "--home", str(home), "--json", env=child_env())
    report = json.loads(out.stdout)
    assert set(DATA_STAGE.split(",")) <= set(report)
    assert set(report["item_catalog"]) == {CITY}
    assert report["item_catalog"][CITY]["metadata"]["dagster/row_count"] > 0


def test_compose_instance_config_runs_on_postgres(pg_home, postgres, tmp_path, monkeypatch):
    """deploy/dagster.compose.yaml instantiates against a real server: the same storage, the
    queued run coordinator with the tag limits, and it sees the run the CLI made."""
    import dagster as dg

    config = yaml.safe_load((REPO / "deploy" / "dagster.compose.yaml").read_text())
    for key in ("compute_logs", "local_artifact_storage"):  # /opt/dagster/storage in the container
        config[key]["config"]["base_dir"] = str(tmp_path / key)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    for key, value in {"DAGSTER_POSTGRES_HOST": "127.0.0.1", "DAGSTER_POSTGRES_PORT": str(postgres.port),
                       "DAGSTER_POSTGRES_USER": postgres.superuser, "DAGSTER_POSTGRES_PASSWORD": "",
                       "DAGSTER_POSTGRES_DB": "lgsid_test"}.items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "QueuedRunCoordinator"
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        limits = {(lim["key"], lim.get("value")): lim["limit"]
                  for lim in concurrency.run_queue_config.tag_concurrency_limits}
        assert limits == {("lgsid/kind", "training"): 1, ("lgsid/kind", "city"): 4}
        assert [r.tags["dagster/partition"] for r in instance.get_runs()] == [CITY]
