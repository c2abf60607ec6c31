"""Numeric item features for the GNPR-SID-style baseline (Wang et al., "GNPR-SID").

GNPR-SID quantises a POI's own numeric features rather than a text embedding. The features,
concatenated per item, each block scaled to unit mean square so no block dominates:

* category: the fixed hashed code of the category hierarchy (``cat1``, ``cat2``), the same
  composite code HGIT uses in Eq. 9 (a zero block for a dataset without categories);
* location: the 3-D unit vector of (lat, lon), centred and divided by its RMS spread;
* visit time: the mean over the item's visits of ``sin/cos(2 pi h k / 24)`` for harmonics
  ``k = 1..hour_harmonics`` of the visit hour ``h`` (UTC; the data carry no time zone), from
  the interactions' ``timestamp``; zero for items never visited or data without timestamps.

The result goes through RQ-VAE like any embedding (``make_tokenizer("rqvae")``).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from lgsid_pipeline.tokenizers.hgit import CATEGORY_COLUMNS, geo_normaliser, hierarchical_codes, unit_vectors


def _unit_ms(block: np.ndarray) -> np.ndarray:
    ms = float((block.astype(np.float64) ** 2).sum(1).mean()) if block.size else 0.0
    return block / np.sqrt(ms) if ms > 1e-12 else block


def visit_hour_features(items: pl.DataFrame, interactions: pl.DataFrame | None, harmonics: int = 2) -> np.ndarray:
    """``(N, 2 * harmonics)`` mean Fourier features of each item's visit hours (see module doc)."""
    n = items.height
    out = np.zeros((n, 2 * harmonics), dtype=np.float32)
    if interactions is None or "timestamp" not in interactions.columns or harmonics < 1:
        return out
    ts = interactions.select(pl.col("item_id").cast(pl.Utf8), pl.col("timestamp")).drop_nulls()
    if ts.height == 0:
        return out
    h = ts.select(pl.col("item_id"), (pl.col("timestamp").dt.hour().cast(pl.Float64)
                                      + pl.col("timestamp").dt.minute().cast(pl.Float64) / 60.0).alias("h"))
    exprs = []
    for k in range(1, harmonics + 1):
        ang = pl.col("h") * (2.0 * np.pi * k / 24.0)
        exprs += [ang.sin().mean().alias(f"s{k}"), ang.cos().mean().alias(f"c{k}")]
    agg = h.group_by("item_id").agg(exprs)
    joined = items.select(pl.col("item_id").cast(pl.Utf8)).join(agg, on="item_id", how="left", maintain_order="left")
    cols = [c for k in range(1, harmonics + 1) for c in (f"s{k}", f"c{k}")]
    return joined.select(cols).fill_null(0.0).to_numpy().astype(np.float32)


def gnpr_features(items: pl.DataFrame, interactions: pl.DataFrame | None = None, *, cat_dim: int = 8,
                  hour_harmonics: int = 2, seed: int = 0) -> np.ndarray:
    """``(N, cat_dim + 3 + 2 * hour_harmonics)`` float32 numeric features (see the module doc)."""
    if items.height == 0:
        raise ValueError("items is empty")
    cat = hierarchical_codes(items, CATEGORY_COLUMNS, cat_dim, seed)
    u, ok = unit_vectors(items)
    mean, scale = geo_normaliser(items)
    geo = np.where(ok[:, None], (u - mean) / scale, 0.0).astype(np.float32)
    hours = visit_hour_features(items, interactions, hour_harmonics)
    return np.concatenate([_unit_ms(cat), _unit_ms(geo), _unit_ms(hours)], axis=1).astype(np.float32)
