"""Alignment report: the paper's Table 3 retrieval metrics (RQ2) and NMI (RQ3).

For each embedding variant (origin, aligned, ...):

- Neighbours: for each query item, its K nearest other items by cosine similarity in the
  variant's own space, found by an exact blocked matrix product (a block of query rows times
  all items, top-k per block; never an N x N matrix).
- ``top@K`` (semantic similarity): mean cosine similarity between the query and its K
  neighbours, measured in the ORIGIN embedding space, so variants are compared on the same
  semantic yardstick (a variant that keeps semantics retrieves items the origin model also finds
  similar).
- ``p@K`` / ``c@K`` / ``t@K`` (geographic coverage): share of the K neighbours with the same
  province / city / town as the query. A null label never matches; queries whose own label is
  null are left out of that level's average.
- ``nmi_province`` / ``nmi_city`` / ``nmi_town``: normalised mutual information between a
  seeded k-means clustering (k-means++ init, one run) of the L2-normalised embeddings and the labels, with as many
  clusters as the level has distinct labels in scope (capped at ``max_clusters``); NaN when
  fewer than two distinct labels are present.

When K > n - 1 (fewer other items than K) the K-metrics use all n - 1 other items. Scope
``overall`` averages over every query; a city scope (``group_col``) averages over the queries
of that city, their neighbours still being searched among all items, and clusters only that
city's items for NMI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from lgsid_pipeline.budgets import allocate
from lgsid_pipeline.plotting import pyplot, save

# The pipeline's alignment report (the asset's defaults): a total query budget, allocated across
# cities by size after a floor each. The function's own default scores every item.
PIPELINE_MAX_QUERIES = 2000
PIPELINE_QUERIES_FLOOR = 8
NMI_RESTARTS = 10  # k-means restarts behind each NMI (the best inertia is kept)

LEVELS: tuple[tuple[str, str], ...] = (("p", "province"), ("c", "city"), ("t", "town"))
_BLOCK_ELEMENTS = 1 << 25
"""Query rows x items per similarity block (32M floats, 128 MB)."""


def _check_embeddings(embeddings: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    out = {}
    for name, emb in embeddings.items():
        arr = np.asarray(emb, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(
                f"embeddings[{name!r}] must have shape (n_items={n}, d); got {arr.shape}"
            )
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ValueError(
                f"embeddings[{name!r}] has non-finite values in row {int(np.flatnonzero(bad)[0])}"
            )
        out[name] = arr
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def cosine_neighbours(
    emb: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``min(k, n - 1)`` most cosine-similar other items of each query row.

    Returns ``(idx, sim)`` of shape (Q, k') sorted by similarity desc. Blocked exact search.
    """
    x = torch.from_numpy(l2_normalise(emb))
    n = x.shape[0]
    k_eff = min(int(k), n - 1)
    q = np.asarray(queries, dtype=np.int64)
    if k_eff <= 0:
        return np.zeros((q.size, 0), np.int64), np.zeros((q.size, 0), np.float32)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    idx_out = np.empty((q.size, k_eff), np.int64)
    sim_out = np.empty((q.size, k_eff), np.float32)
    with torch.no_grad():
        for lo in range(0, q.size, block):
            qb = torch.from_numpy(q[lo : lo + block])
            s = x[qb] @ x.T
            s[torch.arange(qb.numel()), qb] = -torch.inf  # never the query itself
            top = torch.topk(s, k_eff, dim=1)
            idx_out[lo : lo + block] = top.indices.numpy()
            sim_out[lo : lo + block] = top.values.numpy()
    return idx_out, sim_out


def _codes(items: pl.DataFrame, col: str) -> np.ndarray:
    """Integer label codes, -1 for null / empty labels."""
    s = items[col].cast(pl.Utf8)
    valid = s.is_not_null() & (s.str.strip_chars() != "")
    codes = s.rank("dense").cast(pl.Int64).fill_null(0).to_numpy() - 1
    return np.where(valid.to_numpy(), codes, -1)


