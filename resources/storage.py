"""Where the pipeline keeps its Delta tables and model artefacts.

Two locations, configured separately:

- ``home`` (``$LGSID_HOME``): a local or shared (NFS/EFS/CephFS) folder for the artefacts:
  trained weights as safetensors, codebooks, manifests, plots. These stay on a file system on
  purpose: they are published with local file semantics (a new version is written next to the
  old one and made current by an atomic ``os.replace`` of a ``current.json`` pointer; training
  state is guarded with file locks), which object stores do not offer.
- ``tables_uri`` (``$LGSID_TABLES_URI``): where the Delta tables live, either a local path
  (default ``<home>/delta``) or an object-store URI (``s3://bucket/prefix``), with
  ``storage_options`` (``$LGSID_STORAGE_OPTIONS``, a JSON object) for delta-rs and polars.
  Table ``<name>`` is at ``<tables_uri>/lgsid/<name>``. Credentials belong in the environment
  (``AWS_ACCESS_KEY_ID`` ...), which delta-rs and polars read themselves, not in
  ``storage_options``: resource config is shown in the Dagster UI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_deltalake import LocalConfig, S3Config
from dagster_deltalake.config import ClientConfig
from dagster_deltalake.handler import DeltaLakePyArrowTypeHandler
from dagster_deltalake.io_manager import DeltaLakeDbClient
from dagster_deltalake_polars import DeltaLakePolarsIOManager, DeltaLakePolarsTypeHandler
from pydantic import Field

from lgsid_pipeline.partitions import confine, validate_city_key
from lgsid_pipeline.train_state import artefact_lock, atomic_write_text

DELTA_SCHEMA = "lgsid"
REMOTE_SCHEMES = ("s3", "s3a")
"""Object stores the Delta tables may live on (delta-rs and polars read both as S3)."""

_TABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._=+@,-]+$")


def default_home() -> str:
    """``$LGSID_HOME``, else ``<repo>/.lgsid`` (the README's demo and UI share it)."""
    return os.environ.get("LGSID_HOME") or str(Path(__file__).resolve().parents[1] / ".lgsid")


def default_tables_uri() -> str | None:
    """``$LGSID_TABLES_URI``, else ``None`` (the tables live under ``<home>/delta``)."""
    return os.environ.get("LGSID_TABLES_URI", "").strip() or None


def parse_storage_options(text: str | None, what: str = "LGSID_STORAGE_OPTIONS") -> dict[str, str]:
    """A JSON object of storage options -> ``dict[str, str]`` (scalars become strings,
    booleans ``"true"``/``"false"``). The error never repeats the text: it may hold secrets."""
    if text is None or not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc.msg} at character {exc.pos}); expected an "
                         'object such as {"AWS_REGION": "eu-west-1"}') from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what} must be a JSON object of option names to values, not {type(raw).__name__}")
    return normalize_storage_options(raw, what)


def normalize_storage_options(raw: dict | None, what: str = "storage_options") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (raw or {}).items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{what}: option names must be non-empty strings")
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        elif value is None:
            continue
        else:
            raise ValueError(f"{what}: option {key!r} must be a string, number or boolean, "
                             f"not {type(value).__name__}")
    return out


def default_storage_options() -> dict[str, str]:
    return parse_storage_options(os.environ.get("LGSID_STORAGE_OPTIONS"))


def is_remote_uri(location: str | None) -> bool:
    """True for ``scheme://...`` locations other than ``file://``."""
    return bool(location) and "://" in location and not location.startswith("file://")


def validate_table_name(name: str) -> str:
    """Delta tables are named after assets: ``[A-Za-z0-9_]``, so a name can never add a path
    segment, climb out with ``..`` or be absolute."""
    if not isinstance(name, str) or not _TABLE_NAME_RE.match(name):
        raise ValueError(f"invalid Delta table name {name!r}: table names are asset names "
                         "(letters, digits and underscores only; no '/', '..' or absolute paths)")
    return name


