"""Look up SIDs: one item's SID per method and its neighbours, or the items behind a SID prefix.

Plain polars / numpy over the pipeline's tables (``sid_table``, ``item_catalog``,
``item_embeddings``); ``lgsid sid`` prints what these return.

- Neighbours in SID space: the items that share the longest SID prefix with the item, longest
  first (ties by the smallest difference of the first differing digit, then by item_id). This
  is what a generative recommender sees: two items with a long common prefix are one beam
  step apart.
- Neighbours in embedding space: cosine similarity of the embeddings the method was fitted
  on (the manifest's ``embedding_variant``), over every item of that variant: one (N, d)
  matrix-vector product, no N x N matrix.
- Every neighbour carries its great-circle distance to the item in km.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from lgsid_pipeline.geo import haversine_km


class SIDLookupError(ValueError):
    """A lookup that cannot be answered (unknown item, method or prefix); the message says why."""


def parse_prefix(text: str) -> list[int]:
    """``"12/7"`` (or ``"12,7"``, ``"12 7"``) -> [12, 7]."""
    parts = [p for p in text.replace(",", "/").replace(" ", "/").split("/") if p != ""]
    try:
        out = [int(p) for p in parts]
    except ValueError:
        raise SIDLookupError(f"prefix {text!r}: codes must be integers separated by '/', e.g. 12/7") from None
    if not out or any(c < 0 for c in out):
        raise SIDLookupError(f"prefix {text!r}: give one or more non-negative codes, e.g. 12/7")
    return out


def _methods(sids: pl.DataFrame, method: str | None) -> list[str]:
    have = sorted(sids["method"].unique().to_list())
    if method is None:
        return have
    if method not in have:
        raise SIDLookupError(f"unknown method {method!r}; the SID table has {have}")
    return [method]


def _with_coords(frame: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    cols = [c for c in ("item_id", "name", "city", "city_key", "lat", "lon") if c in items.columns]
    extra = [c for c in cols if c != "item_id" and c not in frame.columns]
    return frame.join(items.select(["item_id", *extra]), on="item_id", how="left", maintain_order="left")


def _km(item_row: dict, frame: pl.DataFrame) -> np.ndarray:
    if item_row.get("lat") is None or "lat" not in frame.columns:
        return np.full(frame.height, np.nan)
    return haversine_km(item_row["lat"], item_row["lon"], frame["lat"].to_numpy(), frame["lon"].to_numpy())


def sid_neighbours(codes: np.ndarray, ids: list[str], i: int, k: int) -> list[tuple[int, int, int]]:
    """Top-``k`` (index, shared prefix length, first-difference gap) of the rows nearest row ``i``
    of ``codes`` (items, L) in SID space; vectorised over items."""
    same = codes == codes[i]
    shared = np.where(same.all(1), codes.shape[1], np.argmin(same, axis=1))
    col = np.minimum(shared, codes.shape[1] - 1)
    gap = np.abs(codes[np.arange(codes.shape[0]), col] - codes[i, col])
    order = np.lexsort((np.asarray(ids, dtype=object).astype(str), gap, -shared))
    order = order[order != i][:k]
    return [(int(j), int(shared[j]), int(gap[j])) for j in order]


def item_report(item_id: str, sids: pl.DataFrame, items: pl.DataFrame, embeddings: pl.DataFrame | None,
                variants: dict[str, dict], *, method: str | None = None, k: int = 5) -> dict:
    """Everything ``lgsid sid ITEM_ID`` shows, as plain data."""
    item_id = str(item_id)
    row = items.filter(pl.col("item_id") == item_id)
    if row.is_empty():
        raise SIDLookupError(f"item {item_id!r} is not in the item catalogue")
    me = row.row(0, named=True)
    out = {"item_id": item_id, **{c: me.get(c) for c in ("name", "city", "city_key", "lat", "lon") if c in me},
           "methods": {}}
    for m in _methods(sids, method):
        table = sids.filter(pl.col("method") == m).sort("item_id")
        ids = table["item_id"].to_list()
        if item_id not in ids:
            out["methods"][m] = {"sid": None, "note": "no SID for this item under this method"}
            continue
        codes = np.asarray(table["sid"].to_list(), dtype=np.int64)
        i = ids.index(item_id)
        near = sid_neighbours(codes, ids, i, k)
        nb = _with_coords(pl.DataFrame({"item_id": [ids[j] for j, _, _ in near]}), items)
        km = _km(me, nb)
        entry = {"sid": codes[i].tolist(), "codebook_version": table["codebook_version"][i],
                 "sid_neighbours": [{"item_id": ids[j], "sid": codes[j].tolist(), "shared_prefix": s,
                                     "name": nb["name"][n] if "name" in nb.columns else None,
                                     "km": float(km[n])} for n, (j, s, _) in enumerate(near)]}
        variant = (variants.get(m) or {}).get("embedding_variant")
        if embeddings is not None and variant is not None:
            entry["embedding_variant"] = variant
            entry["embedding_neighbours"] = embedding_neighbours(item_id, embeddings, items, variant, me, k)
        out["methods"][m] = entry
    return out


def embedding_neighbours(item_id: str, embeddings: pl.DataFrame, items: pl.DataFrame, variant: str,
                         me: dict, k: int) -> list[dict]:
    emb = embeddings.filter(pl.col("variant") == variant).select("item_id", "embedding").sort("item_id")
    ids = emb["item_id"].to_list()
    if item_id not in ids:
        return []
    X = np.asarray(emb["embedding"].to_list(), dtype=np.float32)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    i = ids.index(item_id)
    sim = X @ X[i]
    sim[i] = -np.inf
    top = np.argsort(-sim, kind="stable")[:k]
    nb = _with_coords(pl.DataFrame({"item_id": [ids[j] for j in top]}), items)
    km = _km(me, nb)
    return [{"item_id": ids[j], "cosine": float(sim[j]), "name": nb["name"][n] if "name" in nb.columns else None,
             "km": float(km[n])} for n, j in enumerate(top)]


def with_prefix(table: pl.DataFrame, prefix: list[int], method: str) -> pl.DataFrame:
    """The rows of one method's SID ``table`` whose SID starts with ``prefix``, by SID then item."""
    depth = len(table["sid"][0]) if table.height else 0
    if len(prefix) > depth:
        raise SIDLookupError(f"prefix {prefix} has {len(prefix)} codes; method {method!r} has {depth}-code SIDs")
    return (table.filter(pl.col("sid").list.head(len(prefix)) == pl.lit(prefix, dtype=table.schema["sid"]))
            .sort("sid", "item_id"))


def prefix_report(prefix: list[int], sids: pl.DataFrame, items: pl.DataFrame, *, method: str | None = None,
                  limit: int = 50) -> dict:
    """The items whose SID starts with ``prefix``, per method, with their cities."""
    out = {"prefix": prefix, "methods": {}}
    for m in _methods(sids, method):
        hit = _with_coords(with_prefix(sids.filter(pl.col("method") == m), prefix, m)
                           .select("item_id", "sid", "codebook_version"), items)
        cities = (hit.group_by("city_key").len().sort("len", descending=True)
                  if "city_key" in hit.columns and hit.height else pl.DataFrame({"city_key": [], "len": []}))
        out["methods"][m] = {
            "items": hit.height,
            "cities": {r["city_key"]: r["len"] for r in cities.iter_rows(named=True)},
            "shown": [{"item_id": r["item_id"], "sid": list(r["sid"]), "name": r.get("name"), "city": r.get("city"),
                       "city_key": r.get("city_key")} for r in hit.head(limit).iter_rows(named=True)],
        }
    return out
