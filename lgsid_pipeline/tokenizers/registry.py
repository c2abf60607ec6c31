"""The SID codebook registry: version numbering, fitting one version (every variant's tokenizer,
its unique SIDs and the manifest), the manifests and their history, the embedding-space guard
of a frozen codebook, and the stable merge that keeps every item's SID across refreshes.

``home`` is the pipeline's storage (``resources.LgsidHome``): this module uses only its
``current(asset)`` and ``artifact_dir(asset)``. Errors a user can act on are
:class:`CodebookError` (a ``ValueError``); the assets turn them into ``dagster.Failure``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ContextManager, Protocol

import numpy as np
import polars as pl

from lgsid_pipeline.tokenizers import load_tokenizer, make_tokenizer
from lgsid_pipeline.tokenizers.dedup import assign_unique, collision_figures, hub_codes, unique_sids
from lgsid_pipeline.tokenizers.diagnostics import tokenizer_diagnostics
from lgsid_pipeline.train_state import load_json

ASSET = "sid_codebook"  # the artefact folder of the versions, and the asset that writes them
MANIFEST = "manifest.json"
ASSIGNMENTS = "assignments.parquet"


class CodebookError(ValueError):
    """A codebook version cannot be read or used as asked (the message says what to do)."""


class CodebookHome(Protocol):
    def current(self, asset: str) -> Path | None: ...

    def artifact_dir(self, *parts: str) -> Path: ...


# --- versions and manifests -----------------------------------------------------------------
def next_version(previous: dict | None, now: datetime.datetime | None = None) -> tuple[int, str]:
    """``(number, version)`` of the version after ``previous`` (a manifest; None: the first):
    the number counts up from 1, the version is ``v<number>-<UTC time>``."""
    number = (previous["number"] + 1) if previous else 1
    now = now or datetime.datetime.now(datetime.UTC)
    return number, f"v{number}-{now.strftime('%Y%m%dT%H%M%S')}"


def manifest_path(home: CodebookHome) -> Path | None:
    """The current version's manifest file (None before the first codebook)."""
    current = home.current(ASSET)
    return None if current is None else current / MANIFEST


def read_manifest(home: CodebookHome) -> dict | None:
    """The current version's manifest (None before the first codebook); a damaged file is a
    :class:`CodebookError`."""
    path = manifest_path(home)
    if path is None or not path.exists():
        return None
    try:
        return load_json(path, "the SID codebook manifest")
    except ValueError as exc:
        raise CodebookError(f"{exc}; the codebook version folder is damaged: re-materialize sid_codebook with "
                            "refit=True (a new version) or restore the file") from None


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, default=str))
    return path


def manifest_history(home: CodebookHome) -> list[dict]:
    """Every codebook version's manifest under this home, oldest first (each file parsed once)."""
    manifests = [load_json(p / MANIFEST, "a SID codebook manifest")
                 for p in home.artifact_dir(ASSET).iterdir() if (p / MANIFEST).exists()]
    return sorted(manifests, key=lambda m: m["number"])


# --- fitting one version ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CodebookSettings:
    """What every variant of one version is fitted with (recorded in its manifest)."""

    codebook_sizes: list[int]
    levels: int
    seed: int
    dedup: str
    dedup_order: str
    hub_share: float
    default_variant: str


# variant name -> (X, the distinct encoder versions of its rows, the embedding variant used)
Embeddings = Callable[[str], tuple[np.ndarray, list[str], str]]


def _checked_embeddings(name: str, embeddings: Embeddings) -> tuple[np.ndarray, list[str], str]:
    """The variant's embeddings; they must come from one encoder version (one space)."""
    X, enc_versions, emb_variant = embeddings(name)
    if len(enc_versions) > 1:
        raise CodebookError(f"{name}: the {emb_variant!r} item embeddings come from {len(enc_versions)} encoder "
                            f"versions {enc_versions} (some cities still hold embeddings from an older adapter); "
                            "re-materialize item_embeddings for every city before fitting a codebook "
                            "(`lgsid materialize --refit` does, in order)")
    return X, enc_versions, emb_variant


