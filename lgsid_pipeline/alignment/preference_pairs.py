"""G-DPO's preference pairs: D_mix = D_dc U D_gc as (target, near, far) item triples, and the
Eq. 1 prompts (i+, i-, the anchor's true prompt) each pair trains on (:mod:`.gdpo` trains on them)."""

from __future__ import annotations

import numpy as np
import polars as pl

from lgsid_pipeline import paper
from lgsid_pipeline.alignment.prompts import DEFAULT_TEMPLATE, PromptTemplate, build_prompt

PAIR_SCHEMA = {"target_id": pl.Utf8(), "near_id": pl.Utf8(), "far_id": pl.Utf8(), "source": pl.Utf8()}


def _location_codes(items: pl.DataFrame, outside: str) -> np.ndarray:
    cols = ["province", "city"] + (["town"] if outside == "town" else [])
    cols = [c for c in cols if c in items.columns]
    if not cols:
        raise ValueError("items need a 'city' (and ideally 'town') column to sample outside locations")
    key = pl.concat_str([pl.col(c).cast(pl.Utf8).fill_null("") for c in cols], separator="|")
    return items.select(key.alias("k"))["k"].cast(pl.Categorical).to_physical().to_numpy()


def _sample_outside(targets: np.ndarray, codes: np.ndarray, rng: np.random.Generator,
                    rounds: int = 32) -> np.ndarray:
    """For each target index, a random item index whose location code differs (-1 if none found)."""
    far = rng.integers(0, len(codes), size=len(targets))
    bad = codes[far] == codes[targets]
    for _ in range(rounds):
        if not bad.any():
            break
        far[bad] = rng.integers(0, len(codes), size=int(bad.sum()))
        bad = codes[far] == codes[targets]
    far[bad] = -1
    return far


def build_preference_pairs(
    items: pl.DataFrame,
    cooc_pairs: pl.DataFrame | None,
    *,
    n_gc_per_item: int = paper.DMIX_FAR_PER_SAMPLE,
    seed: int = 0,
    max_pairs: int | None = None,
    use_dc: bool = True,
    use_gc: bool = True,
    outside: str = "town",
) -> pl.DataFrame:
    """D_mix = D_dc U D_gc as a frame [target_id, near_id, far_id, source ("dc" | "gc")]."""
    if "item_id" not in items.columns:
        raise ValueError("items lacks column 'item_id'")
    if outside not in ("town", "city"):
        raise ValueError(f"outside must be 'town' or 'city', got {outside!r}")
    if items["item_id"].null_count() or items["item_id"].n_unique() != items.height:
        raise ValueError("items.item_id must be non-null and unique")
    rng = np.random.default_rng(seed)
    ids = items["item_id"].cast(pl.Utf8).to_numpy()
    codes = _location_codes(items, outside)
    parts: list[pl.DataFrame] = []
    if use_gc and n_gc_per_item > 0:
        targets = np.repeat(np.arange(len(ids)), n_gc_per_item)
        far = _sample_outside(targets, codes, rng)
        ok = far >= 0
        parts.append(pl.DataFrame({"target_id": ids[targets[ok]], "near_id": ids[targets[ok]],
                                   "far_id": ids[far[ok]], "source": "gc"}, schema=PAIR_SCHEMA))
    if use_dc and cooc_pairs is not None and cooc_pairs.height > 0:
        missing = {"item_a", "item_b"} - set(cooc_pairs.columns)
        if missing:
            raise ValueError(f"cooc_pairs is missing column(s) {sorted(missing)}")
        index = pl.DataFrame({"item_id": ids, "idx": np.arange(len(ids))})
        cp = (cooc_pairs.select(pl.col("item_a").cast(pl.Utf8), pl.col("item_b").cast(pl.Utf8))
              .join(index.rename({"item_id": "item_a", "idx": "ia"}), on="item_a")
              .join(index.rename({"item_id": "item_b", "idx": "ib"}), on="item_b")
              .filter(pl.col("ia") != pl.col("ib")))
        t = np.concatenate([cp["ia"].to_numpy(), cp["ib"].to_numpy()])
        n = np.concatenate([cp["ib"].to_numpy(), cp["ia"].to_numpy()])
        far = _sample_outside(t, codes, rng)
        ok = far >= 0
        parts.append(pl.DataFrame({"target_id": ids[t[ok]], "near_id": ids[n[ok]],
                                   "far_id": ids[far[ok]], "source": "dc"}, schema=PAIR_SCHEMA))
    pairs = pl.concat(parts) if parts else pl.DataFrame(schema=PAIR_SCHEMA)
    if max_pairs is not None and pairs.height > max_pairs:
        pairs = pairs.sample(n=max_pairs, seed=seed, shuffle=True)
    return pairs



def pair_texts(items: pl.DataFrame, pairs: pl.DataFrame,
               template: PromptTemplate = DEFAULT_TEMPLATE) -> tuple[list[str], list[str], list[str]]:
    """(i+ texts, i- texts, anchors' true prompts) for every pair, built with Eq. 1 prompts."""
    missing = {"target_id", "near_id", "far_id"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs is missing column(s) {sorted(missing)}")
    rows = {str(r["item_id"]): r for r in items.to_dicts()}
    for col in ("target_id", "near_id", "far_id"):
        unknown = pairs.filter(~pl.col(col).cast(pl.Utf8).is_in(list(rows)))
        if unknown.height:
            raise ValueError(f"pairs.{col} has {unknown.height} id(s) not in items, e.g. {unknown[col][0]!r}")
    t, n, f = (pairs[c].cast(pl.Utf8).to_list() for c in ("target_id", "near_id", "far_id"))
    pos = [build_prompt(rows[a], rows[b], template) for a, b in zip(t, n)]
    neg = [build_prompt(rows[a], rows[b], template) for a, b in zip(t, f)]
    anc = [build_prompt(rows[a], None, template) for a in t]
    return pos, neg, anc
