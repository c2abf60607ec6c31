"""Domain collaborative pairs for G-DPO (paper Eq. 5), computed per city.

Eq. 5: s(a, b) = sum_u I[a in H_u and b in H_u], the number of users whose click history H_u
contains both items. Each user counts once per pair, however often a or b repeat. Pairs with
s(a, b) > s_th (strictly greater, as printed) are kept.

Implementation (never an N x N dense matrix):

1. Ids become integer codes (hash joins; item codes follow the sorted ``item_id`` order, so
   "upper triangle" means ``item_a < item_b`` as strings).
2. History cap: a user with more than ``max_history`` interactions keeps the ``max_history``
   most recent distinct items, ordered by ``timestamp``, then ``seq_idx``, then source row
   order (``source_row`` when present, else row order; later rows are more recent; nulls count
   as oldest). Only those users are sorted. The cap
   bounds a user's contribution to ``max_history * (max_history - 1) / 2`` pairs.
3. A binary users x items CSR matrix X (duplicate clicks merged: each user counts once).
4. Pruning: s(a, b) <= min(n_users(a), n_users(b)), so items seen by at most ``s_th`` users
   are dropped, then users left with fewer than two items.
5. Eq. 5 counts are the upper triangle of X^T X, computed in row blocks of X^T sized by their
   multiply-adds, each block filtered to s > s_th as soon as it is produced, so the peak
   memory is one block's output plus the kept pairs.
6. ``workers`` threads multiply blocks at once (scipy's sparse product releases the GIL); the
   block size is divided by ``workers``, so the blocks in flight hold as much memory as one
   block did. The pairs do not depend on ``workers`` (tested).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from lgsid_pipeline import paper
from lgsid_pipeline.schema import source_order

PAPER_S_TH = paper.COOCCURRENCE_THRESHOLD
"""Threshold used in the paper (Appendix B) on the Kuaishou data."""
PAPER_N_INTERACTIONS = 50_000_000
PAPER_N_ITEMS = 2_325_266

PAIR_SCHEMA: dict[str, pl.DataType] = {
    "item_a": pl.Utf8(),
    "item_b": pl.Utf8(),
    "score": pl.Int64(),
}

_BLOCK_WORK = 40_000_000
"""Target multiply-adds of the blocks in flight of X^T X (bounds the memory of their output)."""
DEFAULT_WORKERS = min(2, os.cpu_count() or 1)
"""Threads for the block products: two use both cores of the 2-core machine (the product stage
2.1x faster at 1M items; the whole call 1.37x at 2.3M, benchmarks/results/speed.md)."""


def default_threshold(n_interactions: int, n_items: int) -> int:
    """Co-occurrence threshold s_th scaled from the paper's setting to this data.

    The paper keeps pairs with s > 1200 on its whole data set: 50M interactions over
    2,325,266 items (mean item popularity ~21.5). Eq. 5 counts users, and with the users'
    behaviour fixed the count of every pair grows in proportion to the number of interactions
    observed, so we keep the paper's threshold *per interaction*:

        s_th = floor(1200 * n_interactions / 50,000,000), clipped to [1, 1200].

    The floor of 1 means a pair must be shared by at least two users (one user's history is
    never a collaborative signal). ``n_items`` is only validated: the alternative reading,
    keeping the paper's ratio of threshold to mean item popularity (~55.8x), asks for s > 361
    on the largest gowalla_nyc city partition (37k interactions), where the best pair is shared
    by 69 users; it yields no pair at all on every public city partition we measured, so it is
    not the default (pass ``s_th`` explicitly to use it).
    """
    if n_interactions < 0 or n_items < 0:
        raise ValueError(
            f"n_interactions and n_items must be >= 0, got {n_interactions}, {n_items}"
        )
    raw = math.floor(PAPER_S_TH * n_interactions / PAPER_N_INTERACTIONS + 1e-9)
    return int(min(PAPER_S_TH, max(1, raw)))


@dataclass
class CooccurrenceResult:
    pairs: pl.DataFrame
    """``item_a < item_b`` (str), ``score`` (int64, Eq. 5), sorted by score desc."""
    threshold: int
    metrics: dict = field(default_factory=dict)


def _codes(values: pl.Series, *, sort: bool) -> tuple[np.ndarray, pl.Series]:
    """Dense integer codes of ``values`` (a hash join) and the distinct value of each code.

    With ``sort=True`` the codes follow the values' sorted (string) order.
    """
    uniq = values.unique()
    if sort:
        uniq = uniq.sort()
    table = pl.DataFrame({"v": uniq, "code": np.arange(uniq.len(), dtype=np.int64)})
    codes = pl.DataFrame({"v": values}).join(table, on="v", how="left", maintain_order="left")
    return codes["code"].to_numpy(), uniq


def _recency_key(interactions: pl.DataFrame, col: str) -> pl.Series | None:
    if col not in interactions.columns:
        return None
    s = interactions[col]
    if s.dtype == pl.Null or s.null_count() == s.len():
        return None
    return s.to_physical().cast(pl.Int64)


def _history_matrix(
    interactions: pl.DataFrame, max_history: int
) -> tuple[sp.csr_matrix, pl.Series, pl.Series]:
    """Binary users x items CSR matrix of each user's ``max_history`` most recent distinct
    items, with the user ids and (sorted) item ids of its rows and columns.

    Only users with more than ``max_history`` interactions need the recency sort; everyone
    else keeps all their distinct items (duplicates are merged by the CSR conversion).
    """
    for col in ("user_id", "item_id"):
        if col not in interactions.columns:
            raise ValueError(f"interactions lack the required column {col!r}")
        nulls = interactions[col].is_null()
        if nulls.any():
            row = int(nulls.arg_true()[0])
            raise ValueError(f"interactions column {col!r} is null in row {row}")
    if max_history < 2:
        raise ValueError(f"max_history must be >= 2 to form pairs, got {max_history}")
    user, user_ids = _codes(interactions["user_id"].cast(pl.Utf8), sort=False)
    item, item_ids = _codes(interactions["item_id"].cast(pl.Utf8), sort=True)
    n_users, n_items = user_ids.len(), item_ids.len()
    is_long = (np.bincount(user, minlength=n_users) > max_history)[user]
    users, items = [user[~is_long]], [item[~is_long]]
    if is_long.any():
        rows = np.flatnonzero(is_long)
        # Most recent first inside each user: timestamp, then seq_idx, then source row order;
        # nulls are oldest.
        sort_keys = [-source_order(interactions).to_numpy()[rows]]
        for col in ("seq_idx", "timestamp"):
            k = _recency_key(interactions, col)
            if k is not None:
                k = k.fill_null(np.iinfo(np.int64).min + 1).to_numpy()
                sort_keys.append(-k[rows])
        order = rows[np.lexsort((*sort_keys, user[rows]))]
        u, i = user[order], item[order]
        first = pl.Series(u * max(n_items, 1) + i).is_first_distinct().to_numpy()
        u, i = u[first], i[first]
        # Position of each row inside its user's run (rows are grouped by user).
        starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
        run = np.repeat(starts, np.diff(np.r_[starts, u.size]))
        keep = (np.arange(u.size) - run) < max_history
        users.append(u[keep])
        items.append(i[keep])
    u, i = np.concatenate(users), np.concatenate(items)
    x = sp.coo_matrix(
        (np.ones(u.size, dtype=np.int32), (u, i)), shape=(n_users, n_items)
    ).tocsr()  # sums duplicate (user, item) entries ...
    x.data[:] = 1  # ... and a user counts once per item (Eq. 5 is over sets H_u)
    return x, user_ids, item_ids


def capped_histories(interactions: pl.DataFrame, max_history: int) -> pl.DataFrame:
    """Distinct (user_id, item_id) rows: each user's ``max_history`` most recent distinct items.

    Recency is ``timestamp``, then ``seq_idx``, then row order (later rows more recent); nulls
    count as oldest. Raises ``ValueError`` for missing columns or null ids.
    """
    x, user_ids, item_ids = _history_matrix(interactions, max_history)
    u = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    return pl.DataFrame({"user_id": user_ids.gather(u), "item_id": item_ids.gather(x.indices)})


def _pair_blocks(x: sp.csr_matrix, s_th: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle entries of X^T X with value > s_th, computed block by block (``workers``
    blocks at a time, each ``1 / workers`` of the single-thread block size)."""
    n_items = x.shape[1]
    xt = x.T.tocsr()  # items x users
    user_len = np.diff(x.indptr).astype(np.int64)
    # Multiply-adds of row j of X^T X: sum over the users of j of their history length.
    row_work = xt @ user_len
    block_id = np.cumsum(row_work) // max(_BLOCK_WORK // workers, 1)
    bounds = [0, *(np.flatnonzero(np.diff(block_id)) + 1).tolist(), n_items]
    blocks = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

    def one(block_rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = block_rows
        block = xt[lo:hi] @ x  # rows lo..hi-1 of X^T X, CSR
        pos = np.flatnonzero(block.data > s_th)  # most entries are small: filter first
        r = np.searchsorted(block.indptr, pos, side="right") - 1 + lo
        c = block.indices[pos]
        upper = c > r
        r, c, v = r[upper].astype(np.int64), c[upper].astype(np.int64), block.data[pos[upper]].astype(np.int64)
        # Row-major order (a product's column indices are unsorted within a row); the blocks
        # follow each other in row order, so the concatenation is sorted by (item_a, item_b).
        order = np.argsort(r * n_items + c)  # distinct keys: any sort gives this order
        return r[order], c[order], v[order]

    if workers > 1 and len(blocks) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(one, blocks))  # in block order: the same arrays as one thread
    else:
        parts = [one(b) for b in blocks]
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def cooccurrence_pairs(
    interactions: pl.DataFrame, *, s_th: int | None = None, max_history: int = 50,
    workers: int = DEFAULT_WORKERS,
) -> CooccurrenceResult:
    """Eq. 5 co-occurrence pairs with s > s_th over one city's interactions.

    ``s_th=None`` uses :func:`default_threshold` on the number of interactions and distinct
    items given. Returns :class:`CooccurrenceResult` with ``pairs`` (item_a, item_b, score),
    ``threshold`` and ``metrics``.
    """
    if s_th is not None and s_th < 0:
        raise ValueError(f"s_th must be >= 0, got {s_th}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    x, user_ids, item_ids = _history_matrix(interactions, max_history)
    n_items_total = item_ids.len()
    threshold = (
        default_threshold(interactions.height, n_items_total) if s_th is None else int(s_th)
    )

    # Pruning: an item seen by <= s_th users cannot reach s > s_th with any partner.
    kept = np.bincount(x.indices, minlength=n_items_total) > threshold
    kept_idx = np.flatnonzero(kept)
    kept_ids = item_ids.gather(kept_idx)
    x = x[:, kept_idx]  # compact columns, still in item-id order
    # Users with fewer than two remaining items form no pair.
    x = x[np.flatnonzero(np.diff(x.indptr) >= 2)]

    if x.nnz:
        a, b, s = _pair_blocks(x, threshold, workers)  # Eq. 5, restricted to s > s_th
        # Score desc, then item_a, item_b (codes follow the ids' string order): the pairs come
        # sorted by (item_a, item_b), so a stable sort by score alone gives it (a radix sort when
        # scores fit in 16 bits: linear, where a 3-key lexsort of 47M pairs took most of the time).
        neg = -s
        if s.size and s.max() < 2**15:
            neg = neg.astype(np.int16)
        order = np.argsort(neg, kind="stable")
        a, b, s = a[order], b[order], s[order]
        n_items_in_pairs = int(np.count_nonzero(np.bincount(np.r_[a, b], minlength=1)))
        pairs = pl.DataFrame(
            {"item_a": kept_ids.gather(a), "item_b": kept_ids.gather(b), "score": s},
            schema=PAIR_SCHEMA,
        )
    else:
        pairs = pl.DataFrame(schema=PAIR_SCHEMA)
        n_items_in_pairs = 0

    scores = pairs["score"]
    q = (
        {f"score_{name}": float(scores.quantile(p, "nearest")) for name, p in
         (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
        if pairs.height
        else {"score_p50": None, "score_p90": None, "score_p99": None}
    )
    metrics = {
        "n_pairs": pairs.height,
        "n_users": user_ids.len(),
        "n_interactions": interactions.height,
        "n_items": n_items_total,
        "n_items_above_threshold": int(kept.sum()),
        "n_items_in_pairs": n_items_in_pairs,
        **q,
        "score_max": int(scores.max()) if pairs.height else None,
        "threshold": threshold,
        "max_history": max_history,
    }
    return CooccurrenceResult(pairs=pairs, threshold=threshold, metrics=metrics)
