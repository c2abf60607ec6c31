"""Tokenization assets: versioned SID codebooks fitted over all cities (HGIT = Eq. 9-16, and the
Res-KMeans / RQ-VAE baselines) and the per-city SID table with stable IDs across refreshes."""

import datetime
import inspect
import json
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from assets.metadata import Timer, config_json, image
from assets.reads import load_embeddings_and_versions, manifest_path, read_manifest
from assets.partitions import CITY_BACKFILL, DELTA, TRAINING_POOL, city_partitions, emit, run_cities
from lgsid_pipeline.train_state import load_json
from lgsid_pipeline.tokenizers import default_codebook_sizes, load_tokenizer, make_tokenizer
from lgsid_pipeline.tokenizers.hgit import ADMIN_COLUMNS, HGITTokenizer
from lgsid_pipeline.alignment.prompts import build_prompts
from lgsid_pipeline.tokenizers.dedup import (DEDUP_ORDERS, DEDUP_STRATEGIES, assign_unique, collision_figures, collision_rate,
                                             dedup_order_key, hub_codes, unique_sids)
from lgsid_pipeline.tokenizers.diagnostics import (diagnostics_markdown, plot_codebook_usage, plot_coverage,
                                                   tokenizer_diagnostics)
from resources import EncoderResource, LgsidHome

GROUP = "tokenization"
OWNERS = ["team:lgsid-ml"]

# Variant name -> (tokenizer method, embedding variant). "lgsid" is HGIT on G-DPO-aligned
# embeddings, the paper's method. The names without a suffix fit on the aligned embeddings
# when present; "_origin" names fit on the encoder's own (origin) embeddings, so every
# baseline can be compared on either. The manifest records which embeddings each used.
VARIANTS = {
    "lgsid": ("hgit", "aligned"),
    "hgit_origin": ("hgit", "origin"),
    "lgsid_geo_last": ("hgit_geo_last", "aligned"),
    "hgit_geo_last_origin": ("hgit_geo_last", "origin"),
    "res_kmeans": ("res_kmeans", "aligned"),
    "res_kmeans_origin": ("res_kmeans", "origin"),
    "rqvae": ("rqvae", "aligned"),
    "rqvae_origin": ("rqvae", "origin"),
    "geo_prefix": ("geo_prefix", "origin"),
    "random_id": ("random_id", "origin"),
}
# what the demo fits and evaluates
DEFAULT_VARIANTS = ["lgsid", "hgit_origin", "hgit_geo_last_origin", "res_kmeans", "rqvae"]
# The method a serving system should read from sid_table (recorded in the manifest): HGIT with
# content levels first and a geographic last level, on origin embeddings. In the SID shootout on
# gowalla_nyc (1,500 TIGER steps, 3 seeds with the tokenizer reseeded per seed, the paper's
# prompt; benchmarks/results/shootout/gowalla_nyc_1500steps_3seeds.json) the validation pick is
# the same tokenizer on G-DPO-aligned embeddings, +0.002 Hit@10 (n.s.) over this one, and those
# embeddings came from the oracle reward (reward_source="oracle"), not the pipeline's default;
# the best baseline (geo_prefix) is 0.003 (n.s.) below it. So the default stays on origin
# embeddings, which every pipeline run has.
DEFAULT_SID_VARIANT = "hgit_geo_last_origin"
HGIT_METHODS = ("hgit", "hgit_geo_last")

_HGIT = inspect.signature(HGITTokenizer).parameters  # Eq. 9-16 defaults live in the core


