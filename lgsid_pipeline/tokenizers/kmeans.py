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


KMEANS_MAX_ITER = 30  # Lloyd iterations per fit, for fit_kmeans and residual_kmeans


def fit_kmeans(
    X: np.ndarray,
    k: int,
    *,
    seed: int,
    max_samples: int | None = 131_072,
    algorithm: str = "lloyd",
    max_iter: int = KMEANS_MAX_ITER,
    tol: float = 1e-4,
    n_init: int = 1,
    batch_size: int = 4096,
) -> np.ndarray:
    """Seeded k-means; returns centres ``(k_eff, d)`` float32 with ``k_eff = min(k, n_rows)``.

    Fits on a seeded random subsample of at most ``max_samples`` rows (all rows when None).
    ``algorithm="lloyd"``: k-means++ initialisation and Lloyd iterations in torch (blocked
    matmuls; stops when the inertia improves by less than ``tol`` relatively).
    ``algorithm="minibatch"``: scikit-learn ``MiniBatchKMeans`` (used by HGIT's first layer,
    as in the paper), with ``n_init`` restarts.
    """
    X = np.asarray(X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if max_samples is not None and X.shape[0] > max_samples:
        X = X[np.sort(rng.choice(X.shape[0], size=max_samples, replace=False))]
    k_eff = effective_k(k, X.shape[0])
    if algorithm == "minibatch":
        km = MiniBatchKMeans(
            n_clusters=k_eff,
            random_state=int(seed),
            batch_size=int(min(batch_size, X.shape[0])),
            n_init=n_init,
            max_iter=max_iter,
            init="k-means++",
        )
        with warnings.catch_warnings():
            # Duplicate points (k close to the number of distinct rows) only make some
            # centres coincide; dead-code statistics report that, it is not an error.
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            km.fit(X)
        return np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)
    if algorithm != "lloyd":
        raise ValueError(f"unknown k-means algorithm {algorithm!r}; choose 'lloyd' or 'minibatch'")
    return _lloyd(torch.from_numpy(X), k_eff, seed=seed, max_iter=max_iter, tol=tol)


@torch.no_grad()
def _kmeans_pp(Xt: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (as scikit-learn): at each step draw ``2 + log k`` candidates
    by D^2 sampling and keep the one that lowers the potential most. O(n k d log k)."""
    n = Xt.shape[0]
    trials = 2 + int(np.log(max(k, 2)))
    sq = (Xt * Xt).sum(1)
    centres = torch.empty((k, Xt.shape[1]), dtype=Xt.dtype)
    centres[0] = Xt[torch.randint(0, n, (1,), generator=g)]
    closest = ((Xt - centres[0]) ** 2).sum(1)
    for j in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than centres: reuse random points
            cand = torch.randint(0, n, (trials,), generator=g)
        else:
            cand = torch.multinomial(closest / total, trials, replacement=True, generator=g)
        d = (sq[:, None] - 2.0 * Xt @ Xt[cand].T + sq[cand][None, :]).clamp_min(0.0)
        pot = torch.minimum(closest[:, None], d)
        best = int(pot.sum(0).argmin())
        centres[j] = Xt[cand[best]]
        closest = pot[:, best]
    return centres


@torch.no_grad()
def _lloyd(Xt: torch.Tensor, k: int, *, seed: int, max_iter: int, tol: float) -> np.ndarray:
    g = torch.Generator().manual_seed(int(seed))
    C = _kmeans_pp(Xt, k, g)
    prev = float("inf")
    for _ in range(max_iter):
        idx = torch.empty(Xt.shape[0], dtype=torch.long)
        inertia = 0.0
        for s in range(0, Xt.shape[0], BLOCK_ROWS):
            v, i = sq_distances(Xt[s : s + BLOCK_ROWS], C).min(1)
            idx[s : s + BLOCK_ROWS] = i
            inertia += float(v.sum())
        sums = torch.zeros_like(C, dtype=torch.float64)
        for s in range(0, Xt.shape[0], BLOCK_ROWS):
            sums.index_add_(0, idx[s : s + BLOCK_ROWS], Xt[s : s + BLOCK_ROWS].double())
        counts = torch.bincount(idx, minlength=k)
        live = counts > 0
        C[live] = (sums[live] / counts[live, None]).float()
        if (~live).any():  # empty cluster: move it onto a random point
            C[~live] = Xt[torch.randint(0, Xt.shape[0], (int((~live).sum()),), generator=g)]
        if prev < float("inf") and prev - inertia <= tol * max(prev, 1e-12) and live.all():
            break
        prev = inertia
    return np.ascontiguousarray(C.numpy(), dtype=np.float32)


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


def residual_step(R, C, z=None):
    """Eq. 10-12, the one residual step every tokenizer takes: ``(z, next residual)``.

    Eq. 10: ``z = argmin_k |R - C_k|^2`` (:func:`nearest_centre`), unless the level's codes
    ``z`` are given (HGIT's level 1 comes from the Eq. 9 feature, random_id's from a hash);
    Eq. 11: the level's quantisation ``Q = C[z]``; Eq. 12: the next level's residual ``R - Q``.
    A numpy ``R`` is the caller's own working copy and is updated in place (no second copy of
    an (N, d) matrix); a torch ``R`` is left alone and a new tensor returned."""
    if z is None:
        z, _ = nearest_centre(R, C)
    if isinstance(R, torch.Tensor):
        zt = torch.as_tensor(z, dtype=torch.int64)
        return zt, R - torch.as_tensor(C)[zt]
    R -= C[z]
    return z, R


def residual_kmeans(R: np.ndarray, sizes: list[int], levels: range, *, seed: int, max_samples: int | None,
                    max_iter: int = KMEANS_MAX_ITER, codes: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Res-KMeans over ``levels`` (0-based): at each level a k-means of ``sizes[level]`` codes
    seeded ``seed + level`` on the current residual, then :func:`residual_step` (Eq. 10-12).
    Returns the levels' centres and the last residual (``R``, a working copy, is updated in
    place); ``codes``, when given, receives each level's assignments in its column."""
    centres = []
    for level in levels:
        C = fit_kmeans(R, sizes[level], seed=seed + level, max_samples=max_samples, max_iter=max_iter)
        z, R = residual_step(R, C)  # Eq. 10-12
        if codes is not None:
            codes[:, level] = z
        centres.append(C)
    return centres, R


def group_means(X: np.ndarray, labels: np.ndarray, k: int, fill: np.ndarray | None = None) -> np.ndarray:
    """Mean of X's rows per label (``(k, d)``); labels with no rows get ``fill`` (default: global mean)."""
    X = np.asarray(X, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    sums = torch.zeros((k, X.shape[1]), dtype=torch.float64)
    for s in range(0, X.shape[0], BLOCK_ROWS):  # float64 accumulation, one block at a time
        sums.index_add_(0, torch.from_numpy(labels[s : s + BLOCK_ROWS]), torch.from_numpy(X[s : s + BLOCK_ROWS]).double())
    counts = torch.bincount(torch.from_numpy(labels), minlength=k).double()
    out = (sums / counts.clamp_min(1.0)[:, None]).numpy()
    empty = (counts == 0).numpy()
    if empty.any():
        out[empty] = (sums.sum(0) / max(1, X.shape[0])).numpy() if fill is None else fill
    return out.astype(np.float32)
