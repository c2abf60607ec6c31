"""The pipeline's Delta IO manager: dagster_deltalake_polars' IO manager with per-city writes
that survive concurrent writers (retried commits, predicate overwrites only), batch reads and
writes of several cities, a refusal to read or write on top of a lost commit, and storage
options beyond dagster_deltalake's typed configs.
"""

from __future__ import annotations

import dataclasses
import random
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl

# Private Dagster API, the IO manager's only one, used in this one place: DbIOManager is the class dagster_deltalake's own
# DeltaLakeIOManager.create_io_manager returns, and dagster exports no public equivalent.
# LgsidDeltaIOManager.create_io_manager builds one with its own DbClient, which no public hook
# allows. Checked against dagster 1.13.x / dagster-deltalake(-polars) 0.29.x, the versions
# pyproject.toml pins; tests/test_storage_private_api.py fails if the name or signature changes.
from dagster._core.storage.db_io_manager import DbIOManager
from dagster_deltalake import DeltaLakePyArrowTypeHandler, LocalConfig, S3Config
from dagster_deltalake.config import ClientConfig
from dagster_deltalake.io_manager import DeltaLakeDbClient
from dagster_deltalake_polars import DeltaLakePolarsIOManager, DeltaLakePolarsTypeHandler
from pydantic import Field

from resources.uris import (
    DELTA_SCHEMA,
    is_remote_uri,
    local_tables_root,
    normalize_storage_options,
    normalize_tables_uri,
)


class DeltaLogError(ValueError):
    """A local Delta table whose transaction log cannot be trusted; the message says what to do."""


def check_delta_log(table_uri: str) -> None:
    """Refuse a local table whose newest commit file is empty.

    A crash or a full disk during a commit can leave ``_delta_log/<N>.json`` at 0 bytes.
    delta-rs then reads the table as of version N-1 without a word, and the next write
    replaces the lost commit with its own, so the rows of commit N are gone for good. This
    check runs before every read through ``LgsidHome``, before the IO manager's reads of a
    batch of cities and before every write attempt of the IO manager. Object stores write a
    commit in one PUT, so remote tables are not checked.
    """
    if is_remote_uri(table_uri):
        return
    log = Path(table_uri) / "_delta_log"
    if not log.is_dir():
        return
    commits = sorted(log.glob("[0-9]" * 20 + ".json"))
    if commits and commits[-1].stat().st_size == 0:
        version = int(commits[-1].stem)
        raise DeltaLogError(
            f"Delta table {table_uri}: its newest commit {commits[-1].name} is empty (0 bytes). A crash "
            f"or a full disk during a commit leaves this, and reading on would silently give version "
            f"{version - 1} while the next write replaced the lost commit. Check the disk, then either "
            f"restore {commits[-1].name} from a backup, or delete it to roll back to version {version - 1} "
            "explicitly and re-materialize the cities that commit wrote (see docs/reliability.md).")


# -- Delta writes that survive concurrent writers -------------------------------------------------
_CONFLICT_MARKERS = ("concurrent", "conflict", "version already exists", "commit failed")


def _is_commit_conflict(exc: BaseException) -> bool:
    from deltalake.exceptions import CommitFailedError

    if isinstance(exc, CommitFailedError):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "DeltaError" and any(m in text for m in _CONFLICT_MARKERS)