class CodebookConfig(dg.Config):
    variants: list[str] = Field(default=list(DEFAULT_VARIANTS),
                                description=f"Which tokenizers to fit, of {list(VARIANTS)}")
    default_variant: str | None = Field(default=None, description="The variant sid_table ships as its default "
                                        f"(recorded in the manifest). None: {DEFAULT_SID_VARIANT!r} when it is "
                                        "fitted, else the first fitted variant.")
    levels: int = Field(default=_HGIT["levels"].default, description="Code length L before the dedup digit.")
    codebook_sizes: list[int] | None = Field(default=None, description="Per-level sizes; None: 256 per level, "
                                                                      "capped at N/8 for small catalogues.")
    dedup: Literal[DEDUP_STRATEGIES] = Field(default="append", description="append (dedup digit) | greedy (next-best code, then digit)")
    dedup_order: Literal[DEDUP_ORDERS] = Field(default="item_id", description=f"Order of the dedup digit inside a bucket, of "
                                                            f"{list(DEDUP_ORDERS)} (popularity: visits in "
                                                            "user_interactions).")
    hub_share: float = Field(default=0.0, ge=0.0, lt=1.0,
                             description="Share of the items, most visited first (user_interactions), that get "
                                         "ID-like SIDs of their own: a new first-level code each, zeros below "
                                         "(tokenizers.dedup.hub_codes). 0: none.")
    w_admin: float = Field(default=_HGIT["w_admin"].default, description="Eq. 9 weight of the admin block (HGIT variants).")
    w_geo: float = Field(default=_HGIT["w_geo"].default, description="Eq. 9 weight of the geographic block (HGIT variants).")
    w_cat: float = Field(default=_HGIT["w_cat"].default, description="Eq. 9 weight of the category block (HGIT).")
    w_brand: float = Field(default=_HGIT["w_brand"].default, description="Eq. 9 weight of the brand block (HGIT).")
    lambda_reg: float = Field(default=_HGIT["lambda_reg"].default, description="Eq. 16 weight of the usage regulariser (HGIT).")
    usage_temperature: float = Field(default=_HGIT["usage_temperature"].default, description="Soft-usage temperature of Eq. 14 (HGIT).")
    admin_columns: list[str] = Field(default=list(ADMIN_COLUMNS),
                                     description="The admin hierarchy of Eq. 9, coarse to fine (HGIT variants).")
    refit: bool = Field(default=False, description="Refit even if a codebook exists (bumps the version). The "
                                                   "refit (lgsid materialize --refit, the refit chain) sets this.")
    seed: int = 0


def check_embedding_space(name: str, spec: dict, version: str, city: str, encoder_versions: pl.Series) -> None:
    """New items are coded with the frozen codebook only in the embedding space it was fitted
    in: their embeddings' encoder version must be the one the manifest records (manifests
    written before that field existed are not checked)."""
    fitted = spec.get("encoder_version")
    if fitted is None:
        return
    if encoder_versions.null_count():
        raise dg.Failure(f"city {city}: {encoder_versions.null_count()} new items have no "
                         f"{spec['embedding_variant']!r} embedding: materialize item_embeddings for {city} first")
    other = sorted(set(encoder_versions.to_list()) - {fitted})
    if other:
        raise dg.Failure(
            f"city {city}, method {name}: new items' {spec['embedding_variant']!r} embeddings come from encoder "
            f"{other}, but codebook {version} was fitted on embeddings from encoder {fitted!r}; coding them with "
            "the frozen codebook would mix two embedding spaces. Refit the codebook on the current embeddings "
            "(`lgsid materialize --refit`, or let the refit chain finish)")


def manifest_history(home: LgsidHome) -> list[dict]:
    """Every codebook version's manifest under this home, oldest first (each file parsed once)."""
    manifests = [load_json(p / "manifest.json", "a SID codebook manifest")
                 for p in home.artifact_dir("sid_codebook").iterdir() if (p / "manifest.json").exists()]
    return sorted(manifests, key=lambda m: m["number"])


def _no_codebook() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, metadata={"problem": "no codebook"})


