"""Random-ID control: codes that carry no semantic or geographic structure.

Each level's code is a stable hash of ``(seed, level, item_id)`` modulo that level's size, so
the control is reproducible, needs no fitting beyond the sizes, and gives a new item its code
without any embedding. Compared with the semantic tokenizers under the same sizes, dedup and
budget, it shows how much of a result is owed to semantic structure at all (TIGER on random
IDs still learns item-to-item transitions, as with plain item IDs). The per-code centres
(mean embedding of each code's items) exist only so ``reconstruct`` and the diagnostics
compare with the other methods.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from lgsid_pipeline.tokenizers.base import SemanticIdTokenizer, check_embeddings, check_items
from lgsid_pipeline.tokenizers.codebook_io import require_tensors
from lgsid_pipeline.tokenizers.kmeans import group_means, residual_step


def hashed_item_codes(item_ids: pl.Series, sizes: list[int], seed: int) -> np.ndarray:
    """``(N, L)`` codes: blake2b of ``seed/level/item_id`` modulo each level's size."""
    ids = item_ids.cast(pl.Utf8).to_list()
    if any(i is None for i in ids):
        raise ValueError(f"items row {ids.index(None)} has a null item_id; the random-ID control hashes item_id")
    out = np.empty((len(ids), len(sizes)), dtype=np.int64)
    for level, k in enumerate(sizes):
        out[:, level] = [int.from_bytes(hashlib.blake2b(f"{seed}\x1f{level}\x1f{i}".encode(), digest_size=8).digest(),
                                        "little") % k for i in ids]
    return out


class RandomIdTokenizer(SemanticIdTokenizer):
    """Hashed random codes per level (see the module doc)."""

    method = "random_id"
    _needs_items = True

    def __init__(self, codebook_sizes: list[int] | None = None, levels: int = 3, seed: int = 0) -> None:
        self.codebook_sizes = codebook_sizes
        self.levels = levels
        self.seed = seed

    def fit(self, X: np.ndarray, items: pl.DataFrame | None = None) -> "RandomIdTokenizer":
        X = check_embeddings(X)
        items = check_items(items, X.shape[0], True, "random_id")
        if "item_id" not in items.columns:
            raise ValueError("random_id needs the items' item_id column")
        t0 = time.perf_counter()
        sizes = self._resolve_sizes(X.shape[0])
        codes = hashed_item_codes(items["item_id"], sizes, self.seed)
        R = X.copy()
        centres = []
        for level, k in enumerate(sizes):
            centres.append(group_means(R, codes[:, level], k))
            _, R = residual_step(R, centres[-1], codes[:, level])  # Eq. 11-12 with hashed codes
        self.centres_ = centres
        self.codes_ = codes.astype(np.int32)
        self.codebook_sizes_ = list(sizes)
        self.dim_ = int(X.shape[1])
        self.history_ = [{"epoch": 0, "seconds": time.perf_counter() - t0,
                          "recon_mse": float((R.astype(np.float64) ** 2).sum(1).mean())}]
        return self

    def transform(self, X: np.ndarray, items: pl.DataFrame | None = None) -> np.ndarray:
        self._check_fitted()
        X = check_embeddings(X, self.dim_)
        items = check_items(items, X.shape[0], True, "random_id")
        return hashed_item_codes(items["item_id"], self.codebook_sizes_, self.seed).astype(np.int32)

    def level_distances(self, X: np.ndarray, items: pl.DataFrame | None, codes: np.ndarray, level: int) -> np.ndarray:
        """Distance 0 to the item's own hashed code and 1 to every other, so a greedy dedup moves
        a colliding item to a free code in index order (there is no nearer code to prefer)."""
        self._check_fitted()
        k = self.codebook_sizes_[level]
        own = hashed_item_codes(items["item_id"], self.codebook_sizes_, self.seed)[:, level]
        out = np.ones((own.size, k), dtype=np.float32)
        out[np.arange(own.size), own] = 0.0
        return out

    def _set_state(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any], where: Path) -> None:
        names = [f"centres_{i}" for i in range(self.levels)]
        require_tensors(tensors, names, where)
        self.centres_ = [tensors[n].numpy().astype(np.float32) for n in names]
        self.history_ = []
