"""Where the pipeline keeps its Delta tables and model artefacts."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_deltalake import LocalConfig
from dagster_deltalake_polars import DeltaLakePolarsIOManager
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
        return lf.collect()

    def io_manager(self) -> DeltaLakePolarsIOManager:
        return delta_io_manager(self.home)


def delta_io_manager(home: str) -> DeltaLakePolarsIOManager:
    root = confine(Path(home).expanduser().resolve(), "delta")
    return DeltaLakePolarsIOManager(root_uri=str(root), schema=DELTA_SCHEMA, storage_options=LocalConfig())

