"""Where the pipeline keeps its Delta tables and model artefacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_deltalake import LocalConfig
from dagster_deltalake.handler import DeltaLakePyArrowTypeHandler
from dagster_deltalake_polars import DeltaLakePolarsIOManager, DeltaLakePolarsTypeHandler
from pydantic import Field

from lgsid_pipeline.partitions import confine, validate_city_key

DELTA_SCHEMA = "lgsid"


def default_home() -> str:
    """``$LGSID_HOME``, else ``<repo>/.lgsid`` (the README's demo and UI share it)."""
    return os.environ.get("LGSID_HOME") or str(Path(__file__).resolve().parents[1] / ".lgsid")


class LgsidHome(dg.ConfigurableResource):
    """The pipeline's home folder: Delta tables under ``delta/``, artefacts under ``artifacts/``.

    Every path handed out is resolved and confined under ``home``, so hostile partition keys
    or config values cannot write outside it.
    """

    home: str = Field(default_factory=default_home, description="Root folder of all outputs.")

    def root(self) -> Path:
        path = Path(self.home).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def delta_root(self) -> Path:
        return confine(self.root(), "delta")

    def table_path(self, name: str) -> Path:
        return confine(self.root(), "delta", DELTA_SCHEMA, name)

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
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps({"path": str(target.relative_to(self.root()))}))
        os.replace(tmp, pointer)

    def current(self, asset: str) -> Path | None:
        """The artefact last published for ``asset`` (None if never materialized)."""
        pointer = confine(self.root(), "artifacts", asset, "current.json")
        if not pointer.exists():
            return None
        rel = json.loads(pointer.read_text())["path"]
        return confine(self.root(), rel)

    def scan(self, name: str, cities: list[str] | None = None) -> pl.LazyFrame | None:
        """Lazy scan of a per-city table across partitions (``None`` if it does not exist yet)."""
        path = self.table_path(name)
        if not (path / "_delta_log").exists():
            return None
        lf = pl.scan_delta(str(path))
        if cities is not None:
            lf = lf.filter(pl.col("city_key").is_in(cities))
        return lf

    def read(self, name: str, cities: list[str] | None = None) -> pl.DataFrame:
        lf = self.scan(name, cities)
        if lf is None:
            raise FileNotFoundError(
                f"Delta table {name!r} does not exist under {self.table_path(name)}: materialize it first"
            )
        try:
            return lf.collect()
        except BaseException as exc:  # a damaged data file surfaces as a Rust panic, not an OSError
            if isinstance(exc, KeyboardInterrupt | SystemExit | MemoryError):
                raise
            raise ValueError(
                f"Delta table {name!r} at {self.table_path(name)} cannot be read ({type(exc).__name__}: "
                f"{str(exc)[:300]}). Recovery: delete the table folder and re-materialize its cities "
                "(see docs/reliability.md)."
            ) from exc

    def io_manager(self) -> DeltaLakePolarsIOManager:
        return delta_io_manager(self.home)


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
    """

    max_attempts: int = 8
    base_delay_s: float = 0.05
    max_delay_s: float = 2.0

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

    def handle_output(self, context, table_slice, obj, connection):
        import random
        import time

        rng = random.Random()
        for attempt in range(1, self.max_attempts + 1):
            try:
                self._ensure_table(obj, table_slice, connection)
                return super().handle_output(context, table_slice, obj, connection)
            except Exception as exc:
                if not _is_commit_conflict(exc) or attempt == self.max_attempts:
                    raise
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * (0.5 + rng.random())
                context.log.warning(f"Delta commit conflict on {connection.table_uri} "
                                    f"(attempt {attempt}/{self.max_attempts}): {exc}; retrying in {delay:.2f}s")
                time.sleep(delay)
        return None  # pragma: no cover - the loop returns or raises


class LgsidDeltaIOManager(DeltaLakePolarsIOManager):
    """``DeltaLakePolarsIOManager`` with conflict-safe, retried per-city writes."""

    @staticmethod
    def type_handlers():
        return [RetryingDeltaLakePolarsTypeHandler(), DeltaLakePyArrowTypeHandler()]


def delta_io_manager(home: str) -> DeltaLakePolarsIOManager:
    root = confine(Path(home).expanduser().resolve(), "delta")
    return LgsidDeltaIOManager(root_uri=str(root), schema=DELTA_SCHEMA, storage_options=LocalConfig())


