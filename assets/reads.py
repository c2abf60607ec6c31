"""What several assets read from the home: item embeddings and the SID codebook's manifest.

A shared helper, not an asset module, so no asset module imports another.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl

from lgsid_pipeline.tokenizers import registry
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


def read_manifest(home: LgsidHome) -> dict | None:
    """:func:`lgsid_pipeline.tokenizers.registry.read_manifest`, a damaged manifest as a ``dg.Failure``."""
    try:
        return registry.read_manifest(home)
    except registry.CodebookError as exc:
        raise dg.Failure(str(exc)) from None