class RetryingDeltaLakePolarsTypeHandler(DeltaLakePolarsTypeHandler):
    """Polars Delta handler that is safe with several writers on one table.

    - The upstream handler writes the *first* output of a partitioned table with a plain
      ``overwrite`` (no partition predicate), so two processes creating the table at once can
      wipe each other's cities. Here a partitioned table is created empty first
      (``mode="ignore"``), so every partitioned write is a predicate overwrite of its own
      ``city_key`` only.
    - Commit conflicts (Delta optimistic concurrency: ``CommitFailedError``, "version already
      exists") are retried with exponential backoff and jitter; the write is idempotent.
    - Additive schema evolution (``schema_mode="merge"``): a release that adds a column (e.g.
      ``user_interactions.source_row``) writes its city into a table made by an older release;
      the other cities keep their rows and read the new column as null. A column whose type
      changed still fails the write. The pipeline's Delta assets are all partitioned by
      ``city_key`` (the ``DELTA`` metadata of ``assets/partitions.py``).
    """

    max_attempts: int = 8
    base_delay_s: float = 0.05
    max_delay_s: float = 2.0

    def to_arrow(self, obj):
        reader, params = super().to_arrow(obj)
        return reader, {**params, "schema_mode": "merge"}

    def _ensure_table(self, obj, table_slice, connection) -> None:
        """Create a partitioned table empty (``mode="ignore"``) if no writer has yet."""
        if not table_slice.partition_dimensions:
            return
        from deltalake import write_deltalake

        empty = (obj.head(0).collect() if isinstance(obj, pl.LazyFrame) else obj.head(0)).to_arrow()
        cols = [d.partition_expr for d in table_slice.partition_dimensions]
        try:
            write_deltalake(connection.table_uri, empty, mode="ignore", partition_by=cols,
                            storage_options=connection.storage_options)
        except Exception as exc:  # another writer created it first
            if not _is_commit_conflict(exc):
                raise

    @staticmethod
    def _several_keys(table_slice) -> tuple[str, list[str]] | None:
        """(column, keys) when the slice is a batch of several dynamic partitions; the upstream
        handler supports one string partition per read or write ("Array partition values are
        not yet supported"), so batches are read and written here."""
        dims = table_slice.partition_dimensions or []
        if len(dims) != 1 or not isinstance(dims[0].partitions, list | tuple) or len(dims[0].partitions) < 2:
            return None
        return dims[0].partition_expr, [str(k) for k in dims[0].partitions]

    def load_input(self, context, table_slice, connection):
        several = self._several_keys(table_slice)
        if several is None:
            return super().load_input(context, table_slice, connection)
        column, keys = several
        check_delta_log(connection.table_uri)
        lf = pl.scan_delta(connection.table_uri, storage_options=connection.storage_options or None)
        # Cities in key order (stable inside a city): the Delta log's file order differs between
        # runs, and seeded samples downstream index rows.
        lf = lf.filter(pl.col(column).is_in(keys)).sort(column, maintain_order=True)
        if table_slice.columns is not None:
            lf = lf.select(table_slice.columns)
        return lf if context.dagster_type.typing_type == pl.LazyFrame else lf.collect()

    def _write_batch(self, obj, column: str, keys: list[str], connection) -> None:
        """One Delta commit that replaces exactly the batch's partitions (a predicate overwrite
        of ``column IN (keys)``): the other cities' rows are untouched, and a kill leaves every
        city of the batch at its old version or all at the new one."""
        from deltalake import write_deltalake

        reader, params = self.to_arrow(obj)
        quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
        write_deltalake(connection.table_uri, reader, mode="overwrite", partition_by=[column],
                        predicate=f"{column} IN ({quoted})", storage_options=connection.storage_options,
                        **params)

    def handle_output(self, context, table_slice, obj, connection):
        rng = random.Random()
        several = self._several_keys(table_slice)
        for attempt in range(1, self.max_attempts + 1):
            try:
                check_delta_log(connection.table_uri)  # never write on top of a lost commit
                self._ensure_table(obj, table_slice, connection)
                if several is not None:
                    out = self._write_batch(obj, *several, connection)
                else:
                    out = super().handle_output(context, table_slice, obj, connection)
                break
            except Exception as exc:
                if not _is_commit_conflict(exc) or attempt == self.max_attempts:
                    raise
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * (0.5 + rng.random())
                context.log.warning(f"Delta commit conflict on {connection.table_uri} "
                                    f"(attempt {attempt}/{self.max_attempts}): {exc}; retrying in {delay:.2f}s")
                time.sleep(delay)
        # Dagster's standard column schema (the UI's "Columns" tab, column lineage), with the
        # Delta table's own types.
        schema = obj.collect_schema() if isinstance(obj, pl.LazyFrame) else obj.schema
        context.add_output_metadata({"dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, str(dtype)) for name, dtype in schema.items()])})
        return out


class _LgsidDeltaDbClient(DeltaLakeDbClient):
    """Adds the storage options that dagster_deltalake's typed configs cannot express
    (``extra_storage_options``, passed to delta-rs verbatim) to every table connection."""

    @staticmethod
    @contextmanager
    def connect(context, table_slice):
        with DeltaLakeDbClient.connect(context, table_slice) as conn:
            extra = (context.resource_config or {}).get("extra_storage_options") or {}
            yield dataclasses.replace(conn, storage_options={**conn.storage_options, **extra}) if extra else conn


class LgsidDeltaIOManager(DeltaLakePolarsIOManager):
    """``DeltaLakePolarsIOManager`` with conflict-safe, retried per-city writes, and storage
    options beyond dagster_deltalake's typed configs (``extra_storage_options``)."""

    extra_storage_options: dict[str, str] | None = Field(
        default=None, description="Further delta-rs storage options, passed verbatim (e.g. "
                                  "AWS_S3_ALLOW_UNSAFE_RENAME).")

    @staticmethod
    def type_handlers():
        return [RetryingDeltaLakePolarsTypeHandler(), DeltaLakePyArrowTypeHandler()]

    def create_io_manager(self, context):
        """The upstream ``DbIOManager``, built with :class:`_LgsidDeltaDbClient` as its client."""
        return DbIOManager(
            db_client=_LgsidDeltaDbClient(),
            database="deltalake",
            schema=self.schema_,
            type_handlers=self.type_handlers(),
            default_load_type=self.default_load_type(),
            io_manager_name="DeltaLakeIOManager",
        )


# -- storage options -> dagster_deltalake's typed configs ----------------------------------------
# storage option name (lower case, as delta-rs / object_store spell them) -> S3Config field
_S3_FIELDS = {
    "aws_endpoint_url": "endpoint", "aws_endpoint": "endpoint", "endpoint_url": "endpoint", "endpoint": "endpoint",
    "aws_region": "region", "aws_default_region": "region", "region": "region", "default_region": "region",
    "aws_access_key_id": "access_key_id", "access_key_id": "access_key_id",
    "aws_secret_access_key": "secret_access_key", "secret_access_key": "secret_access_key",
    "aws_session_token": "token", "aws_token": "token", "session_token": "token", "token": "token",
    "aws_bucket": "bucket", "aws_bucket_name": "bucket", "bucket": "bucket", "bucket_name": "bucket",
    "aws_virtual_hosted_style_request": "virtual_hosted_style_request",
    "virtual_hosted_style_request": "virtual_hosted_style_request",
    "aws_imdsv1_fallback": "imdsv1_fallback", "imdsv1_fallback": "imdsv1_fallback",
    "aws_metadata_endpoint": "metadata_endpoint", "metadata_endpoint": "metadata_endpoint",
    "aws_copy_if_not_exists": "copy_if_not_exists", "copy_if_not_exists": "copy_if_not_exists",
}
# -> ClientConfig field (HTTP client options, valid for every store)
_CLIENT_FIELDS = {
    "aws_allow_http": "allow_http", "allow_http": "allow_http",
    "allow_invalid_certificates": "allow_invalid_certificates", "proxy_url": "proxy_url",
    "timeout": "timeout", "user_agent": "user_agent",
}
_BOOL_FIELDS = {"imdsv1_fallback", "allow_http", "allow_invalid_certificates"}


def _as_bool(key: str, value: str) -> bool:
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"storage option {key!r} must be true or false")


def s3_io_manager_options(storage_options: dict[str, str] | None) -> tuple[S3Config, ClientConfig | None,
                                                                          dict[str, str]]:
    """Split delta-rs storage options into dagster_deltalake's ``S3Config`` and ``ClientConfig``
    and the rest (passed verbatim, e.g. ``AWS_S3_ALLOW_UNSAFE_RENAME``)."""
    s3: dict = {}
    client: dict = {}
    extra: dict[str, str] = {}
    for key, value in normalize_storage_options(storage_options).items():
        low = key.strip().lower()
        if low in _S3_FIELDS:
            field = _S3_FIELDS[low]
            s3[field] = _as_bool(key, value) if field in _BOOL_FIELDS else value
        elif low in _CLIENT_FIELDS:
            field = _CLIENT_FIELDS[low]
            client[field] = _as_bool(key, value) if field in _BOOL_FIELDS else value
        else:
            extra[key] = value
    return S3Config(**s3), (ClientConfig(**client) if client else None), extra


def delta_io_manager(home: str, tables_uri: str | None = None,
                     storage_options: dict[str, str] | None = None) -> DeltaLakePolarsIOManager:
    """The Delta IO manager for tables under ``tables_uri`` (a local path, ``s3://...``, or
    ``None`` for ``<home>/delta``); ``storage_options`` are delta-rs options (object store only)."""
    if is_remote_uri(tables_uri):
        root = normalize_tables_uri(tables_uri)
        s3, client, extra = s3_io_manager_options(storage_options)
        return LgsidDeltaIOManager(root_uri=root, schema=DELTA_SCHEMA, storage_options=s3,
                                   client_options=client, extra_storage_options=extra or None)
    root = local_tables_root(home, tables_uri)
    return LgsidDeltaIOManager(root_uri=str(root), schema=DELTA_SCHEMA, storage_options=LocalConfig())
