"""Seeded k-means and blocked nearest-centre search shared by every tokenizer.

Distances are squared Euclidean, computed block by block as ``|r|^2 - 2 r.c + |c|^2`` so that
no N x N (or N x K for huge N) matrix is ever materialised at once.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning

BLOCK_ROWS = 32_768


def effective_k(k: int, n_rows: int) -> int:
    """Codebook size actually used when there are fewer rows than codes (k shrinks to n)."""
    return int(max(1, min(int(k), int(n_rows))))


def fit_kmeans(
    X: np.ndarray,
    k: int,
    *,
    seed: int,
    max_samples: int | None = 262_144,
    batch_size: int = 4096,
    n_init: int = 3,
    max_iter: int = 100,
) -> np.ndarray:
    """Seeded MiniBatch k-means; returns centres ``(k_eff, d)`` float32.

    Fits on a seeded random subsample of at most ``max_samples`` rows (all rows when None),
    with ``k_eff = min(k, n_rows)``.
    """
    X = np.asarray(X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if max_samples is not None and X.shape[0] > max_samples:
        X = X[np.sort(rng.choice(X.shape[0], size=max_samples, replace=False))]
    k_eff = effective_k(k, X.shape[0])
    km = MiniBatchKMeans(
        n_clusters=k_eff,
        random_state=int(seed),
        batch_size=int(min(batch_size, X.shape[0])) if X.shape[0] > 0 else batch_size,
        n_init=n_init,
        max_iter=max_iter,
        init="k-means++",
        reassignment_ratio=0.01,
    )
    with warnings.catch_warnings():
        # Duplicate points (k close to the number of distinct rows) only make some centres
        # coincide; that is handled by dead-code statistics, not an error.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        km.fit(X)
    return np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)


def sq_distances(R: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(n, k)`` between rows of R and rows of C (differentiable)."""
    d2 = (R * R).sum(1, keepdim=True) - 2.0 * (R @ C.T) + (C * C).sum(1)[None, :]
    return d2.clamp_min(0.0)


@torch.no_grad()
def nearest_centre(R: np.ndarray | torch.Tensor, C: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centre (Eq. 10 argmin) and its squared distance, blocked over rows."""
    Rt = torch.as_tensor(R, dtype=torch.float32)
    Ct = torch.as_tensor(C, dtype=torch.float32)
    n = Rt.shape[0]
    idx = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    for s in range(0, n, BLOCK_ROWS):
        d2 = sq_distances(Rt[s : s + BLOCK_ROWS], Ct)
        v, i = d2.min(1)
        idx[s : s + BLOCK_ROWS] = i.numpy()
        dist[s : s + BLOCK_ROWS] = v.numpy()
    return idx, dist


def group_means(X: np.ndarray, labels: np.ndarray, k: int, fill: np.ndarray | None = None) -> np.ndarray:
    """Mean of X's rows per label (``(k, d)``); labels with no rows get ``fill`` (default: global mean)."""
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32)).double()
    lab = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    sums = torch.zeros((k, Xt.shape[1]), dtype=torch.float64).index_add_(0, lab, Xt)
    counts = torch.bincount(lab, minlength=k).double()
    out = (sums / counts.clamp_min(1.0)[:, None]).numpy()
    empty = (counts == 0).numpy()
    if empty.any():
        out[empty] = Xt.mean(0).numpy() if fill is None else fill
    return out.astype(np.float32)
