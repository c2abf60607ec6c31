"""Local-life ranking mode: rank only the items within ``km`` of the user's last visit.

The full-catalogue protocol asks "which of all items comes next?"; a local-life service
(delivery, walk-in) asks "which of the places near me?". Here each user's candidate set is the
located items within ``km`` (default 5) great-circle km of the stage's last history item (the
item masked at evaluation, itself excluded). Candidate sets are a sparse users x items matrix
built from one KD-tree radius query per distinct last item, never a dense distance matrix.

Metrics are reported over the *eligible* users, those whose target lies inside their
candidate set (for the others no local ranking can hit), together with their share of all
users. Rankers: popularity and nearest-first among candidates, and TIGER with its constrained
beam search further restricted, per user, to SID prefixes above a candidate item.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from lgsid_pipeline.geo import GeoIndex, haversine_km

from .data import SplitData
from .heuristics import item_counts
from .metrics import KS, hit_ndcg, per_user_hit_ndcg, target_ranks
from .strata import item_coords
from .tiger import SIDCodec, TigerConfig, TigerModel, Tokens, history_matrix, rank_users


def local_candidates(split: SplitData, item_lat, item_lon, stage: str, km: float = 5.0) -> sp.csr_matrix:
    """(users, items) boolean CSR: item ``j`` is a candidate of user ``u`` when both are located
    and ``j`` lies within ``km`` of ``u``'s last history item for ``stage``, ``j`` not being
    that item. Users whose last item has no coordinates get an empty row.

    One radius query per distinct last item on a KD-tree of unit vectors (exact great-circle
    distance); rows are then shared by the users with that last item. Indices are sorted.
    """
    if km <= 0:
        raise ValueError(f"km must be positive, got {km}")
    lat, lon = item_coords(split, item_lat, item_lon)
    n_users, n_items = split.n_users, split.n_items
    located = np.flatnonzero(np.isfinite(lat) & np.isfinite(lon))
    last = split.last_item(stage)
    ok = np.isfinite(lat[last]) & np.isfinite(lon[last])
    if located.size == 0 or not ok.any():
        return sp.csr_matrix((n_users, n_items), dtype=bool)
    queries, inverse = np.unique(last[ok], return_inverse=True)
    hits = GeoIndex(lat[located], lon[located]).query_radius(lat[queries], lon[queries], km)
    lens = np.fromiter((h.size for h in hits), dtype=np.int64, count=len(hits))
    cols = located[np.concatenate(hits)] if lens.sum() else np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(queries.size), lens)
    keep = cols != queries[rows]  # the masked last item itself
    rows, cols = rows[keep], cols[keep]
    per_query = sp.csr_matrix(
        (np.ones(rows.size, dtype=bool), (rows, cols)), shape=(queries.size, n_items), dtype=bool
    )
    # users -> query row; users without a located last item point at an extra empty row
    row_of_user = np.full(n_users, queries.size, dtype=np.int64)
    row_of_user[ok] = inverse.reshape(-1)
    padded = sp.vstack([per_query, sp.csr_matrix((1, n_items), dtype=bool)], format="csr")
    out = padded[row_of_user]
    out.sort_indices()
    return out.tocsr()


def eligible_users(split: SplitData, cands: sp.csr_matrix, stage: str) -> np.ndarray:
    """Boolean mask over users: the stage's target is in the user's candidate set."""
    cands = sp.csr_matrix(cands)
    if cands.shape != (split.n_users, split.n_items):
        raise ValueError(f"cands must be (users, items) = {(split.n_users, split.n_items)}, got {cands.shape}")
    target = split.target(stage).astype(np.int64)
    return np.asarray(cands[np.arange(split.n_users), target]).reshape(-1).astype(bool)


def _topk_by_key(cands: sp.csr_matrix, key: np.ndarray, k: int) -> np.ndarray:
    """(users, k) candidate indices per row, ascending ``key`` (one value per stored entry),
    ties by lower item index; rows with fewer than ``k`` candidates are padded with -1."""
    cands = sp.csr_matrix(cands)
    rows = np.repeat(np.arange(cands.shape[0]), np.diff(cands.indptr))
    cols = cands.indices.astype(np.int64)
    order = np.lexsort((cols, key, rows))  # rows stay grouped, as in the CSR
    pos = np.arange(order.size) - cands.indptr[rows[order]]
    take = pos < k
    out = np.full((cands.shape[0], k), -1, dtype=np.int64)
    out[rows[order][take], pos[take]] = cols[order][take]
    return out


def local_popularity_topk(split: SplitData, cands: sp.csr_matrix, stage: str, k: int = 10,
                          fit_on: str = "train") -> np.ndarray:
    """Each user's ``k`` candidates with the highest training count (ties: lower index), -1
    padded: the popularity baseline of the local mode."""
    cands = sp.csr_matrix(cands)
    counts = item_counts(split, stage, fit_on)
    return _topk_by_key(cands, -counts[cands.indices], k)


def local_nearest_topk(split: SplitData, cands: sp.csr_matrix, stage: str, item_lat, item_lon,
                       k: int = 10) -> np.ndarray:
    """Each user's ``k`` candidates nearest to the last history item (ties: lower index), -1
    padded: the geo-nearest baseline of the local mode (distances only over stored pairs)."""
    lat, lon = item_coords(split, item_lat, item_lon)
    cands = sp.csr_matrix(cands)
    rows = np.repeat(np.arange(cands.shape[0]), np.diff(cands.indptr))
    last = split.last_item(stage)[rows]
    cols = cands.indices
    d = haversine_km(lat[last], lon[last], lat[cols], lon[cols])
    return _topk_by_key(cands, np.where(np.isfinite(d), d, np.inf), k)


def allowed_masks(codec: SIDCodec, cands: sp.csr_matrix) -> list[torch.Tensor]:
    """Per-level bool masks (rows of ``cands``, ``codec.n_nodes[l]``): prefix node ``p`` of
    level ``l`` is allowed for row ``b`` when at least one of ``b``'s candidate items lies under
    it. Built by scatter from the (row, item) pairs, so cost is rows x nodes bools per level."""
    coo = sp.coo_matrix(cands)
    r = torch.from_numpy(coo.row.astype(np.int64))
    c = coo.col.astype(np.int64)
    out = []
    for lvl in range(codec.levels):
        m = torch.zeros(coo.shape[0], codec.n_nodes[lvl], dtype=torch.bool)
        m[r, torch.from_numpy(codec.item_prefix[lvl][c])] = True
        out.append(m)
    return out


def tiger_local_topk(model: TigerModel, tk: Tokens, split: SplitData, stage: str, cfg: TigerConfig,
                     cands: sp.csr_matrix, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """TIGER top-``k`` (items, scores) per user with the beam search restricted to the user's
    candidates: at every level only codes leading to a prefix node above one of the user's
    candidate items are valid. Masks are built per eval batch (bounded memory). Users with
    fewer candidates than ``k`` get -1 / -inf padding; an empty candidate set gives an empty list.
    """
    cands = sp.csr_matrix(cands)
    if cands.shape != (split.n_users, split.n_items):
        raise ValueError(f"cands must be (users, items) = {(split.n_users, split.n_items)}, got {cands.shape}")
    hist = history_matrix(split.history(stage), cfg.max_history)
    users = np.arange(split.n_users)

    def allowed(rows: np.ndarray) -> list[torch.Tensor]:
        return allowed_masks(tk.codec, cands[rows])

    return rank_users(model, tk, hist, users, split.last_item(stage), cfg, k, allowed=allowed)


def local_metrics(topk: np.ndarray, split: SplitData, stage: str, eligible: np.ndarray,
                  ks: tuple[int, ...] = KS) -> dict:
    """Hit@K / NDCG@K (K in ``ks``, default 5 and 10) of ``topk`` over the eligible users.

    Returns the means (NaN when no user is eligible), ``users`` (eligible count), ``share``
    (eligible / all users), ``eligible_idx`` and per-user ``hit@K_per_user`` / ``ndcg@K_per_user``
    arrays over the eligible users (in ``eligible_idx`` order), for paired tests and bootstraps.
    """
    topk = np.asarray(topk)
    eligible = np.asarray(eligible, dtype=bool)
    if topk.shape[0] != split.n_users or eligible.shape != (split.n_users,):
        raise ValueError("topk and eligible must have one row per user")
    idx = np.flatnonzero(eligible)
    out: dict = {"users": int(idx.size), "share": float(idx.size / split.n_users), "eligible_idx": idx}
    ranks = target_ranks(topk[idx], split.target(stage)[idx])
    if idx.size:
        out.update(hit_ndcg(ranks, ks))
    else:
        out.update({f"{m}@{k}": float("nan") for k in ks for m in ("hit", "ndcg")})
    for k in ks:
        h, g = per_user_hit_ndcg(ranks, k)
        out[f"hit@{k}_per_user"], out[f"ndcg@{k}_per_user"] = h, g
    return out
