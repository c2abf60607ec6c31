"""Delta tables on object storage: the pipeline against a real (local) S3 endpoint.

moto's S3 server runs as a local process on a free port; nothing leaves the machine. The data
stage and two alignment-signal assets are materialized for two cities of the test world into
``s3://lgsid-bucket/lgsid-test`` (first with the ``lgsid`` command line and its
``--tables-uri``/``--storage-options``, then in-process through ``$LGSID_TABLES_URI``, the
way the UI and the daemon pick it up); credentials come from the environment only.
"""

import importlib.util
import json

import dagster as dg
import polars as pl
import pytest

from local_services import LocalS3, child_env, lgsid_cli, require
from orchestration.cli import materialize_graph
from orchestration.definitions import build_defs
from resources import DataSource, LgsidHome, delta_io_manager
from resources.uris import normalize_tables_uri, parse_storage_options

BUCKET = "lgsid-bucket"
TABLES_URI = f"s3://{BUCKET}/lgsid-test"
SOURCE = DataSource(kind="generator", preset="test", seed=0)
# The data stage; cooccurrence_pairs loads user_interactions through the IO manager, and
# distance_ranked_negatives (with the catalog checks) reads other cities through LgsidHome.scan.
SELECT = ["item_catalog", "user_interactions", "catalog_quarantine", "cooccurrence_pairs",
          "distance_ranked_negatives"]
PER_CITY_TABLES = SELECT


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    require(importlib.util.find_spec("moto"), "moto (part of the dev extras: pip install -e '.[dev]')")
    server = LocalS3(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        server.start()
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """Credentials in the environment, the table location and options as the deployment sets them."""
    for key, value in s3.credentials_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LGSID_TABLES_URI", TABLES_URI)
    monkeypatch.setenv("LGSID_STORAGE_OPTIONS", json.dumps(s3.storage_options()))
    return s3


def _read(s3, table: str) -> pl.DataFrame:
    """Read a table straight from the bucket with polars, not through the pipeline's code."""
    return pl.read_delta(f"{TABLES_URI}/lgsid/{table}", storage_options=s3.storage_options())


def _by_city(frame: pl.DataFrame, city: str) -> pl.DataFrame:
    return frame.filter(pl.col("city_key") == city).sort(pl.all())


def test_pipeline_tables_on_s3(s3_env, tmp_path):
    s3 = s3_env
    cities = SOURCE.city_keys()[:2]
    home = tmp_path / "home"

    # 1. The command line, with the location and options as flags.
    out = lgsid_cli("materialize", "--home", str(home), "--preset", "test", "--select", ",".join(SELECT),
                    "--cities", ",".join(cities), "--tables-uri", TABLES_URI,
                    "--storage-options", json.dumps(s3.storage_options()), "--log-level", "WARNING",
                    env=child_env(**s3.credentials_env(), LGSID_TABLES_URI="", LGSID_STORAGE_OPTIONS=""))
    assert f"Delta tables at {TABLES_URI}" in out.stdout

    # Everything is in the bucket, readable by anyone with the URI and options ...
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="lgsid-test/lgsid/")["Contents"]]
    for table in PER_CITY_TABLES:
        assert any(k.startswith(f"lgsid-test/lgsid/{table}/_delta_log/") for k in keys), table
    items, _, _ = SOURCE.validated()
    before = {t: _read(s3, t) for t in PER_CITY_TABLES}
    catalog = before["item_catalog"]
    assert sorted(catalog["city_key"].unique().to_list()) == sorted(cities)
    for city in cities:
        assert catalog.filter(pl.col("city_key") == city).height == items.valid.filter(
            pl.col("city_key") == city).height > 0
    assert before["cooccurrence_pairs"].height > 0 and before["distance_ranked_negatives"].height > 0
    assert sorted(before["distance_ranked_negatives"]["city_key"].unique().to_list()) == sorted(cities)
    # ... and nothing went to a local delta/ folder: the home only holds the Dagster instance.
    assert not (home / "delta").exists()
    assert not list(home.rglob("*.parquet")) and not list(home.rglob("_delta_log"))

    # 2. In-process, configured only by the environment ($LGSID_TABLES_URI, $LGSID_STORAGE_OPTIONS),
    # as the UI, the daemon and run workers are: re-materialize the first city.
    defs = build_defs(str(home), SOURCE)
    store = defs.resources["home"]
    assert store.tables_uri == TABLES_URI and store.tables_remote
    assert store.table_uri("item_catalog") == f"{TABLES_URI}/lgsid/item_catalog"
    assert store.read("item_catalog").height == catalog.height  # LgsidHome reads the bucket too
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("city", cities)
    materialize_graph(defs, instance, cities[:1], {dg.AssetKey(k) for k in SELECT}, echo=lambda *a, **k: None)

    # dagster#34064: re-materializing one city must leave the other city's rows identical.
    for table, old in before.items():
        new = _read(s3, table)
        assert _by_city(new, cities[1]).equals(_by_city(old, cities[1])), table
        assert _by_city(new, cities[0]).height == _by_city(old, cities[0]).height, table
        assert new["city_key"].dtype == pl.Utf8
    assert not (home / "delta").exists()