def normalize_tables_uri(uri: str) -> str:
    """Check an object-store URI for the Delta tables and return it without a trailing slash.

    Accepted: ``s3://bucket`` or ``s3://bucket/prefix/...`` (also ``s3a://``) with a valid
    bucket name and plain prefix segments: no ``..`` or ``.``, no empty segments (``//``), no
    query, fragment, credentials or control characters.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise ValueError(f"invalid tables URI {uri!r}: expected s3://bucket/prefix or a local path")
    scheme, rest = uri.split("://", 1)
    if "@" in rest.split("/", 1)[0]:  # never echo it: the user info would be a credential
        raise ValueError("invalid tables URI: credentials in the URI (user@host) are not allowed; "
                         "put them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    if scheme.lower() not in REMOTE_SCHEMES:
        raise ValueError(f"unsupported tables URI scheme {scheme!r} in {uri!r}: use "
                         f"{' or '.join(s + '://' for s in REMOTE_SCHEMES)} (object storage) or a local path")
    rest = rest.rstrip("/")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(f"invalid tables URI {uri!r}: {bucket!r} is not a valid bucket name "
                         "(3-63 lower-case letters, digits, dots and dashes)")
    for segment in prefix.split("/") if prefix else []:
        if segment in ("", ".", "..") or not _SEGMENT_RE.match(segment):
            raise ValueError(f"invalid tables URI {uri!r}: path segment {segment!r} is not allowed "
                             "(no '..', '.', '//', query, fragment or special characters)")
    return f"{scheme.lower()}://{rest}"


def local_tables_root(home: str, tables_uri: str | None = None) -> Path:
    """The local folder holding ``<schema>/<table>``: ``tables_uri`` as a path (``file://``
    allowed), else ``<home>/delta`` (confined under ``home``)."""
    if tables_uri:
        path = tables_uri[len("file://"):] if tables_uri.startswith("file://") else tables_uri
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
            raise ValueError(f"invalid tables location {tables_uri!r}: it looks like a URI without '//' "
                             "(expected s3://bucket/prefix or an absolute local path)")
        if "\x00" in path or not Path(path).expanduser().is_absolute():
            raise ValueError(f"invalid tables path {tables_uri!r}: a local tables location must be an "
                             "absolute path (every Dagster process resolves it the same way)")
        return Path(path).expanduser().resolve()
    return confine(Path(home).expanduser().resolve(), "delta")


class DeltaLogError(ValueError):
    """A local Delta table whose transaction log cannot be trusted; the message says what to do."""


def check_delta_log(table_uri: str) -> None:
    """Refuse a local table whose newest commit file is empty.

    A crash or a full disk during a commit can leave ``_delta_log/<N>.json`` at 0 bytes.
    delta-rs then reads the table as of version N-1 without a word, and the next write
    replaces the lost commit with its own, so the rows of commit N are gone for good. This
    check runs before every read through ``LgsidHome`` and before every write of the IO
    manager. Object stores write a commit in one PUT, so remote tables are not checked.
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


