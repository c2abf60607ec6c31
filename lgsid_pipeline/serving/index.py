"""Serving surfaces over the pipeline's tables: export, an in-memory index, and recommendations.

Plain polars / numpy / torch; the CLI (``lgsid export``, ``lgsid serve``, ``lgsid recommend``)
reads a pipeline home and passes the frames here.

- :func:`export_tables` writes the SID table (with its codebook version and the version of the
  embeddings each method was fitted on) and the serving cache as Parquet, CSV or JSON lines,
  plus ``manifest.json`` saying what they are. Every file is written to a temporary name,
  fsynced and renamed into place, the manifest last, so a reader never sees a half-written
  export and an interrupted export leaves the previous one whole.
- :class:`ServingIndex` answers the service's questions from memory: one item, the items behind
  a SID prefix, a user's cached top-K. Unknown ids come back as ``None`` (the service's 404),
  never as an exception.
- :func:`recommend` answers from the cache, or, for a user the cache does not hold (or when
  ``within_km`` asks for more local items than the cache has), by constrained beam search with
  the saved TIGER model; either way with the distance of each item from the user's last place.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from lgsid_pipeline.geo import haversine_km
from lgsid_pipeline.train_state import atomic_write_text, replace_durably, tmp_name

EXPORT_FORMATS = ("parquet", "csv", "jsonl")
EXPORT_VERSION = 1
SID_COLUMNS = ("item_id", "method", "sid", "sid_str", "codebook_version", "embedding_variant", "encoder_version",
               "city_key", "name", "lat", "lon")
TOPK_COLUMNS = ("user_id", "rank", "item_id", "sid", "sid_str", "score", "city_key")


class ServingError(ValueError):
    """A request that cannot be answered (unknown method, item or user; a bad prefix); the
    message says which."""


def sid_string(codes) -> str:
    return "/".join(str(int(c)) for c in codes)


def sid_export_frame(sids: pl.DataFrame, items: pl.DataFrame, manifest: dict, method: str | None = None) -> pl.DataFrame:
    """The SID table of the manifest's codebook version, one row per (item, method), with the
    embeddings each method was fitted on and the item's city, name and coordinates."""
    version = manifest.get("version")
    table = sids.filter(pl.col("codebook_version") == version) if version else sids
    have = sorted(table["method"].unique().to_list())
    if method is not None:
        if method not in have:
            raise ServingError(f"unknown method {method!r}; the SID table has {have}")
        table = table.filter(pl.col("method") == method)
    variants = manifest.get("variants", {})
    spec = pl.DataFrame({"method": list(variants),
                         "embedding_variant": [v.get("embedding_variant") for v in variants.values()],
                         "encoder_version": [v.get("encoder_version") for v in variants.values()]},
                        schema={"method": pl.Utf8, "embedding_variant": pl.Utf8, "encoder_version": pl.Utf8})
    extra = [c for c in ("name", "lat", "lon") if c in items.columns]
    out = (table.select("item_id", "method", pl.col("sid").cast(pl.List(pl.Int64)), "codebook_version", "city_key")
           .join(spec, on="method", how="left")
           .join(items.select("item_id", *extra).unique("item_id", keep="first"), on="item_id", how="left")
           .with_columns(pl.col("sid").list.eval(pl.element().cast(pl.Utf8)).list.join("/").alias("sid_str")))
    for c in ("name", "lat", "lon"):
        if c not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=pl.Utf8 if c == "name" else pl.Float64).alias(c))
    return out.select(SID_COLUMNS).sort("method", "item_id")


def topk_export_frame(topk: pl.DataFrame) -> pl.DataFrame:
    out = topk.with_columns(pl.col("sid").cast(pl.List(pl.Int64)))
    out = out.with_columns(pl.col("sid").list.eval(pl.element().cast(pl.Utf8)).list.join("/").alias("sid_str"))
    if "city_key" not in out.columns:
        out = out.with_columns(pl.lit(None, dtype=pl.Utf8).alias("city_key"))
    return out.select(TOPK_COLUMNS).sort("user_id", "rank")