def fit_variant(name: str, method: str, params: dict, catalog: pl.DataFrame, embeddings: Embeddings,
                settings: CodebookSettings, out_dir: Path, *, popularity: np.ndarray | None,
                order_key: Any, timed: Callable[[str], ContextManager] | None = None
                ) -> tuple[dict, dict, pl.DataFrame]:
    """Fit one variant's tokenizer on every catalogue item, make its SIDs unique (hub codes
    first when ``hub_share > 0``) and save it under ``out_dir / name``. Returns its
    diagnostics, its manifest entry and its assignments (item_id, city_key, method, sid, raw_codes)."""
    X, enc_versions, emb_variant = _checked_embeddings(name, embeddings)
    tok = make_tokenizer(method, codebook_sizes=list(settings.codebook_sizes), levels=settings.levels,
                         seed=settings.seed, **params)
    with timed(f"fit_{name}") if timed is not None else contextlib.nullcontext():
        codes = tok.fit(X, catalog).transform(X, catalog)
    sid_codes, hubs = hub_codes(codes, popularity, settings.hub_share) if settings.hub_share > 0 else (codes, None)
    sids, info = unique_sids(sid_codes, settings.dedup, tokenizer=tok, X=X, items=catalog, order_key=order_key)
    if hubs is not None:
        info["hubs"] = int(hubs.size)
    tok.save(out_dir / name)
    # the tokenizer's own codes describe its codebooks; the SIDs carry the hub codes
    diag = tokenizer_diagnostics(tok, X, catalog, codes, dedup_codes=sids)
    figures = collision_figures(sid_codes, sids)
    diag["collisions"] = figures
    entry = {"method": method, "embedding_variant": emb_variant,
             "encoder_version": enc_versions[0] if enc_versions else None,
             **{k: v for k, v in info.items()}, **figures}
    assignments = pl.DataFrame({
        "item_id": catalog["item_id"], "city_key": catalog["city_key"], "method": name,
        "sid": pl.Series(sids.tolist(), dtype=pl.List(pl.Int32)),
        "raw_codes": pl.Series(sid_codes.tolist(), dtype=pl.List(pl.Int32)),
    })
    return diag, entry, assignments


def build_manifest(number: int, version: str, settings: CodebookSettings, variants: dict, diags: dict,
                   n_items: int, identical_prompt_share: float) -> dict:
    """The manifest of one version: its number, settings, each variant's entry and the summary
    figures the asset checks compare across versions."""
    return {"version": version, "number": number, "variants": variants,
            "codebook_sizes": list(settings.codebook_sizes), "levels": settings.levels, "n_items": n_items,
            "dedup": settings.dedup, "dedup_order": settings.dedup_order, "hub_share": settings.hub_share,
            "seed": settings.seed, "default_variant": settings.default_variant,
            "fitted_on": "every item of the catalogue (all cities)",
            "identical_prompt_share": identical_prompt_share,
            "coverage_q90": {m: [lv["coverage"]["q90"] for lv in d["per_level"]] for m, d in diags.items()},
            "dead_codes": {m: [lv["dead"] for lv in d["per_level"]] for m, d in diags.items()},
            "collision_rate_before": {m: d["collision_rate_before"] for m, d in diags.items()}}


def fit_codebook_version(out_dir: Path, number: int, version: str, catalog: pl.DataFrame,
                         variants: dict[str, tuple[str, dict]], embeddings: Embeddings, settings: CodebookSettings,
                         *, popularity: np.ndarray | None, order_key: Any, identical_prompt_share: float,
                         timed: Callable[[str], ContextManager] | None = None) -> tuple[dict, dict]:
    """Fit every variant (name -> (tokenizer method, its extra hyper-parameters)), in order, into
    ``out_dir``: the tokenizers, ``assignments.parquet`` and ``manifest.json``. Returns
    ``(manifest, diagnostics per variant)``; publishing the version is the caller's step."""
    diags, entries, assignments = {}, {}, []
    for name, (method, params) in variants.items():
        diags[name], entries[name], frame = fit_variant(name, method, params, catalog, embeddings, settings,
                                                        out_dir, popularity=popularity, order_key=order_key,
                                                        timed=timed)
        assignments.append(frame)
    pl.concat(assignments).write_parquet(out_dir / ASSIGNMENTS)
    manifest = build_manifest(number, version, settings, entries, diags, catalog.height, identical_prompt_share)
    write_manifest(out_dir, manifest)
    return manifest, diags


# --- stable SIDs for the per-city table -------------------------------------------------------
def check_embedding_space(name: str, spec: dict, version: str, city: str, encoder_versions: pl.Series) -> None:
    """New items are coded with the frozen codebook only in the embedding space it was fitted
    in: their embeddings' encoder version must be the one the manifest records (manifests
    written before that field existed are not checked)."""
    fitted = spec.get("encoder_version")
    if fitted is None:
        return
    if encoder_versions.null_count():
        raise CodebookError(f"city {city}: {encoder_versions.null_count()} new items have no "
                            f"{spec['embedding_variant']!r} embedding: materialize item_embeddings for {city} first")
    other = sorted(set(encoder_versions.to_list()) - {fitted})
    if other:
        raise CodebookError(
            f"city {city}, method {name}: new items' {spec['embedding_variant']!r} embeddings come from encoder "
            f"{other}, but codebook {version} was fitted on embeddings from encoder {fitted!r}; coding them with "
            "the frozen codebook would mix two embedding spaces. Refit the codebook on the current embeddings "
            "(`lgsid materialize --refit`, or let the refit chain finish)")


