"""The dataset a run reads: the embedded world, a shared-schema folder, files or adapters."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from lgsid_pipeline.data import sources
from lgsid_pipeline.data.catalog import ValidationResult, validate_interactions, validate_items


@functools.lru_cache(maxsize=4)
def _validated(spec_json: str, landing_fingerprint: str) -> tuple[ValidationResult, ValidationResult, str]:
    spec = sources.SourceSpec(**json.loads(spec_json))
    start = time.perf_counter()
    raw = sources.load_source(spec)
    loaded = time.perf_counter()
    items = validate_items(raw.items, source=f"{raw.name}/items")
    inter = validate_interactions(raw.interactions, items.valid, source=f"{raw.name}/interactions")
    # Whole-dataset timings (paid once per process and landing state, shared by every city).
    items.counts["seconds_load"] = round(loaded - start, 3)
    items.counts["seconds_validate"] = round(time.perf_counter() - loaded, 3)
    return items, inter, raw.name


class DataSource(dg.ConfigurableResource):
    """Which dataset feeds ``item_catalog`` / ``user_interactions``.

    ``kind``: ``generator`` (default: the embedded demo world), ``folder`` (shared schema,
    e.g. ``../shared/data/gowalla_nyc``), ``files``, ``yelp`` or ``foursquare``.
    """

    kind: Literal[sources.SOURCE_KINDS] = Field(default="generator", description="generator | folder | files | yelp | foursquare")
    path: str | None = Field(default=None, description="Dataset folder (folder, yelp) or TSV file (foursquare).")
    preset: str = Field(default="demo", description="Generator preset: test, demo, bench-100k, ...")
    seed: int = Field(default=0, description="Generator seed.")
    items_file: str | None = None
    interactions_file: str | None = None
    column_map: dict[str, str] = Field(default_factory=dict, description="canonical column -> source column")
    default_city: str | None = None
    default_province: str | None = None
    landing_dir: str | None = Field(default=None, description="Folder the new-items sensor watches.")

    def spec(self) -> sources.SourceSpec:
        return sources.SourceSpec(
            kind=self.kind, path=self.path, preset=self.preset, seed=self.seed,
            items_file=self.items_file, interactions_file=self.interactions_file,
            column_map=dict(self.column_map), default_city=self.default_city,
            default_province=self.default_province, landing_dir=self.landing_dir,
        )

    def validated(self) -> tuple[ValidationResult, ValidationResult, str]:
        """(items, interactions, dataset name), validated once per process and landing state."""
        spec = self.spec()
        fingerprint = json.dumps([(str(p), p.stat().st_mtime_ns, p.stat().st_size)
                                  for p in sources.landing_files(spec.landing_dir)])
        return _validated(sources.describe_json(spec), fingerprint)

    def city_keys(self) -> list[str]:
        items, inter, _ = self.validated()
        keys = set(items.valid["city_key"].unique().to_list())
        if items.quarantine.height or inter.quarantine.height:
            keys |= set(items.quarantine["city_key"].unique().to_list())
            keys |= set(inter.quarantine["city_key"].unique().to_list())
        return sorted(keys)

    def describe(self) -> str:
        return self.spec().describe()


def landing_dir_path(landing_dir: str | None) -> Path | None:
    return Path(landing_dir) if landing_dir else None