@dg.asset(
    pool=TRAINING_POOL,
    group_name=GROUP, owners=OWNERS, kinds={"torch", "scikit-learn", "safetensors"},
    deps=[dg.AssetDep("item_embeddings"), dg.AssetDep("item_catalog")],
    description="Versioned SID codebooks fitted over all cities so a SID means the same everywhere: LGSID "
                "(HGIT on aligned embeddings: geographic first layer Eq. 9, residual layers Eq. 10-12, loss "
                "Eq. 13-16), HGIT on origin embeddings, Res-KMeans and RQ-VAE. Refits only when asked "
                "(refit=True, weekly job); otherwise the frozen version stays. "
                "Core: lgsid_pipeline/tokenizers/",
)
def sid_codebook(context: dg.AssetExecutionContext, config: CodebookConfig, home: LgsidHome,
                 encoder: EncoderResource) -> dg.MaterializeResult:
    previous = read_manifest(home)
    if previous is not None and not config.refit and set(config.variants) <= set(previous["variants"]):
        return dg.MaterializeResult(metadata={
            "version": previous["version"], "refit": False,
            "note": "codebook frozen: existing version kept (set refit=True to refit)",
        })
    timer = Timer()
    catalog = home.read("item_catalog").sort("city_key", "item_id")
    emb = home.scan("item_embeddings")  # only the variant column: the vectors stay on disk
    if emb is None:
        raise dg.Failure("no item_embeddings table: materialize item_embeddings first")
    available = set(emb.select("variant").unique().collect()["variant"].to_list())
    n = catalog.height
    sizes = config.codebook_sizes or default_codebook_sizes(n, config.levels)
    for name in config.variants:
        if name not in VARIANTS:
            raise dg.Failure(f"unknown tokenizer variant {name!r}; choose from {list(VARIANTS)}")
    default_variant = config.default_variant or (
        DEFAULT_SID_VARIANT if DEFAULT_SID_VARIANT in config.variants else config.variants[0])
    if default_variant not in config.variants:
        raise dg.Failure(f"default_variant {default_variant!r} is not among the fitted variants {config.variants}")
    if config.dedup_order not in DEDUP_ORDERS:
        raise dg.Failure(f"unknown dedup_order {config.dedup_order!r}; choose from {list(DEDUP_ORDERS)}")
    popularity = None
    if config.dedup_order == "popularity" or config.hub_share > 0:
        visits = home.read("user_interactions").group_by("item_id").agg(pl.len().alias("n"))
        popularity = catalog.select("item_id").join(visits, on="item_id", how="left", maintain_order="left")["n"] \
            .fill_null(0).to_numpy()
    order_key = dedup_order_key(catalog, config.dedup_order, popularity)
    prompt_floor = collision_figures(np.zeros((n, 1), dtype=np.int64), prompts=build_prompts(catalog, template=encoder.template()))
    hgit_params = {"w_admin": config.w_admin, "w_geo": config.w_geo, "lambda_reg": config.lambda_reg,
                   "usage_temperature": config.usage_temperature, "admin_columns": list(config.admin_columns)}
    number = (previous["number"] + 1) if previous else 1
    version = f"v{number}-{datetime.datetime.now(datetime.UTC).strftime('%Y%m%dT%H%M%S')}"
    out_dir = home.artifact_dir("sid_codebook", version)
    diags, variants, assignments = {}, {}, []
    for name in config.variants:
        method, emb_variant = VARIANTS[name]
        if emb_variant not in available:
            context.log.warning(f"{name}: no {emb_variant!r} embeddings, using origin")
            emb_variant = "origin"
        X, enc_versions = load_embeddings_and_versions(home, emb_variant, catalog)
        if len(enc_versions) > 1:
            raise dg.Failure(f"{name}: the {emb_variant!r} item embeddings come from {len(enc_versions)} encoder "
                             f"versions {enc_versions} (some cities still hold embeddings from an older adapter); "
                             "re-materialize item_embeddings for every city before fitting a codebook "
                             "(`lgsid materialize --refit` does, in order)")
        params = {}
        if method in HGIT_METHODS:
            params = dict(hgit_params)
            if method == "hgit":
                params.update(w_cat=config.w_cat, w_brand=config.w_brand)
        tok = make_tokenizer(method, codebook_sizes=list(sizes), levels=config.levels, seed=config.seed, **params)
        with timer(f"fit_{name}"):
            codes = tok.fit(X, catalog).transform(X, catalog)
        sid_codes, hubs = hub_codes(codes, popularity, config.hub_share) if config.hub_share > 0 else (codes, None)
        sids, info = unique_sids(sid_codes, config.dedup, tokenizer=tok, X=X, items=catalog, order_key=order_key)
        if hubs is not None:
            info["hubs"] = int(hubs.size)
        tok.save(out_dir / name)
        # the tokenizer's own codes describe its codebooks; the SIDs carry the hub codes
        diags[name] = tokenizer_diagnostics(tok, X, catalog, codes, dedup_codes=sids)
        figures = collision_figures(sid_codes, sids)
        diags[name]["collisions"] = figures
        variants[name] = {"method": method, "embedding_variant": emb_variant,
                          "encoder_version": enc_versions[0] if enc_versions else None,
                          **{k: v for k, v in info.items()}, **figures}
        assignments.append(pl.DataFrame({
            "item_id": catalog["item_id"], "city_key": catalog["city_key"], "method": name,
            "sid": pl.Series(sids.tolist(), dtype=pl.List(pl.Int32)),
            "raw_codes": pl.Series(sid_codes.tolist(), dtype=pl.List(pl.Int32)),
        }))
    pl.concat(assignments).write_parquet(out_dir / "assignments.parquet")
    manifest = {"version": version, "number": number, "variants": variants, "codebook_sizes": list(sizes),
                "levels": config.levels, "n_items": n, "dedup": config.dedup, "dedup_order": config.dedup_order,
                "hub_share": config.hub_share, "seed": config.seed, "default_variant": default_variant,
                "fitted_on": "every item of the catalogue (all cities)",
                "identical_prompt_share": prompt_floor["identical_prompt_share"],
                "coverage_q90": {m: [lv["coverage"]["q90"] for lv in d["per_level"]] for m, d in diags.items()},
                "dead_codes": {m: [lv["dead"] for lv in d["per_level"]] for m, d in diags.items()},
                "collision_rate_before": {m: d["collision_rate_before"] for m, d in diags.items()}}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    home.publish("sid_codebook", out_dir)
    plots = home.artifact_dir("plots")
    cov = plot_coverage(diags, plots / "token_coverage.png")
    use = plot_codebook_usage(diags, plots / "codebook_usage.png")
    meta = {f"{m}.recon_rel": float(d["recon_rel"]) for m, d in diags.items()}
    meta.update({f"{m}.collision_rate_before": float(d["collision_rate_before"]) for m, d in diags.items()})
    meta.update({f"{m}.{k}": v for m, d in diags.items() for k, v in d["collisions"].items()
                 if k in ("max_digit", "bucket_size_q50", "bucket_size_q90", "bucket_size_q99")})
    meta.update({f"{m}.hubs": v["hubs"] for m, v in variants.items() if "hubs" in v})
    meta["identical_prompt_share"] = float(prompt_floor["identical_prompt_share"])
    meta["default_variant"] = default_variant
    return dg.MaterializeResult(metadata={
        "version": version, "refit": True, "config": config_json(config), "items": n,
        "codebook_sizes": "x".join(map(str, sizes)), "diagnostics": dg.MetadataValue.md(diagnostics_markdown(diags)),
        "token_coverage": image(cov, "token coverage"), "codebook_usage": image(use, "codebook usage"),
        "path": dg.MetadataValue.path(str(out_dir)), **meta, **timer.metadata(),
    })


