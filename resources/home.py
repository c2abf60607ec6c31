"""The ``LgsidHome`` resource: where the pipeline keeps its Delta tables and model artefacts.

Two locations, configured separately:

- ``home`` (``$LGSID_HOME``): a local or shared (NFS/EFS/CephFS) folder for the artefacts:
  trained weights as safetensors, codebooks, manifests, plots. These stay on a file system on
  purpose: they rely on local file semantics that object stores do not offer. A new version is
  written next to the old one and made current by rewriting the asset's ``current.json``
  pointer (a temporary file, fsynced, then ``os.replace``), and :meth:`LgsidHome.publish`
  holds an exclusive file lock (``current.json.lock``, ``filelock`` via
  ``lgsid_pipeline.train_state.artefact_lock``) while it does, so two publishers of one asset
  take turns. The trainers' checkpoints take the same kind of lock while they are saved
  (``train_state.save_checkpoint``); reading a pointer or a checkpoint takes no lock.
- ``tables_uri`` (``$LGSID_TABLES_URI``): where the Delta tables live, either a local path
  (default ``<home>/delta``) or an object-store URI (``s3://bucket/prefix``), with
  ``storage_options`` (``$LGSID_STORAGE_OPTIONS``, a JSON object) for delta-rs and polars.
  Table ``<name>`` is at ``<tables_uri>/lgsid/<name>``. Credentials belong in the environment
  (``AWS_ACCESS_KEY_ID`` ...), which delta-rs and polars read themselves, not in
  ``storage_options``: resource config is shown in the Dagster UI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_deltalake_polars import DeltaLakePolarsIOManager
from pydantic import Field

from lgsid_pipeline.partitions import confine, validate_city_key
from lgsid_pipeline.train_state import artefact_lock, atomic_write_text
from resources.delta_io import check_delta_log, delta_io_manager
from resources.uris import (
    DELTA_SCHEMA,
    default_storage_options,
    is_remote_uri,
    local_tables_root,
    normalize_tables_uri,
    validate_table_name,
)


def default_home() -> str:
    """``$LGSID_HOME``, else ``<repo>/.lgsid`` (the README's demo and UI share it)."""
    return os.environ.get("LGSID_HOME") or str(Path(__file__).resolve().parents[1] / ".lgsid")


def default_tables_uri() -> str | None:
    """``$LGSID_TABLES_URI``, else ``None`` (the tables live under ``<home>/delta``)."""
    return os.environ.get("LGSID_TABLES_URI", "").strip() or None


class LgsidHome(dg.ConfigurableResource):
    """The pipeline's storage: artefacts under ``<home>/artifacts/``, Delta tables under
    ``tables_uri`` (default ``<home>/delta``; or ``s3://bucket/prefix``).

    Every local path handed out is resolved and confined under its root, so hostile partition
    keys or config values cannot write outside it; on object storage, table names are
    validated (they are asset names) and the URI is checked (see
    :func:`resources.uris.normalize_tables_uri`). Artefacts always stay on the (local or
    shared) file system: see the module docstring.
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
        """Atomically make ``path`` (under this home) the current artefact of ``asset``: its
        ``current.json`` pointer is replaced by ``os.replace`` under the pointer's file lock."""
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
