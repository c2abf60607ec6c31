"""Item embeddings, incrementally: an item keeps its stored vector while its prompt and the
encoder version are unchanged; only new or changed items are encoded. One call per variant
(origin, aligned) covers a whole batch of cities."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import polars as pl

EMBEDDING_COLUMNS = ("item_id", "variant", "encoder_version", "encoder_identity", "prompt_hash",
                     "embedding", "city_key")


def prompt_hash(prompts: list[str]) -> list[str]:
    """A short content key per prompt (16 hex digits of SHA-1): equal prompts, equal keys."""
    return [hashlib.sha1(p.encode()).hexdigest()[:16] for p in prompts]


def current_items(catalog: pl.DataFrame, prompts: list[str]) -> pl.DataFrame:
    """item_id, prompt_hash and city_key of the catalog, in catalog order."""
    return pl.DataFrame({"item_id": catalog["item_id"], "prompt_hash": prompt_hash(prompts),
                         "city_key": catalog["city_key"]})


@dataclass
class VariantRows:
    """One variant's embedding rows and, per city, how many items were encoded or reused."""
    rows: pl.DataFrame
    encoded: dict[str, int]
    reused: dict[str, int]
    n_encoded: int


def embed_variant(current: pl.DataFrame, prompts: list[str], existing: pl.DataFrame | None, *,
                  variant: str, version: str, identity: dict,
                  encode: Callable[[list[str]], object]) -> VariantRows:
    """The rows of one variant for ``current`` (from :func:`current_items`): stored vectors of
    ``existing`` whose variant, encoder version and prompt hash all match are reused, every other
    item's prompt goes through ``encode`` (one call, in catalog order)."""
    reuse = pl.DataFrame(schema={"item_id": pl.Utf8, "embedding": pl.List(pl.Float32)})
    if existing is not None and existing.height:
        reuse = (existing.filter((pl.col("variant") == variant) & (pl.col("encoder_version") == version))
                 .join(current, on=["item_id", "prompt_hash"]).select("item_id", "embedding"))
    todo = current.join(reuse.select("item_id"), on="item_id", how="anti")
    idx = current.with_row_index().join(todo, on=["item_id", "prompt_hash"])["index"].to_list()
    emb = encode([prompts[i] for i in idx])
    vectors = (pl.Series("embedding", emb).cast(pl.List(pl.Float32)) if len(idx)
               else pl.Series("embedding", [], dtype=pl.List(pl.Float32)))  # nothing to encode
    fresh = pl.DataFrame({"item_id": todo["item_id"]}).with_columns(vectors)
    rows = current.join(pl.concat([reuse, fresh]), on="item_id").with_columns(
        pl.lit(variant).alias("variant"), pl.lit(version).alias("encoder_version"),
        pl.lit(json.dumps(identity, default=str)).alias("encoder_identity"))
    per_city = dict(current.group_by("city_key").len().iter_rows())
    encoded = {c: int(n) for c, n in todo.group_by("city_key").len().iter_rows()}
    reused = {c: int(n) - encoded.get(c, 0) for c, n in per_city.items()}
    return VariantRows(rows.select(*EMBEDDING_COLUMNS), encoded, reused, len(idx))