@dg.asset_check(asset="sid_codebook", description="Share of items whose raw code tuple collides (before "
                "dedup) stays below 50% for every method; the dedup step resolves the rest.")
def sid_collision_rate(home: LgsidHome) -> dg.AssetCheckResult:
    manifest = read_manifest(home)
    if manifest is None:
        return _no_codebook()
    rates = manifest["collision_rate_before"]
    return dg.AssetCheckResult(passed=all(r < 0.5 for r in rates.values()),
                               severity=dg.AssetCheckSeverity.WARN, metadata={k: float(v) for k, v in rates.items()})


@dg.asset_check(asset="sid_codebook", description="Dead codes (never used) stay below half of each level's "
                "codebook; many dead codes mean the codebook is too large or collapsed.")
def sid_dead_codes(home: LgsidHome) -> dg.AssetCheckResult:
    manifest = read_manifest(home)
    if manifest is None:
        return _no_codebook()
    sizes = manifest["codebook_sizes"]
    worst = {m: max(d / k for d, k in zip(dead, sizes)) for m, dead in manifest["dead_codes"].items()}
    return dg.AssetCheckResult(passed=all(w < 0.5 for w in worst.values()), severity=dg.AssetCheckSeverity.WARN,
                               metadata={f"{m}.max_dead_share": float(w) for m, w in worst.items()})


@dg.asset_check(asset="sid_codebook", description="Token coverage (items per token at the 90% quantile, level 1) "
                "does not drop by more than half against the previous codebook version.")
def sid_coverage_drop(home: LgsidHome) -> dg.AssetCheckResult:
    manifest = read_manifest(home)
    if manifest is None:
        return _no_codebook()
    prev = [m for m in manifest_history(home) if m["number"] < manifest["number"]]
    if not prev:
        return dg.AssetCheckResult(passed=True, metadata={"note": "first version"})
    old = prev[-1]["coverage_q90"]
    drops = {m: manifest["coverage_q90"][m][0] / max(old[m][0], 1e-9)
             for m in manifest["coverage_q90"] if m in old}
    return dg.AssetCheckResult(passed=all(r >= 0.5 for r in drops.values()), severity=dg.AssetCheckSeverity.WARN,
                               metadata={f"{m}.coverage_ratio": float(r) for m, r in drops.items()})


