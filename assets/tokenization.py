"""Tokenization assets: versioned SID codebooks fitted over all cities (HGIT = Eq. 9-16, and the
Res-KMeans / RQ-VAE baselines) and the per-city SID table with stable IDs across refreshes."""

import inspect
import json
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from assets.metadata import Timer, config_json, image
from assets.reads import load_embeddings_and_versions, read_manifest
from assets.partitions import CITY_BACKFILL, DELTA, TRAINING_POOL, city_partitions, emit, run_cities
from lgsid_pipeline.tokenizers import default_codebook_sizes
from lgsid_pipeline.tokenizers.hgit import ADMIN_COLUMNS, HGITTokenizer
from lgsid_pipeline.alignment.prompts import build_prompts
from lgsid_pipeline.tokenizers.dedup import DEDUP_ORDERS, DEDUP_STRATEGIES, collision_figures, collision_rate, dedup_order_key
from lgsid_pipeline.tokenizers.diagnostics import diagnostics_markdown, plot_codebook_usage, plot_coverage
from lgsid_pipeline.tokenizers.registry import (CodebookError, CodebookSettings, fit_codebook_version, manifest_history,
                                                next_version, stable_sid_table)
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


def _checked_default_variant(config: CodebookConfig) -> str:
    """The variant sid_table ships as its default, after checking the variants and dedup order."""
    for name in config.variants:
        if name not in VARIANTS:
            raise dg.Failure(f"unknown tokenizer variant {name!r}; choose from {list(VARIANTS)}")
    default_variant = config.default_variant or (
        DEFAULT_SID_VARIANT if DEFAULT_SID_VARIANT in config.variants else config.variants[0])
    if default_variant not in config.variants:
        raise dg.Failure(f"default_variant {default_variant!r} is not among the fitted variants {config.variants}")
    if config.dedup_order not in DEDUP_ORDERS:
        raise dg.Failure(f"unknown dedup_order {config.dedup_order!r}; choose from {list(DEDUP_ORDERS)}")
    return default_variant


def _popularity(home: LgsidHome, catalog: pl.DataFrame, config: CodebookConfig) -> np.ndarray | None:
    """Visits per catalogue item (user_interactions), when the dedup order or hubs need them."""
    if not (config.dedup_order == "popularity" or config.hub_share > 0):
        return None
    visits = home.read("user_interactions").group_by("item_id").agg(pl.len().alias("n"))
    return catalog.select("item_id").join(visits, on="item_id", how="left", maintain_order="left")["n"] \
        .fill_null(0).to_numpy()


def _variant_methods(config: CodebookConfig) -> dict[str, tuple[str, dict]]:
    """Variant name -> (tokenizer method, its hyper-parameters from the config beyond sizes/levels/seed)."""
    hgit_params = {"w_admin": config.w_admin, "w_geo": config.w_geo, "lambda_reg": config.lambda_reg,
                   "usage_temperature": config.usage_temperature, "admin_columns": list(config.admin_columns)}
    out = {}
    for name in config.variants:
        method = VARIANTS[name][0]
        params = {}
        if method in HGIT_METHODS:
            params = dict(hgit_params)
            if method == "hgit":
                params.update(w_cat=config.w_cat, w_brand=config.w_brand)
        out[name] = (method, params)
    return out


def _fit_metadata(diags: dict, manifest: dict) -> dict:
    """The flat per-variant figures sid_codebook reports (recon, collisions, hubs, prompt floor)."""
    meta = {f"{m}.recon_rel": float(d["recon_rel"]) for m, d in diags.items()}
    meta.update({f"{m}.collision_rate_before": float(d["collision_rate_before"]) for m, d in diags.items()})
    meta.update({f"{m}.{k}": v for m, d in diags.items() for k, v in d["collisions"].items()
                 if k in ("max_digit", "bucket_size_q50", "bucket_size_q90", "bucket_size_q99")})
    meta.update({f"{m}.hubs": v["hubs"] for m, v in manifest["variants"].items() if "hubs" in v})
    meta["identical_prompt_share"] = float(manifest["identical_prompt_share"])
    meta["default_variant"] = manifest["default_variant"]
    return meta


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
    default_variant = _checked_default_variant(config)
    popularity = _popularity(home, catalog, config)
    order_key = dedup_order_key(catalog, config.dedup_order, popularity)
    prompt_floor = collision_figures(np.zeros((n, 1), dtype=np.int64), prompts=build_prompts(catalog, template=encoder.template()))
    number, version = next_version(previous)
    out_dir = home.artifact_dir("sid_codebook", version)

    def embeddings(name: str) -> tuple[np.ndarray, list[str], str]:
        emb_variant = VARIANTS[name][1]
        if emb_variant not in available:
            context.log.warning(f"{name}: no {emb_variant!r} embeddings, using origin")
            emb_variant = "origin"
        return (*load_embeddings_and_versions(home, emb_variant, catalog), emb_variant)

    settings = CodebookSettings(codebook_sizes=list(sizes), levels=config.levels, seed=config.seed,
                                dedup=config.dedup, dedup_order=config.dedup_order, hub_share=config.hub_share,
                                default_variant=default_variant)
    try:
        manifest, diags = fit_codebook_version(
            out_dir, number, version, catalog, _variant_methods(config), embeddings, settings, popularity=popularity,
            order_key=order_key, identical_prompt_share=prompt_floor["identical_prompt_share"], timed=timer)
    except CodebookError as exc:
        raise dg.Failure(str(exc)) from None
    home.publish("sid_codebook", out_dir)
    plots = home.artifact_dir("plots")
    cov = plot_coverage(diags, plots / "token_coverage.png")
    use = plot_codebook_usage(diags, plots / "codebook_usage.png")
    return dg.MaterializeResult(metadata={
        "version": version, "refit": True, "config": config_json(config), "items": n,
        "codebook_sizes": "x".join(map(str, sizes)), "diagnostics": dg.MetadataValue.md(diagnostics_markdown(diags)),
        "token_coverage": image(cov, "token coverage"), "codebook_usage": image(use, "codebook usage"),
        "path": dg.MetadataValue.path(str(out_dir)), **_fit_metadata(diags, manifest), **timer.metadata(),
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
    try:
        out, figures = stable_sid_table(item_catalog, cities, manifest, fitted, previous, cb_dir,
                                        lambda: home.read("item_embeddings", cities))
    except CodebookError as exc:
        raise dg.Failure(str(exc)) from None
    per_city = {city: {"dagster/row_count": m["items"] * len(manifest["variants"]), **m} for city, m in figures.items()}
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