def known_sids(fitted: pl.DataFrame, previous: pl.DataFrame | None, variants) -> dict[str, pl.DataFrame]:
    """Per variant, the (item_id, sid) pairs already given under the current version: the fitted
    catalogue's assignments, then items assigned incrementally earlier (in any city) from the
    previous table under this version. An item in both keeps its fitted SID."""
    known = {}
    for name in variants:
        k = fitted.filter(pl.col("method") == name).select("item_id", "sid")
        if previous is not None and previous.height:
            # Items assigned incrementally earlier (in any city) keep their SID.
            k = pl.concat([k, previous.filter(pl.col("method") == name).select("item_id", "sid")]) \
                  .unique("item_id", keep="first")
        known[name] = k
    return known


def _new_sids(name: str, spec: dict, version: str, city: str, new: pl.DataFrame, known: pl.DataFrame,
              embeddings: Callable[[], pl.DataFrame], tokenizer: Callable[[str], Any]) -> pl.DataFrame:
    """(item_id, sid) for the city's new items: their raw codes from the frozen codebook, in its
    embedding space, and a dedup digit that clashes with no SID in ``known``."""
    emb = embeddings().filter(pl.col("variant") == spec["embedding_variant"])
    check_embedding_space(name, spec, version, city,
                          new.select("item_id").join(emb, on="item_id", how="left")["encoder_version"])
    X = np.asarray(new.select("item_id").join(emb, on="item_id", how="left", maintain_order="left")
                   ["embedding"].to_list(), dtype=np.float32)
    codes = tokenizer(name).transform(X, new)
    existing = np.asarray(known["sid"].to_list(), dtype=np.int32).reshape(-1, codes.shape[1] + 1)
    sids = assign_unique(codes, existing)
    return pl.DataFrame({"item_id": new["item_id"], "sid": pl.Series(sids.tolist(), dtype=pl.List(pl.Int32))})


def stable_sid_table(item_catalog: pl.DataFrame, cities: list[str], manifest: dict, fitted: pl.DataFrame,
                     previous: pl.DataFrame | None, codebook_dir: Path,
                     read_embeddings: Callable[[], pl.DataFrame]) -> tuple[pl.DataFrame, dict[str, dict]]:
    """The SID table of ``cities`` under the manifest's version, and per city ``{"items",
    "codebook_version", "<variant>.incremental"}``.

    Items with a SID under this version (:func:`known_sids`) keep it exactly; the others are
    coded with the frozen codebook (embeddings read once, on the first new item) and get a
    dedup digit that clashes with no SID taken so far. Cities go in turn, so a city's new SIDs
    are taken before the next city assigns its own. Known items that are no longer in the
    catalogue are left out of the table, and their SIDs stay taken."""
    version = manifest["version"]
    known = known_sids(fitted, previous, manifest["variants"])
    by_city = item_catalog.partition_by("city_key", as_dict=True)
    embeddings = functools.cache(read_embeddings)
    tokenizer = functools.cache(lambda name: load_tokenizer(codebook_dir / name))
    frames, per_city = [], {}
    for city in cities:  # in turn: a city's new SIDs are taken before the next city assigns its own
        catalog = by_city.get((city,), item_catalog.clear()).sort("item_id")
        meta = {"items": catalog.height, "codebook_version": version}
        for name, spec in manifest["variants"].items():
            mine = catalog.select("item_id").join(known[name], on="item_id", how="left")
            new = catalog.filter(pl.col("item_id").is_in(mine.filter(pl.col("sid").is_null())["item_id"].to_list()))
            if new.height:
                added = _new_sids(name, spec, version, city, new, known[name], embeddings, tokenizer)
                mine = mine.filter(pl.col("sid").is_not_null()).vstack(added)
                known[name] = pl.concat([known[name], added])
            meta[f"{name}.incremental"] = new.height
            frames.append(mine.with_columns(pl.lit(name).alias("method"), pl.lit(version).alias("codebook_version"),
                                            pl.col("item_id").is_in(new["item_id"].to_list()).alias("incremental"),
                                            pl.lit(city).alias("city_key")))
        per_city[city] = meta
    out = pl.concat(frames).select("item_id", "method", "codebook_version", "sid", "incremental", "city_key")
    return out, per_city