@dg.asset(
    partitions_def=city_partitions, backfill_policy=CITY_BACKFILL, group_name=GROUP, owners=OWNERS,
    kinds={"polars", "delta"}, metadata=DELTA, io_manager_key="io_manager",
    deps=[dg.AssetDep("sid_codebook"), dg.AssetDep("item_embeddings")],
    description="item_id -> SID tuple for every tokenizer variant, with the codebook version. Stable: items "
                "already assigned under the current version keep their SID exactly; new items get codes "
                "from the frozen codebook and a dedup digit that clashes with no existing SID.",
)
def sid_table(context: dg.AssetExecutionContext, item_catalog: pl.DataFrame, home: LgsidHome) -> dg.Output[pl.DataFrame]:
    cities = run_cities(context)
    manifest = read_manifest(home)
    if manifest is None:
        raise dg.Failure("no SID codebook: materialize sid_codebook first")
    version, cb_dir = manifest["version"], home.current("sid_codebook")
    fitted = pl.read_parquet(cb_dir / "assignments.parquet")
    previous_lf = home.scan("sid_table")
    previous = (previous_lf.filter(pl.col("codebook_version") == version).collect()
                if previous_lf is not None else None)
    known = {}
    for name in manifest["variants"]:
        k = fitted.filter(pl.col("method") == name).select("item_id", "sid")
        if previous is not None and previous.height:
            # Items assigned incrementally earlier (in any city) keep their SID.
            k = pl.concat([k, previous.filter(pl.col("method") == name).select("item_id", "sid")]) \
                  .unique("item_id", keep="first")
        known[name] = k
    by_city = item_catalog.partition_by("city_key", as_dict=True)
    emb_all, tokenizers = None, {}
    frames, per_city = [], {}
    for city in cities:  # in turn: a city's new SIDs are taken before the next city assigns its own
        catalog = by_city.get((city,), item_catalog.clear()).sort("item_id")
        meta = {"codebook_version": version}
        for name, spec in manifest["variants"].items():
            mine = catalog.select("item_id").join(known[name], on="item_id", how="left")
            new = catalog.filter(pl.col("item_id").is_in(mine.filter(pl.col("sid").is_null())["item_id"].to_list()))
            if new.height:
                if emb_all is None:
                    emb_all = home.read("item_embeddings", cities)
                emb = emb_all.filter(pl.col("variant") == spec["embedding_variant"])
                check_embedding_space(name, spec, version, city,
                                      new.select("item_id").join(emb, on="item_id", how="left")["encoder_version"])
                X = np.asarray(new.select("item_id").join(emb, on="item_id", how="left", maintain_order="left")
                               ["embedding"].to_list(), dtype=np.float32)
                if name not in tokenizers:
                    tokenizers[name] = load_tokenizer(cb_dir / name)
                codes = tokenizers[name].transform(X, new)
                existing = np.asarray(known[name]["sid"].to_list(), dtype=np.int32).reshape(-1, codes.shape[1] + 1)
                sids = assign_unique(codes, existing)
                added = pl.DataFrame({"item_id": new["item_id"],
                                      "sid": pl.Series(sids.tolist(), dtype=pl.List(pl.Int32))})
                mine = mine.filter(pl.col("sid").is_not_null()).vstack(added)
                known[name] = pl.concat([known[name], added])
            meta[f"{name}.incremental"] = new.height
            frames.append(mine.with_columns(pl.lit(name).alias("method"), pl.lit(version).alias("codebook_version"),
                                            pl.col("item_id").is_in(new["item_id"].to_list()).alias("incremental"),
                                            pl.lit(city).alias("city_key")))
        per_city[city] = {"dagster/row_count": catalog.height * len(manifest["variants"]), "items": catalog.height,
                          **meta}
    out = pl.concat(frames).select("item_id", "method", "codebook_version", "sid", "incremental", "city_key")
    return emit(context, out, per_city)


@dg.asset_check(asset="sid_table", blocking=True,
                description="Every item has exactly one SID per method and no two items share a SID, across "
                            "all cities (SIDs mean the same thing everywhere).")
def sid_uniqueness(home: LgsidHome) -> dg.AssetCheckResult:
    table = home.read("sid_table")
    problems = {}
    for (method, version), grp in table.group_by(["method", "codebook_version"]):
        rate = collision_rate(np.asarray(grp["sid"].to_list())) if grp.height else 0.0
        dup_items = grp["item_id"].is_duplicated().sum()
        if rate > 0 or dup_items:
            problems[f"{method}@{version}"] = f"collision rate {rate:.4f}, {dup_items} items with several SIDs"
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": json.dumps(problems) or "none",
                                                              "rows": table.height})