def test_concurrent_commits_on_s3_do_not_lose_writes(s3_env):
    """Two writers of one table, the second from a stale snapshot (what two city runs racing look
    like): delta-rs commits with a conditional put (If-None-Match), the store refuses the second
    commit file, delta-rs re-checks for a real conflict and commits as the next version. No
    AWS_S3_ALLOW_UNSAFE_RENAME and no lock table needed (see docs/deployment.md)."""
    from deltalake import DeltaTable, write_deltalake

    s3 = s3_env
    uri = f"{TABLES_URI}/lgsid/race_probe"
    opts = s3.storage_options()
    write_deltalake(uri, pl.DataFrame({"city_key": ["a", "b"], "v": [0, 0]}).to_arrow(),
                    partition_by=["city_key"], storage_options=opts)
    stale = DeltaTable(uri, storage_options=opts)  # at version 0
    write_deltalake(uri, pl.DataFrame({"city_key": ["a"], "v": [1]}).to_arrow(), mode="overwrite",
                    predicate="city_key = 'a'", partition_by=["city_key"], storage_options=opts)
    write_deltalake(stale, pl.DataFrame({"city_key": ["b"], "v": [2]}).to_arrow(), mode="overwrite",
                    predicate="city_key = 'b'", partition_by=["city_key"])
    table = pl.read_delta(uri, storage_options=opts).sort("city_key")
    assert table.to_dicts() == [{"city_key": "a", "v": 1}, {"city_key": "b", "v": 2}]
    assert DeltaTable(uri, storage_options=opts).version() == 2


def test_hostile_names_and_bad_uris_are_refused(s3_env, tmp_path):
    s3 = s3_env
    store = LgsidHome(home=str(tmp_path / "home"), tables_uri=TABLES_URI, storage_options=s3.storage_options())
    for name in ("../item_catalog", "../../etc", "/abs", "a/b", "a\x00b", "", ".."):
        with pytest.raises(ValueError, match="invalid Delta table name"):
            store.table_uri(name)
        with pytest.raises(ValueError, match="invalid Delta table name"):
            store.scan(name)
    with pytest.raises(ValueError, match="object storage"):
        store.table_path("item_catalog")  # no local folder to hand out
    assert store.scan("never_materialized") is None  # a missing table is not an error
    with pytest.raises(FileNotFoundError, match="never_materialized"):
        store.read("never_materialized")

    for uri, why in [("s3://", "bucket"), (f"s3://{BUCKET}/../escape", "'..'"), (f"s3://{BUCKET}//x", "''"),
                     (f"s3://{BUCKET}/a/./b", "'.'"), ("ftp://host/x", "unsupported"),
                     (f"s3://{BUCKET}/p?versionId=1", "not allowed"), ("s3://Upper_Case/x", "bucket")]:
        with pytest.raises(ValueError, match=why):
            normalize_tables_uri(uri)
        with pytest.raises(ValueError):
            delta_io_manager(str(tmp_path), uri, s3.storage_options())
        with pytest.raises(ValueError):
            LgsidHome(home=str(tmp_path), tables_uri=uri).table_uri("item_catalog")
    for location, why in [("s3:/lgsid-bucket/x", "without '//'"), ("relative/tables", "absolute")]:
        with pytest.raises(ValueError, match=why):
            delta_io_manager(str(tmp_path), location)
        with pytest.raises(ValueError, match=why):
            LgsidHome(home=str(tmp_path), tables_uri=location).table_uri("item_catalog")
    # Credentials in the URI are refused without being repeated in the message.
    with pytest.raises(ValueError, match="credentials") as err:
        normalize_tables_uri(f"s3://AKIAEXAMPLE:hunter2@{BUCKET}/x")
    assert "hunter2" not in str(err.value)
    # A definitions load with a bad $LGSID_TABLES_URI fails at load time, with the reason.
    with pytest.raises(ValueError, match="'..'"):
        build_defs(str(tmp_path / "h"), SOURCE, tables_uri=f"s3://{BUCKET}/a/../b")
    # Malformed $LGSID_STORAGE_OPTIONS: a clear error that does not echo the (secret) text.
    with pytest.raises(ValueError, match="not valid JSON") as err:
        parse_storage_options('{"AWS_SECRET_ACCESS_KEY": "hunter2"')
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="JSON object"):
        parse_storage_options('["AWS_REGION"]')


def test_io_manager_maps_storage_options_onto_dagster_deltalake_configs(tmp_path):
    from dagster_deltalake import LocalConfig, S3Config

    options = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1", "AWS_ALLOW_HTTP": "true",
               "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    manager = delta_io_manager(str(tmp_path), f"{TABLES_URI}/", options)
    assert manager.root_uri == TABLES_URI
    assert isinstance(manager.storage_options, S3Config)
    assert manager.storage_options.endpoint == "http://127.0.0.1:9000"
    assert manager.storage_options.region == "eu-west-1"
    assert manager.client_options.allow_http is True
    assert manager.extra_storage_options == {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}  # passed verbatim
    local = delta_io_manager(str(tmp_path))
    assert isinstance(local.storage_options, LocalConfig)
    assert local.root_uri == str((tmp_path / "delta").resolve())
    assert LgsidHome(home=str(tmp_path), tables_uri=None).table_uri("item_catalog") == str(
        (tmp_path / "delta" / "lgsid" / "item_catalog").resolve())
    # A local tables_uri elsewhere: tables confined under it.
    elsewhere = LgsidHome(home=str(tmp_path / "h"), tables_uri=str(tmp_path / "fast"))
    assert elsewhere.table_path("item_catalog") == (tmp_path / "fast" / "lgsid" / "item_catalog").resolve()
    assert delta_io_manager(str(tmp_path / "h"), str(tmp_path / "fast")).root_uri == str((tmp_path / "fast").resolve())