def _per_query(
    emb: np.ndarray, origin_n: np.ndarray, queries: np.ndarray, codes: dict[str, np.ndarray],
    ks: Sequence[int],
) -> dict[str, np.ndarray]:
    """Per-query top@K and label-match shares (NaN where undefined)."""
    kmax = max(ks)
    idx, _ = cosine_neighbours(emb, queries, kmax)
    k_eff = idx.shape[1]
    out: dict[str, np.ndarray] = {}
    q = queries
    # Semantic similarity in the origin space, in blocks to bound (Q, K, d) memory.
    sim_origin = np.empty(idx.shape, np.float32)
    step = max(1, _BLOCK_ELEMENTS // max(k_eff * origin_n.shape[1], 1))
    for lo in range(0, q.size, step):
        a = origin_n[q[lo : lo + step]]
        b = origin_n[idx[lo : lo + step]]
        sim_origin[lo : lo + step] = np.einsum("qd,qkd->qk", a, b)
    for k in ks:
        kk = min(k, k_eff)
        out[f"top@{k}"] = sim_origin[:, :kk].mean(axis=1) if kk else np.full(q.size, np.nan)
    for short, col in LEVELS:
        c = codes[col]
        cq = c[q]
        match = (c[idx] == cq[:, None]) & (cq[:, None] >= 0)
        for k in ks:
            kk = min(k, k_eff)
            share = match[:, :kk].mean(axis=1) if kk else np.full(q.size, np.nan)
            out[f"{short}@{k}"] = np.where(cq >= 0, share, np.nan)
    return out


def _nmi(emb_n: np.ndarray, labels: np.ndarray, seed: int, max_clusters: int) -> float:
    ok = labels >= 0
    y = labels[ok]
    n_labels = np.unique(y).size
    if n_labels < 2:
        return float("nan")
    x = emb_n[ok].astype(np.float64)  # float32 takes sklearn's slow chunked-upcast path
    n_clusters = min(n_labels, max_clusters, x.shape[0])
    # The lowest-inertia partition of NMI_RESTARTS k-means runs: with one run, which structure
    # k-means finds (cities or content topics of similar scale) depends on the seed, and the
    # demo world's Origin NMI city read 0.006 in one run and 0.962 in another.
    km = KMeans(n_clusters=n_clusters, n_init=NMI_RESTARTS, max_iter=100, random_state=seed).fit(x)
    return float(normalized_mutual_info_score(y, km.labels_))


@dataclass
class AlignmentReport:
    table: pl.DataFrame
    """One row per variant x scope: variant, scope, n_items, n_queries, top@K, p@K, c@K, t@K,
    nmi_province, nmi_city, nmi_town."""
    query_allocation: dict[str, int] | None = None
    """Queries per group when the budget was allocated across groups (``queries_floor``)."""

    def markdown(self, digits: int = 4) -> str:
        cols = self.table.columns
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in self.table.iter_rows():
            cells = []
            for v in row:
                if isinstance(v, float):
                    cells.append("nan" if v != v else f"{v:.{digits}f}")
                else:
                    cells.append(str(v))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def geography_at_k(embedding: np.ndarray, origin: np.ndarray, items: pl.DataFrame, k: int = 5) -> dict[str, float]:
    """Overall ``top@k``, ``p@k``, ``c@k``, ``t@k`` of one variant (no NMI): the cheap subset of
    :func:`alignment_report` that G-DPO evaluates on held-out items while it trains."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for col in [c for _, c in LEVELS]:
        if col not in items.columns:
            raise ValueError(f"items lack the required column {col!r}")
    if items.height < 2:
        raise ValueError(f"geography_at_k needs at least 2 items, got {items.height}")
    embs = _check_embeddings({"v": embedding, "origin": origin}, items.height)
    codes = {col: _codes(items, col) for _, col in LEVELS}
    per_q = _per_query(embs["v"], l2_normalise(embs["origin"]), np.arange(items.height), codes, (k,))
    return {key: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for key, v in per_q.items()}


def _groups(items: pl.DataFrame, group_col: str | None) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """Each item's group index, the group names and each group's members (none without
    ``group_col``); groups by one sort, not one scan per group: O(N log N) at any number of cities."""
    group_of = np.zeros(items.height, dtype=np.int64)
    names: list[str] = []
    members_of: list[np.ndarray] = []
    if group_col:
        uniq, group_of = np.unique(items[group_col].cast(pl.Utf8).fill_null("").to_numpy().astype(str),
                                   return_inverse=True)
        order = np.argsort(group_of, kind="stable")
        bounds = np.searchsorted(group_of[order], np.arange(len(uniq) + 1))
        names = [str(g) for g in uniq]
        members_of = [order[bounds[i]:bounds[i + 1]] for i in range(len(uniq))]
    return group_of, names, members_of


def _queries(n: int, max_queries: int | None, group_col: str | None, queries_floor: int, names: list[str],
             members_of: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, int] | None]:
    """The query items (sorted) and, with a per-group floor, the budget's allocation to groups."""
    queries = np.arange(n)
    allocation: dict[str, int] | None = None
    if max_queries is not None and max_queries < n:
        if group_col and queries_floor > 0:
            allocation = allocate({g: m.size for g, m in zip(names, members_of)}, max_queries, queries_floor)
            picked = [rng.choice(m, size=allocation[g], replace=False) for g, m in zip(names, members_of)
                      if allocation[g]]
            queries = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
        else:
            queries = np.sort(rng.choice(n, size=max_queries, replace=False))
    return queries, allocation


def _variant_rows(name: str, emb: np.ndarray, origin_n: np.ndarray, queries: np.ndarray, codes: dict,
                  ks: tuple[int, ...], scopes: list[tuple[str, np.ndarray, np.ndarray]], *, seed: int,
                  max_clusters: int, nmi_max_items: int) -> list[dict]:
    """One variant's table rows, one per scope: the K-metrics over the scope's queries and NMI
    over (a seeded sample of at most ``nmi_max_items`` of) its items."""
    rows = []
    per_q = _per_query(emb, origin_n, queries, codes, ks)
    emb_n = l2_normalise(emb)
    for scope, members, in_scope in scopes:
        row: dict[str, object] = {
            "variant": name, "scope": scope, "n_items": int(members.size),
            "n_queries": int(in_scope.sum()),
        }
        for key, vals in per_q.items():
            v = vals[in_scope]
            v = v[~np.isnan(v)]
            row[key] = float(v.mean()) if v.size else float("nan")
        sample = members
        if sample.size > nmi_max_items:
            sample = np.sort(
                np.random.default_rng(seed).choice(sample, nmi_max_items, replace=False)
            )
        for _, col in LEVELS:
            row[f"nmi_{col}"] = _nmi(emb_n[sample], codes[col][sample], seed, max_clusters)
        rows.append(row)
    return rows


def alignment_report(
    embeddings: dict[str, np.ndarray],
    items: pl.DataFrame,
    *,
    origin_key: str = "origin",
    ks: Sequence[int] = (5, 10, 100),
    seed: int = 0,
    max_queries: int | None = None,
    group_col: str | None = "city_key",
    max_clusters: int = 100,
    nmi_max_items: int = 20_000,
    queries_floor: int = 0,
) -> AlignmentReport:
    """Table 3 metrics and NMI for every variant in ``embeddings`` (rows aligned to ``items``).

    ``max_queries`` evaluates a seeded sample of query items (neighbours still come from all
    items); ``nmi_max_items`` caps the items clustered per scope (seeded sample). With
    ``queries_floor > 0`` and a ``group_col``, the ``max_queries`` budget is allocated across the
    groups (cities) in proportion to their size with that floor per group (``budgets.allocate``),
    so a small city is still scored and a large one does not take the whole budget; the
    allocation is returned in ``AlignmentReport.query_allocation``.
    """
    if origin_key not in embeddings:
        raise ValueError(f"embeddings lack the origin variant {origin_key!r}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    ks = tuple(int(k) for k in ks)
    for col in [c for _, c in LEVELS] + ([group_col] if group_col else []):
        if col not in items.columns:
            raise ValueError(f"items lack the required column {col!r}")
    n = items.height
    if n < 2:
        raise ValueError(f"alignment_report needs at least 2 items, got {n}")
    embs = _check_embeddings(embeddings, n)
    origin_n = l2_normalise(embs[origin_key])
    codes = {col: _codes(items, col) for _, col in LEVELS}
    rng = np.random.default_rng(seed)
    group_of, names, members_of = _groups(items, group_col)
    queries, allocation = _queries(n, max_queries, group_col, queries_floor, names, members_of, rng)

    scopes: list[tuple[str, np.ndarray, np.ndarray]] = [("overall", np.arange(n), np.ones(queries.size, bool))]
    query_group = group_of[queries]
    for i, (g, members) in enumerate(zip(names, members_of)):
        scopes.append((g, members, query_group == i))

    rows = []
    for name, emb in embs.items():
        rows += _variant_rows(name, emb, origin_n, queries, codes, ks, scopes, seed=seed,
                              max_clusters=max_clusters, nmi_max_items=nmi_max_items)
    order = ["variant", "scope", "n_items", "n_queries"]
    order += [f"top@{k}" for k in ks]
    order += [f"{s}@{k}" for s, _ in LEVELS for k in ks]
    order += [f"nmi_{c}" for _, c in LEVELS]
    table = pl.DataFrame(rows).select(order)
    return AlignmentReport(table=table, query_allocation=allocation)


def _pca_2d(x: np.ndarray) -> np.ndarray:
    x = l2_normalise(x).astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    return proj


def projection_plot(
    embeddings: dict[str, np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    *,
    max_points: int = 5_000,
    seed: int = 0,
) -> Path:
    """PNG with one 2-D PCA panel per variant, points coloured by ``labels`` (e.g. city)."""
    plt = pyplot()

    labels_arr = np.asarray([("" if v is None else str(v)) for v in labels], dtype=object)
    n = labels_arr.size
    embs = _check_embeddings(embeddings, n)
    if not embs:
        raise ValueError("projection_plot needs at least one embedding variant")
    sample = np.arange(n)
    if n > max_points:
        sample = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    uniq, code = np.unique(labels_arr[sample], return_inverse=True)
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(embs), figsize=(4.5 * len(embs), 4.5), squeeze=False)
    for ax, (name, emb) in zip(axes[0], embs.items()):
        xy = _pca_2d(emb[sample])
        ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(c % 20) for c in code], s=4, alpha=0.7,
                   linewidths=0)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    if uniq.size <= 20:
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=cmap(i % 20), label=str(u))
            for i, u in enumerate(uniq)
        ]
        axes[0][-1].legend(handles=handles, fontsize=6, loc="best", markerscale=0.8)
    return save(fig, path, dpi=110)
