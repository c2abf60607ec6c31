"""Res-KMeans (QARM, Luo et al. 2024): k-means on X, then k-means on the residuals, per level."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from lgsid_pipeline.tokenizers.base import SemanticIdTokenizer, check_embeddings
from lgsid_pipeline.tokenizers.codebook_io import require_tensors
from lgsid_pipeline.tokenizers.kmeans import residual_kmeans


class ResKMeansTokenizer(SemanticIdTokenizer):
    """Residual k-means: level l clusters ``R(l-1) = X - sum_{j<l} Q(j)`` with seeded
    k-means++ / Lloyd k-means (fitted on at most ``kmeans_max_samples`` rows), then assigns
    every row to its nearest centre. No learned encoder, no regulariser: the QARM baseline of the paper."""

    method = "res_kmeans"

    def __init__(
        self,
        codebook_sizes: list[int] | None = None,
        levels: int = 3,
        seed: int = 0,
        kmeans_max_samples: int | None = 131_072,
        kmeans_max_iter: int = 30,
    ) -> None:
        self.codebook_sizes = codebook_sizes
        self.levels = levels
        self.seed = seed
        self.kmeans_max_samples = kmeans_max_samples
        self.kmeans_max_iter = kmeans_max_iter

    def fit(self, X: np.ndarray, items: pl.DataFrame | None = None) -> "ResKMeansTokenizer":
        X = check_embeddings(X)
        t0 = time.perf_counter()
        sizes = self._resolve_sizes(X.shape[0])
        codes = np.empty((X.shape[0], len(sizes)), dtype=np.int32)
        centres, R = residual_kmeans(X.copy(), sizes, range(len(sizes)), seed=self.seed,  # Eq. 10-12 per level
                                     max_samples=self.kmeans_max_samples, max_iter=self.kmeans_max_iter, codes=codes)
        self.centres_ = centres
        self.codes_ = codes  # assignments of the fitted rows
        self.codebook_sizes_ = [int(c.shape[0]) for c in centres]
        self.dim_ = int(X.shape[1])
        self.history_ = [{"epoch": 0, "seconds": time.perf_counter() - t0,
                          "recon_mse": float((R.astype(np.float64) ** 2).sum(1).mean())}]
        return self

    def _set_state(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any], where: Path) -> None:
        names = [f"centres_{i}" for i in range(self.levels)]
        require_tensors(tensors, names, where)
        self.centres_ = [tensors[n].numpy().astype(np.float32) for n in names]
        self.history_ = []
