"""What several assets read from the home: item embeddings and the SID codebook's manifest.

A shared helper, not an asset module, so no asset module imports another.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl

from lgsid_pipeline.train_state import load_json
from resources import LgsidHome


def load_embeddings(home: LgsidHome, variant: str, catalog: pl.DataFrame) -> np.ndarray:
    """The (N, d) matrix of one variant, rows aligned with ``catalog``; errors if items are missing."""
    return load_embeddings_and_versions(home, variant, catalog)[0]


def load_embeddings_and_versions(home: LgsidHome, variant: str, catalog: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """:func:`load_embeddings` plus the distinct encoder versions of the variant's rows over every
    city (one read of the table)."""
    rows = home.read("item_embeddings").filter(pl.col("variant") == variant)
    versions = sorted(rows["encoder_version"].unique().drop_nulls().to_list())
    joined = catalog.select("item_id").join(rows.select("item_id", "embedding"), on="item_id", how="left",
                                            maintain_order="left")
    missing = joined["embedding"].null_count()
    if missing:
        raise dg.Failure(f"{missing} catalog items have no {variant!r} embedding: re-materialize item_embeddings")
    return np.asarray(joined["embedding"].to_list(), dtype=np.float32), versions


def manifest_path(home: LgsidHome):
    current = home.current("sid_codebook")
    return None if current is None else current / "manifest.json"


def read_manifest(home: LgsidHome) -> dict | None:
    path = manifest_path(home)
    if path is None or not path.exists():
        return None
    try:
        return load_json(path, "the SID codebook manifest")
    except ValueError as exc:
        raise dg.Failure(f"{exc}; the codebook version folder is damaged: re-materialize sid_codebook with "
                         "refit=True (a new version) or restore the file") from None
