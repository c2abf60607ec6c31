"""Peer baselines on the same split: popularity, last-item transitions, geo-nearest.

Every baseline produces a (users, K) top-K matrix of item indices per stage ("valid", "test").
Statistics (counts, transitions) are fitted on the training sequences (``fit_on="train"``, the
same data the learned models train on; this reproduces the README's reference numbers) or on
everything before the stage's target (``fit_on="history"``: the test stage also sees the
validation transitions). The query item is always the last item of the stage's history (the
validation target for "test"), and it is masked, exactly like the generative model. Scores
never form an items x items matrix: transitions are a sparse count matrix scored in user
batches, geo-nearest uses a KD-tree on unit-sphere coordinates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lgsid_pipeline.geo import unit_vectors
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .data import SplitData
from .metrics import KS, topk_metrics

HEURISTICS = ("popularity", "transitions", "geo_nearest")
STAGES = ("valid", "test")


@dataclass
class TopKResult:
    """Top-K item indices per stage plus the flat metric dict shared by all rankers."""

    name: str
    topk: dict[str, np.ndarray]
    metrics: dict[str, float]
    seconds: float
    extra: dict = field(default_factory=dict)


def stage_metrics(split: SplitData, topk: dict[str, np.ndarray], ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Flat ``{stage}_{hit|ndcg}@{k}`` dict from per-stage top-K matrices."""
    out: dict[str, float] = {}
    for stage, tk in topk.items():
        for key, val in topk_metrics(tk, split.target(stage), ks).items():
            out[f"{stage}_{key}"] = val
    return out


def drop_masked(cands: np.ndarray, masked: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` candidates per row that differ from ``masked[row]`` (order preserved)."""
    keep = cands != masked[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.take_along_axis(cands, order, axis=1)[:, :k]


FIT_ON = ("train", "history")


def _fit_sequences(split: SplitData, stage: str, fit_on: str) -> list[np.ndarray]:
    if fit_on not in FIT_ON:
        raise ValueError(f"fit_on must be one of {FIT_ON}, got {fit_on!r}")
    return split.train_seqs if fit_on == "train" else split.history(stage)


def item_counts(split: SplitData, stage: str, fit_on: str = "train") -> np.ndarray:
    hist = _fit_sequences(split, stage, fit_on)
    flat = np.concatenate(hist) if hist else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=split.n_items).astype(np.float64)


def popularity_order(split: SplitData, stage: str, fit_on: str = "train") -> np.ndarray:
    """Item indices by descending count (ties: lower index first)."""
    c = item_counts(split, stage, fit_on)
    return np.lexsort((np.arange(c.size), -c))


def popularity_topk(split: SplitData, stage: str, k: int = 10, fit_on: str = "train") -> np.ndarray:
    top = popularity_order(split, stage, fit_on)[: k + 1]
    cands = np.broadcast_to(top, (split.n_users, top.size))
    return drop_masked(cands, split.last_item(stage), k)


def transition_matrix(split: SplitData, stage: str, fit_on: str = "train") -> sp.csr_matrix:
    """Sparse counts of consecutive (previous -> next) pairs in the fitted sequences."""
    src, dst = [], []
    for h in _fit_sequences(split, stage, fit_on):
        if h.size > 1:
            src.append(h[:-1])
            dst.append(h[1:])
    n = split.n_items
    if not src:
        return sp.csr_matrix((n, n))
    s, d = np.concatenate(src), np.concatenate(dst)
    return sp.csr_matrix((np.ones(s.size), (s, d)), shape=(n, n))


def _topk_dense(scores: np.ndarray, masked: np.ndarray, k: int) -> np.ndarray:
    scores[np.arange(scores.shape[0]), masked] = -np.inf
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def transitions_topk(
    split: SplitData, stage: str, k: int = 10, fit_on: str = "train", batch: int = 2048
) -> np.ndarray:
    """Score = transition count from the last item; popularity breaks ties / fills the rest."""
    T = transition_matrix(split, stage, fit_on)
    pop = item_counts(split, stage, fit_on)
    tie = pop / (pop.max() + 1.0)  # < 1: never overrides one observed transition
    last = split.last_item(stage)
    out = np.empty((split.n_users, k), dtype=np.int64)
    for s in range(0, split.n_users, batch):
        rows = last[s : s + batch]
        scores = T[rows].toarray() + tie[None, :]
        out[s : s + batch] = _topk_dense(scores, rows, k)
    return out


def geo_nearest_topk(
    split: SplitData, stage: str, item_lat, item_lon, k: int = 10, fit_on: str = "train"
) -> np.ndarray:
    """The ``k`` located items nearest to the last history item (KD-tree; self masked).

    Users whose last item has no coordinates get popularity; lists shorter than ``k`` (tiny
    catalogues) are filled with popularity.
    """
    lat = np.asarray(item_lat, dtype=np.float64)
    lon = np.asarray(item_lon, dtype=np.float64)
    if lat.shape != (split.n_items,) or lon.shape != (split.n_items,):
        raise ValueError("item_lat / item_lon must be aligned to the split's item vocabulary")
    located = np.flatnonzero(np.isfinite(lat) & np.isfinite(lon))
    pop_top = popularity_topk(split, stage, k, fit_on)
    if located.size == 0:
        return pop_top
    tree = cKDTree(unit_vectors(lat[located], lon[located]))
    last = split.last_item(stage)
    ok = np.isfinite(lat[last]) & np.isfinite(lon[last])
    out = pop_top.copy()
    if ok.any():
        q = min(k + 1, located.size)
        _, idx = tree.query(unit_vectors(lat[last[ok]], lon[last[ok]]), k=q)
        idx = np.asarray(idx).reshape(int(ok.sum()), q)
        near = located[idx]
        if q < k + 1:
            near = np.concatenate([near, pop_top[ok]], axis=1)
            near = np.array([list(dict.fromkeys(r))[: k + 1] for r in near])  # tiny catalogue only
        out[ok] = drop_masked(near, last[ok], k)
    return out


def run_heuristic(
    name: str,
    split: SplitData,
    *,
    item_lat=None,
    item_lon=None,
    k: int = 10,
    fit_on: str = "train",
) -> TopKResult:
    """Run one baseline on both stages; returns its top-K matrices and metrics."""
    if name not in HEURISTICS:
        raise ValueError(f"unknown heuristic {name!r}; choose from {HEURISTICS}")
    if name == "geo_nearest" and (item_lat is None or item_lon is None):
        raise ValueError("geo_nearest needs item_lat and item_lon")
    t0 = time.process_time()
    topk = {}
    for stage in STAGES:
        if name == "popularity":
            topk[stage] = popularity_topk(split, stage, k, fit_on)
        elif name == "transitions":
            topk[stage] = transitions_topk(split, stage, k, fit_on)
        else:
            topk[stage] = geo_nearest_topk(split, stage, item_lat, item_lon, k, fit_on)
    secs = time.process_time() - t0
    return TopKResult(name=name, topk=topk, metrics=stage_metrics(split, topk), seconds=secs)