def _write_frame(frame: pl.DataFrame, path: Path, fmt: str) -> str:
    """Write ``frame`` to ``path`` atomically (temp file, fsync, rename); its sha256."""
    tmp = tmp_name(path)
    try:
        if fmt == "parquet":
            frame.write_parquet(tmp)
        elif fmt == "csv":  # CSV has no list type: the SID travels as its "a/b/c" string only
            frame.drop([c for c, t in frame.schema.items() if isinstance(t, pl.List)]).write_csv(tmp)
        else:
            frame.write_ndjson(tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    replace_durably(tmp, path)
    return digest


def export_tables(to: str | Path, sids: pl.DataFrame, items: pl.DataFrame, manifest: dict,
                  topk: pl.DataFrame | None = None, *, fmt: str = "parquet", method: str | None = None,
                  source: str | None = None) -> dict:
    """Write ``sid_table.<fmt>`` (and ``user_topk.<fmt>`` when a cache is given) and
    ``manifest.json`` under ``to``; returns the manifest."""
    if fmt not in EXPORT_FORMATS:
        raise ServingError(f"unknown export format {fmt!r}; choose from {list(EXPORT_FORMATS)}")
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    ext = "csv" if fmt == "csv" else ("jsonl" if fmt == "jsonl" else "parquet")
    frame = sid_export_frame(sids, items, manifest, method)
    if frame.is_empty():
        raise ServingError(f"the SID table has no rows for codebook version {manifest.get('version')!r}: "
                           "materialize sid_table first")
    files = {"sid_table": {"file": f"sid_table.{ext}", "rows": frame.height, "columns": list(frame.columns)}}
    files["sid_table"]["sha256"] = _write_frame(frame, to / files["sid_table"]["file"], fmt)
    if topk is not None:
        cache = topk_export_frame(topk)
        if method is not None:
            cache = cache.filter(pl.col("item_id").is_in(frame["item_id"].implode()))
        files["user_topk"] = {"file": f"user_topk.{ext}", "rows": cache.height, "columns": list(cache.columns),
                              "users": cache["user_id"].n_unique()}
        files["user_topk"]["sha256"] = _write_frame(cache, to / files["user_topk"]["file"], fmt)
    methods = sorted(frame["method"].unique().to_list())
    variants = manifest.get("variants", {})
    out = {
        "export_version": EXPORT_VERSION, "format": fmt, "created_unix": time.time(), "source": source,
        "codebook_version": manifest.get("version"),
        "methods": {m: {"embedding_variant": variants.get(m, {}).get("embedding_variant"),
                        "encoder_version": variants.get(m, {}).get("encoder_version"),
                        "items": int((frame["method"] == m).sum())} for m in methods},
        "default_method": manifest.get("default_variant") if manifest.get("default_variant") in methods else methods[0],
        "files": files,
    }
    atomic_write_text(to / "manifest.json", json.dumps(out, indent=1))  # last: the export is whole once it exists
    return out


def read_export(path: str | Path) -> tuple[dict, pl.DataFrame, pl.DataFrame | None]:
    """(manifest, SID frame, cache frame or None) of an export folder; checks each file's sha256."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise ServingError(f"{path} is not an lgsid export (no manifest.json); write one with `lgsid export`")
    manifest = json.loads(mpath.read_text())
    frames = {}
    for name, spec in manifest["files"].items():
        f = path / spec["file"]
        if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != spec["sha256"]:
            raise ServingError(f"{f} is missing or does not match its manifest checksum; re-export")
        fmt = manifest["format"]
        df = pl.read_parquet(f) if fmt == "parquet" else pl.read_csv(f, infer_schema_length=0) if fmt == "csv" \
            else pl.read_ndjson(f)
        if fmt == "csv":
            df = df.with_columns(pl.col("sid_str").str.split("/").list.eval(pl.element().cast(pl.Int64)).alias("sid"))
            casts = {"lat": pl.Float64, "lon": pl.Float64, "rank": pl.Int32, "score": pl.Float64}
            df = df.with_columns([pl.col(c).cast(t) for c, t in casts.items() if c in df.columns])
        frames[name] = df
    return manifest, frames["sid_table"], frames.get("user_topk")


class ServingIndex:
    """In-memory lookups behind the HTTP service. Built once from an export (or the same frames
    from a home); every lookup is a dict access or one vectorised prefix filter."""

    def __init__(self, sids: pl.DataFrame, topk: pl.DataFrame | None = None, *, manifest: dict | None = None):
        self.manifest = manifest or {}
        self.sids = sids
        self.methods = sorted(sids["method"].unique().to_list())
        self.default_method = self.manifest.get("default_method") or (self.methods[0] if self.methods else None)
        self._items: dict[str, dict] = {}
        for row in sids.iter_rows(named=True):
            entry = self._items.setdefault(str(row["item_id"]), {
                "item_id": str(row["item_id"]), "name": row.get("name"), "city_key": row.get("city_key"),
                "lat": row.get("lat"), "lon": row.get("lon"), "codebook_version": row.get("codebook_version"),
                "sids": {}})
            entry["sids"][row["method"]] = {"sid": list(row["sid"]), "sid_str": row["sid_str"],
                                            "embedding_variant": row.get("embedding_variant"),
                                            "encoder_version": row.get("encoder_version")}
        self._by_method = {m: sids.filter(pl.col("method") == m) for m in self.methods}
        self._topk: dict[str, list[dict]] = {}
        if topk is not None:
            for (user,), rows in topk.sort("user_id", "rank").group_by("user_id", maintain_order=True):
                self._topk[str(user)] = rows.select("rank", "item_id", "sid_str", "score").to_dicts()

    def health(self) -> dict:
        return {"status": "ok", "items": len(self._items), "methods": self.methods,
                "users_cached": len(self._topk), "codebook_version": self.manifest.get("codebook_version")}

    def item(self, item_id: str) -> dict | None:
        return self._items.get(str(item_id))

    def prefix(self, text: str, method: str | None = None, limit: int = 100) -> dict:
        from lgsid_pipeline.serving.lookup import SIDLookupError, parse_prefix, with_prefix

        method = method or self.default_method
        if method not in self._by_method:
            raise ServingError(f"unknown method {method!r}; the SID table has {self.methods}")
        try:
            codes = parse_prefix(text)
            hit = with_prefix(self._by_method[method], codes, method)
        except SIDLookupError as exc:
            raise ServingError(str(exc)) from None
        return {"prefix": codes, "method": method, "items": hit.height,
                "shown": hit.head(limit).select("item_id", "sid_str", "name", "city_key").to_dicts()}

    def user_topk(self, user_id: str) -> list[dict] | None:
        return self._topk.get(str(user_id))


def recommend(user_id: str, *, k: int = 10, within_km: float | None = None, cache: pl.DataFrame | None = None,
              history: list[str] | None = None, items: pl.DataFrame | None = None,
              model_loader: Callable[[], tuple] | None = None) -> dict:
    """The user's top-``k``: from ``cache`` when it holds the user (and, with ``within_km``,
    at least ``k`` cached items that near), else by constrained beam search with the saved TIGER
    model (``model_loader() -> (model, codec, item_ids)``) over the user's ``history`` (item ids,
    oldest first). Distances are from the last history item; ``within_km`` keeps only items
    that near it (the local-life mode: the model's search is restricted to them)."""
    if k < 1:
        raise ServingError(f"k must be at least 1, got {k}")
    if within_km is not None and within_km <= 0:
        raise ServingError(f"--within-km must be positive, got {within_km}")
    history = [str(h) for h in (history or [])]
    coords = {}
    if items is not None and {"lat", "lon"} <= set(items.columns):
        for r in items.select(pl.col("item_id").cast(pl.Utf8), "lat", "lon").iter_rows():
            coords[r[0]] = (r[1], r[2])
    last = coords.get(history[-1]) if history else None
    if within_km is not None and (last is None or last[0] is None):
        raise ServingError(f"user {user_id!r}: --within-km needs the user's last place, and "
                           f"{'the user has no history' if not history else 'it has no coordinates'}")

    def km_of(item_id: str) -> float | None:
        c = coords.get(item_id)
        if last is None or c is None or c[0] is None or last[0] is None:
            return None
        return float(haversine_km(last[0], last[1], np.array([c[0]]), np.array([c[1]]))[0])

    rows = None
    if cache is not None:
        mine = cache.filter(pl.col("user_id").cast(pl.Utf8) == str(user_id)).sort("rank")
        if mine.height:
            rows = [{"item_id": r["item_id"], "sid": list(r["sid"]) if r.get("sid") is not None else None,
                     "score": r["score"], "km": km_of(r["item_id"])} for r in mine.iter_rows(named=True)]
            if within_km is not None:
                rows = [r for r in rows if r["km"] is not None and r["km"] <= within_km]
            if len(rows) < k and within_km is not None:
                rows = None  # not enough local items cached: search with the model
            else:
                rows = rows[:k]
    source = "cache"
    if rows is None:
        if model_loader is None:
            raise ServingError(f"user {user_id!r} is not in the serving cache and no saved TIGER model is available")
        model, codec, item_ids = model_loader()
        index = {iid: i for i, iid in enumerate(item_ids)}
        known = np.array([index[h] for h in history if h in index], dtype=np.int64)
        if known.size:  # the protocol's history: unknown items dropped, immediate repeats collapsed
            known = known[np.concatenate([[True], known[1:] != known[:-1]])]
        if known.size == 0:
            raise ServingError(f"user {user_id!r} is not in the serving cache and has no history item the model "
                               "knows; nothing to recommend from")
        candidates = None
        if within_km is not None:
            ll = [coords.get(i, (None, None)) for i in item_ids]
            lat = np.array([np.nan if c[0] is None else c[0] for c in ll], dtype=np.float64)
            lon = np.array([np.nan if c[1] is None else c[1] for c in ll], dtype=np.float64)
            dist = haversine_km(last[0], last[1], lat, lon)
            candidates = np.flatnonzero(np.nan_to_num(dist, nan=np.inf) <= within_km)
            candidates = candidates[candidates != known[-1]]
            if candidates.size == 0:
                raise ServingError(f"user {user_id!r}: no item lies within {within_km} km of the last place")
        from lgsid_pipeline.recommenders.tiger import recommend_history

        top, scores = recommend_history(model, codec, known, k, candidates=candidates, user_id=str(user_id))
        rows = [{"item_id": item_ids[i], "sid": codec.codes[i].tolist(), "score": float(s), "km": km_of(item_ids[i])}
                for i, s in zip(top.tolist(), scores.tolist()) if i >= 0]
        source = "model"
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    return {"user_id": str(user_id), "source": source, "k": k, "within_km": within_km,
            "last_item": history[-1] if history else None, "items": rows}