class LgsidHome(dg.ConfigurableResource):
    """The pipeline's storage: artefacts under ``<home>/artifacts/``, Delta tables under
    ``tables_uri`` (default ``<home>/delta``; or ``s3://bucket/prefix``).

    Every local path handed out is resolved and confined under its root, so hostile partition
    keys or config values cannot write outside it; on object storage, table names are
    validated (they are asset names) and the URI is checked (see :func:`normalize_tables_uri`).
    Artefacts always stay on the (local or shared) file system: see the module docstring.
    """

    home: str = Field(default_factory=default_home, description="Root folder of the artefacts (and, by "
                      "default, of the Delta tables).")
    tables_uri: str | None = Field(default_factory=default_tables_uri, description="Where the Delta tables "
                                   "live: a local path or s3://bucket/prefix ($LGSID_TABLES_URI). Default: "
                                   "<home>/delta.")
    storage_options: dict[str, str] = Field(default_factory=default_storage_options, description="delta-rs / "
                                            "polars storage options for tables_uri ($LGSID_STORAGE_OPTIONS, "
                                            "JSON), e.g. AWS_ENDPOINT_URL, AWS_REGION. Keep credentials in "
                                            "the environment: this config is shown in the UI.")

    def root(self) -> Path:
        path = Path(self.home).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- Delta tables -------------------------------------------------------------------------
    @property
    def tables_remote(self) -> bool:
        return is_remote_uri(self.tables_uri)

    def tables_root_uri(self) -> str:
        """The IO manager's ``root_uri``: tables are at ``<root>/lgsid/<name>``."""
        if self.tables_remote:
            return normalize_tables_uri(self.tables_uri)
        return str(self.delta_root())

    def delta_root(self) -> Path:
        if self.tables_remote:
            raise ValueError(f"the Delta tables are on object storage ({self.tables_root_uri()}), not in a "
                             "local folder: use table_uri()")
        if self.tables_uri:
            return local_tables_root(self.home, self.tables_uri)
        return confine(self.root(), "delta")

    def table_path(self, name: str) -> Path:
        """Local folder of table ``name`` (only for local tables; see :meth:`table_uri`)."""
        return confine(self.delta_root(), DELTA_SCHEMA, validate_table_name(name))

    def table_uri(self, name: str) -> str:
        """Location of table ``name``: a local path, or ``s3://bucket/prefix/lgsid/<name>``."""
        if self.tables_remote:
            return f"{self.tables_root_uri()}/{DELTA_SCHEMA}/{validate_table_name(name)}"
        return str(self.table_path(name))

    def delta_storage_options(self) -> dict[str, str] | None:
        """Options for delta-rs and polars (``None`` for local tables)."""
        return dict(self.storage_options) if self.tables_remote and self.storage_options else None

    def table_exists(self, name: str) -> bool:
        uri = self.table_uri(name)
        if not self.tables_remote:
            return (Path(uri) / "_delta_log").exists()
        from deltalake import DeltaTable

        try:
            return DeltaTable.is_deltatable(uri, storage_options=self.delta_storage_options())
        except OSError as exc:  # unreachable endpoint, bad credentials, missing bucket
            raise OSError(f"cannot check Delta table {name!r} at {uri}: {str(exc)[:500]}") from exc

    # -- artefacts ----------------------------------------------------------------------------
    def artifact_dir(self, *parts: str) -> Path:
        path = confine(self.root(), "artifacts", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def city_artifact_dir(self, asset: str, city_key: str) -> Path:
        return self.artifact_dir(asset, validate_city_key(city_key))

    def publish(self, asset: str, path: Path) -> None:
        """Atomically make ``path`` (under this home) the current artefact of ``asset``."""
        target = Path(path).resolve()
        confine(self.root(), str(target.relative_to(self.root())))
        pointer = self.artifact_dir(asset) / "current.json"
        with artefact_lock(pointer):  # one writer of an asset's pointer at a time
            atomic_write_text(pointer, json.dumps({"path": str(target.relative_to(self.root()))}))

    def current(self, asset: str) -> Path | None:
        """The artefact last published for ``asset`` (None if never materialized)."""
        pointer = confine(self.root(), "artifacts", asset, "current.json")
        if not pointer.exists():
            return None
        try:
            rel = json.loads(pointer.read_text())["path"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{pointer} is corrupted ({type(exc).__name__}: {exc}); re-materialize {asset!r} "
                             "to write a new one, or point it at an existing version folder under "
                             f"{pointer.parent}") from None
        return confine(self.root(), rel)

    # -- reading tables -----------------------------------------------------------------------
    def scan(self, name: str, cities: list[str] | None = None) -> pl.LazyFrame | None:
        """Lazy scan of a per-city table across partitions (``None`` if it does not exist yet)."""
        if not self.table_exists(name):
            return None
        check_delta_log(self.table_uri(name))
        lf = pl.scan_delta(self.table_uri(name), storage_options=self.delta_storage_options())
        if cities is not None:
            lf = lf.filter(pl.col("city_key").is_in(cities))
        # Rows in city order (stable inside a city): the Delta log lists partitions' files in
        # the order they were written, which differs between runs, and seeded samples
        # downstream (anchors, pairs, held-out items) index rows.
        if "city_key" in lf.collect_schema().names():
            lf = lf.sort("city_key", maintain_order=True)
        return lf

    def read(self, name: str, cities: list[str] | None = None) -> pl.DataFrame:
        lf = self.scan(name, cities)
        if lf is None:
            raise FileNotFoundError(
                f"Delta table {name!r} does not exist under {self.table_uri(name)}: materialize it first"
            )
        try:
            return lf.collect()
        except BaseException as exc:  # a damaged data file surfaces as a Rust panic, not an OSError
            if isinstance(exc, KeyboardInterrupt | SystemExit | MemoryError):
                raise
            raise ValueError(
                f"Delta table {name!r} at {self.table_uri(name)} cannot be read ({type(exc).__name__}: "
                f"{str(exc)[:300]}). Recovery: delete the table folder and re-materialize its cities "
                "(see docs/reliability.md)."
            ) from exc

    def io_manager(self) -> DeltaLakePolarsIOManager:
        return delta_io_manager(self.home, self.tables_uri, self.storage_options)


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
      wipe each other's cities. Here the table is created empty first (``mode="ignore"``), so
      every partitioned write is a predicate overwrite of its own ``city_key`` only.
    - Commit conflicts (Delta optimistic concurrency: ``CommitFailedError``, "version already
      exists") are retried with exponential backoff and jitter; the write is idempotent.
    - Additive schema evolution (``schema_mode="merge"``): a release that adds a column (e.g.
      ``user_interactions.source_row``) writes its city into a table made by an older release;
      the other cities keep their rows and read the new column as null. A column whose type
      changed still fails the write. Every Delta table here is partitioned by ``city_key``.
    """

    max_attempts: int = 8
    base_delay_s: float = 0.05
    max_delay_s: float = 2.0

    def to_arrow(self, obj):
        reader, params = super().to_arrow(obj)
        return reader, {**params, "schema_mode": "merge"}

    def _ensure_table(self, obj, table_slice, connection) -> None:
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
        import random
        import time

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
        from dagster._core.storage.db_io_manager import DbIOManager

        return DbIOManager(
            db_client=_LgsidDeltaDbClient(),
            database="deltalake",
            schema=self.schema_,
            type_handlers=self.type_handlers(),
            default_load_type=self.default_load_type(),
            io_manager_name="DeltaLakeIOManager",
        )


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
