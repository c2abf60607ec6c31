"""Ranking and classification metrics, vectorised.

* Hit@K / NDCG@K with one held-out item per user: ``rank`` is the 0-based position of the target
  in the user's ranked list (``-1`` / absent = not retrieved). Hit@K = 1[rank < K];
  NDCG@K = 1[rank < K] / log2(rank + 2) (the ideal DCG of a single relevant item is 1).
* AUC: Mann-Whitney U from mid-ranks (ties count one half), equal to ``roc_auc_score``.
* GAUC: impression-weighted mean of per-user AUC; users with only positives or only negatives
  have no AUC and are skipped (their impressions leave the weights too).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import rankdata

from .. import paper

KS = paper.EVAL_KS


def target_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of ``targets[u]`` in ``topk[u]``; -1 where it is absent."""
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2 or topk.shape[0] != targets.shape[0]:
        raise ValueError(f"topk must be (users, K) matching targets; got {topk.shape} and {targets.shape}")
    match = topk == targets[:, None]
    found = match.any(axis=1)
    return np.where(found, match.argmax(axis=1), -1)


def hit_ndcg(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Mean Hit@K and NDCG@K from 0-based target ranks (-1 = not retrieved)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no users to evaluate")
    out: dict[str, float] = {}
    valid = ranks >= 0
    gain = np.where(valid, 1.0 / np.log2(np.where(valid, ranks, 0) + 2.0), 0.0)
    for k in ks:
        inside = valid & (ranks < k)
        out[f"hit@{k}"] = float(inside.mean())
        out[f"ndcg@{k}"] = float(np.where(inside, gain, 0.0).mean())
    return out


def per_user_hit_ndcg(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user Hit@K and NDCG@K arrays (for grouped breakdowns)."""
    ranks = np.asarray(ranks)
    inside = (ranks >= 0) & (ranks < k)
    gain = np.where(inside, 1.0 / np.log2(np.where(inside, ranks, 0) + 2.0), 0.0)
    return inside.astype(np.float64), gain


def topk_metrics(topk: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    return hit_ndcg(target_ranks(topk, targets), ks)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney statistic on mid-ranks."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    r = rankdata(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC, skipping single-class users."""
    df = pl.DataFrame(
        {
            "u": np.asarray(users),
            "y": np.asarray(labels).astype(bool),
            "s": np.asarray(scores, dtype=np.float64),
        }
    )
    per = (
        df.with_columns(pl.col("s").rank("average").over("u").alias("r"))
        .group_by("u")
        .agg(
            pl.len().alias("n"),
            pl.col("y").sum().alias("p"),
            pl.col("r").filter(pl.col("y")).sum().alias("rs"),
        )
        .with_columns((pl.col("n") - pl.col("p")).alias("q"))
        .filter((pl.col("p") > 0) & (pl.col("q") > 0))
    )
    if per.height == 0:
        raise ValueError("GAUC: no user has both a positive and a negative impression")
    p = per["p"].to_numpy().astype(np.float64)
    q = per["q"].to_numpy().astype(np.float64)
    n = per["n"].to_numpy().astype(np.float64)
    a = (per["rs"].to_numpy() - p * (p + 1) / 2.0) / (p * q)
    return float((a * n).sum() / n.sum())
