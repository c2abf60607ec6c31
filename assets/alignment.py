"""Alignment assets: the list-wise reward model (Eq. 2-4), the G-DPO-aligned encoder (Eq. 6-8),
item embeddings (origin and aligned) and the alignment report (Table 3 metrics)."""

import json
import time
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field, field_validator

from assets.metadata import Timer, config_json, flat, image, table
from assets.reads import load_embeddings
from assets.partitions import CITY_BACKFILL, DELTA, ENCODER_POOL, TRAINING_POOL, city_partitions, emit, run_cities
from lgsid_pipeline.alignment import stage as alignment, metrics as alignment_metrics, embeddings, gdpo, reward
from lgsid_pipeline.alignment.verdicts import MAX_TOP5_LOSS, geography_gain_verdict, reward_signal_verdict
from lgsid_pipeline.plotting import pyplot, save
from lgsid_pipeline.budgets import allocation_summary
from lgsid_pipeline.alignment.negatives import STRATEGIES as NEGATIVE_STRATEGIES
from lgsid_pipeline.alignment.prompts import build_prompts
from resources import EncoderResource, LgsidHome

GROUP = "alignment"
OWNERS = ["team:lgsid-ml"]


def _progress_logger(context, what: str):
    last = {"t": 0.0}

    def log(info: dict) -> None:
        now = time.perf_counter()
        if now - last["t"] > 15 or info.get("done") == info.get("total"):
            last["t"] = now
            if "items_per_s" in info:
                context.log.info(f"{what}: {info['done']}/{info['total']} ({info['items_per_s']:.1f} items/s, "
                                 f"ETA {info['eta_s']:.0f}s)")
            elif "step" in info:
                context.log.info(f"{what}: step {info['step']}/{info['total_steps']} align={info['align']:.4f} "
                                 f"sim={info['sim']:.4f}")
    return log


_R = alignment.RewardSettings


class RewardModelConfig(dg.Config):
    mode: Literal[reward.REWARD_MODES] = Field(default=_R.mode, description="listwise (Eq. 4 as ListNet) | pointwise (DPO-PR)")
    loss: Literal[reward.REWARD_LOSSES] = Field(default=_R.loss, description="listnet | soft_bce (readings of Eq. 4)")
    negatives: Literal[NEGATIVE_STRATEGIES] = Field(default=_R.negatives, description="density (DPO-LRD) | plain (DPO-LR)")
    anchors_total: int | None = Field(default=_R.anchors_total, ge=1, description="Anchors sampled in all (each "
                                      "encodes K+1 prompts with the frozen encoder), allocated across cities by "
                                      "size after anchors_floor each: the cost does not grow with the number of "
                                      "cities. None: every anchor.")
    anchors_floor: int = Field(default=_R.anchors_floor, ge=0, description="Anchors every city gets first (or all "
                                                                          "it has), so small cities are still seen.")
    hidden: int = _R.hidden
    epochs: int = _R.epochs
    lr: float = _R.lr
    batch_size: int = _R.batch_size
    seed: int = _R.seed


@dg.asset(
    pool=TRAINING_POOL,
    group_name=GROUP, owners=OWNERS, kinds={"torch", "safetensors"},
    deps=[dg.AssetDep("distance_ranked_negatives"), dg.AssetDep("item_catalog")],
    description="Eq. 2-4: a 2-layer MLP scoring how well an item's content fits a location, trained "
                "list-wise on prompt-mismatched lists (Eq. 1) with distance soft labels (Eq. 3). Eq. 4 is "
                "read as ListNet (see docs/alignment.md). Mismatched prompts that render like an earlier "
                "prompt of their list (same-town locations under the paper's template) are left out and "
                "counted (dedupe.* metadata). Trained across all cities. "
                "Core: lgsid_pipeline/alignment/stage.py (fit_reward), lgsid_pipeline/alignment/reward.py",
)
def reward_model(context: dg.AssetExecutionContext, config: RewardModelConfig, home: LgsidHome,
                 encoder: EncoderResource) -> dg.MaterializeResult:
    timer = Timer()
    catalog = home.read("item_catalog")
    lists = home.read("distance_ranked_negatives")
    if lists.filter(pl.col("strategy") == config.negatives).height == 0:
        raise dg.Failure(f"no {config.negatives!r} negative lists: materialize distance_ranked_negatives first")
    enc = encoder.encoder()
    with timer("fit"):
        stage = alignment.fit_reward(catalog, lists, enc, alignment.RewardSettings(**config.model_dump()),
                                     workdir=home.artifact_dir("reward_model"), template=encoder.template(),
                                     progress=_progress_logger(context, "encoding prompt lists"))
    out = home.artifact_dir("reward_model", "current")
    reward.save_reward_model(stage.model, out)
    m = stage.metrics
    (out / "training.json").write_text(json.dumps({"config": config.model_dump(), "metrics": m,
                                                    "encoder": enc.identity}, default=str, indent=1))
    plot = _plot_curve([h["loss"] for h in stage.history], "epoch", "reward-model loss",
                       home.artifact_dir("plots") / "reward_model_loss.png")
    quality = pl.DataFrame({
        "model": ["trained (held-out)", "untrained MLP"],
        "spearman": [m.get("heldout_spearman"), m.get("untrained_spearman")],
        "ndcg": [m.get("heldout_ndcg"), m.get("untrained_ndcg")],
    })
    a, k1, d = stage.shape
    return dg.MaterializeResult(metadata={
        "config": config_json(config), "prompt_template": encoder.prompt_template,
        "anchor_budget": dg.MetadataValue.json(stage.summary()),
        "anchors_per_city": _allocation_table(stage.allocation, "anchors"),
        "instruction": encoder.instruction, "anchors": a, "list_length": k1,
        "prompt_lists_cached": stage.cached,
        **{f"dedupe.{k}": v for k, v in stage.dedupe.items() if v is not None},
        "embedding_dim": d, "encoder_version": enc.version, "quality": table(quality),
        "loss_curve": image(plot, "reward model loss"), "weights": dg.MetadataValue.path(str(out)),
        **flat({k: v for k, v in m.items() if isinstance(v, int | float)}), **timer.metadata(),
    })


def _allocation_table(allocation: dict[str, int], what: str):
    return table(pl.DataFrame({"city_key": list(allocation), what: list(allocation.values())},
                              schema={"city_key": pl.Utf8, what: pl.Int64}))


def _plot_curve(values, xlabel: str, title: str, path):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, len(values) + 1), values)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return save(fig, path, dpi=90)


_P = alignment.PairSettings


class AlignedEncoderConfig(dg.Config):
    beta: float = Field(default=gdpo.GDPOConfig.beta, description="Eq. 6 sharpness (the paper: 0.9).")
    lam: float = Field(default=gdpo.GDPOConfig.lam, description="Eq. 8 weight of the similarity regulariser, "
                       "chosen by a sweep on held-out validation items (docs/alignment.md): the paper's 1.0-1.8 "
                       "pins the policy to the reference with L2-normalised embeddings.")
    use_dc: bool = Field(default=_P.use_dc, description="Include domain-collaborative pairs D_dc (co-occurrence).")
    use_gc: bool = Field(default=_P.use_gc, description="Include geography-constrained pairs D_gc.")
    gc_outside: str = Field(default=_P.gc_outside, description="D_gc's far item lies outside the target's 'town' "
                            "(default) or outside its 'city'. On the demo world 'city' lowered C@5 by 28% "
                            "(benchmarks/results/alignment.md).")
    max_steps: int | None = Field(default=_P.max_steps, description="Step budget. The run is one pass over D_mix "
                                  "or this many steps, whichever is smaller (D_mix is sampled, seeded, to "
                                  "max_steps x batch_size pairs, allocated across the targets' cities with "
                                  "pairs_floor each). None = one pass over all of D_mix.")
    max_pairs: int | None = Field(default=_P.max_pairs, description="Extra cap on preference pairs (seeded sample).")
    pairs_floor: int = Field(default=_P.pairs_floor, ge=0, description="Pairs every city's targets get first "
                             "(or all it has) when the budget is allocated.")
    reward: Literal[alignment.REWARD_SOURCES] = Field(default="learned", description="learned: the reward_model "
                                                     "asset | oracle: R fitted to the true great-circle order of "
                                                     "the pairs (a diagnostic: is R the limit, or G-DPO?).")
    epochs: int = gdpo.GDPOConfig.epochs
    batch_size: int = gdpo.GDPOConfig.batch_size
    lr: float = gdpo.GDPOConfig.lr
    sim_reading: Literal[gdpo.SIM_READINGS] = Field(default=gdpo.GDPOConfig.sim_reading, description="Eq. 7 reading: printed (pull to "
                             "the own reference, push from the batch's others) | pull (own reference only).")
    eval_every: int = Field(default=alignment.PIPELINE_EVAL_EVERY, description="Steps between held-out geography evaluations (C@5, T@5, "
                            "Top@5); the adapter kept is the best evaluated step (docs/alignment.md). 0 = off.")
    eval_items: int = gdpo.GDPOConfig.eval_items
    max_top_loss: float = Field(default=gdpo.GDPOConfig.max_top_loss, description="Largest relative Top@5 loss "
                                "a kept step may have against the unchanged encoder.")
    patience: int = gdpo.GDPOConfig.patience
    lora_r: int = gdpo.GDPOConfig.lora_r
    lora_alpha: int = gdpo.GDPOConfig.lora_alpha
    lora_dropout: float = gdpo.GDPOConfig.lora_dropout
    seed: int = gdpo.GDPOConfig.seed

    @field_validator("gc_outside")
    @classmethod
    def _known_scope(cls, v: str) -> str:
        if v not in ("town", "city"):
            raise ValueError(f"gc_outside must be 'town' or 'city', got {v!r}")
        return v

    @field_validator("sim_reading")
    @classmethod
    def _known_reading(cls, v: str) -> str:
        if v not in gdpo.SIM_READINGS:
            raise ValueError(f"sim_reading must be one of {gdpo.SIM_READINGS}, got {v!r}")
        return v


@dg.asset(
    pool=TRAINING_POOL,
    group_name=GROUP, owners=OWNERS, kinds={"torch", "peft", "safetensors"},
    deps=[dg.AssetDep("reward_model"), dg.AssetDep("cooccurrence_pairs"), dg.AssetDep("item_catalog")],
    description="Eq. 6-8: G-DPO fine-tunes LoRA adapters (r=8, key/value projections) so the frozen reward "
                "model prefers an item's content at near/co-visited locations over far ones, with the in-batch "
                "similarity regulariser (Eq. 7) keeping semantics. Preference pairs D_mix = D_dc U D_gc. "
                "Held-out C@5 / T@5 / Top@5 are measured every eval_every steps and the best step is kept "
                "(the unchanged encoder if no step helps). Resumable from checkpoints. Core: lgsid_pipeline/alignment/gdpo.py",
)
def aligned_encoder(context: dg.AssetExecutionContext, config: AlignedEncoderConfig, home: LgsidHome,
                    encoder: EncoderResource) -> dg.MaterializeResult:
    timer = Timer()
    catalog = home.read("item_catalog")
    pairs_lf = home.scan("cooccurrence_pairs")
    cooc = pairs_lf.collect() if pairs_lf is not None else None
    rm = None
    if config.reward == "learned":
        rm = reward.load_reward_model(home.artifact_dir("reward_model", "current"))
    cfg = gdpo.GDPOConfig(beta=config.beta, lam=config.lam, lr=config.lr, epochs=config.epochs,
                          batch_size=config.batch_size, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, seed=config.seed,
                          max_length=encoder.max_length, sim_reading=config.sim_reading,
                          eval_every=config.eval_every, eval_items=config.eval_items,
                          max_top_loss=config.max_top_loss, patience=config.patience)
    settings = alignment.PairSettings(use_dc=config.use_dc, use_gc=config.use_gc, gc_outside=config.gc_outside,
                                      max_steps=config.max_steps, max_pairs=config.max_pairs,
                                      pairs_floor=config.pairs_floor, seed=config.seed)
    enc = encoder.encoder()
    with timer("train"):
        stage = alignment.fit_gdpo(catalog, cooc, enc, rm, cfg, settings,
                                   workdir=home.artifact_dir("aligned_encoder"), template=encoder.template(),
                                   reward_source=config.reward, progress=_progress_logger(context, "G-DPO"))
    result, pairs, adapter = stage.result, stage.pairs, stage.adapter
    home.publish("aligned_encoder", adapter)
    plot = gdpo.plot_losses(result.history, home.artifact_dir("plots") / "gdpo_losses.png")
    sources = pairs.group_by("source").len().sort("source")
    geography = {}
    if result.evals:
        curve = gdpo.plot_geography(result.evals, int(result.metrics["best_step"]),
                                    home.artifact_dir("plots") / "gdpo_heldout_geography.png")
        geography = {"heldout_geography_curve": image(curve, "G-DPO held-out geography"),
                     "heldout_evaluations": table(pl.DataFrame(result.evals))}
    return dg.MaterializeResult(metadata={
        "config": config_json(config), "pairs": pairs.height, "pair_sources": table(sources),
        "pair_budget": dg.MetadataValue.json(allocation_summary(stage.allocation)),
        "pairs_per_city": _allocation_table(stage.allocation, "pairs"), "reward_source": stage.reward_source,
        **flat(stage.oracle, prefix="oracle."),
        "adapter": dg.MetadataValue.path(str(adapter)), "base_encoder_version": enc.version,
        "prompt_template": encoder.prompt_template, "loss_curves": image(plot, "G-DPO losses"), **geography,
        **flat({k: v for k, v in result.metrics.items() if isinstance(v, int | float)}), **timer.metadata(),
    })


class EmbeddingsConfig(dg.Config):
    variants: list[str] = Field(default=["origin", "aligned"],
                                description="origin = base encoder; aligned = with the G-DPO adapter.")


@dg.asset(
    pool=ENCODER_POOL,
    partitions_def=city_partitions, backfill_policy=CITY_BACKFILL, group_name=GROUP, owners=OWNERS,
    kinds={"torch", "polars", "delta"},
    metadata=DELTA, io_manager_key="io_manager", deps=[dg.AssetDep("aligned_encoder")],
    description="One embedding per catalog item and variant (origin, aligned), keyed by item_id with the "
                "encoder version. Incremental: items whose prompt and encoder version are unchanged keep their "
                "stored embedding; only new or changed items are encoded.",
)
def item_embeddings(context: dg.AssetExecutionContext, config: EmbeddingsConfig, item_catalog: pl.DataFrame,
                    home: LgsidHome, encoder: EncoderResource) -> dg.Output[pl.DataFrame]:
    cities = run_cities(context)
    timer = Timer()
    # The whole batch at once: item ids are unique across cities, so one encode call per variant
    # covers every city's new or changed items (a batch pays the encoder's start-up once).
    prompts = build_prompts(item_catalog, template=encoder.template())
    current = embeddings.current_items(item_catalog, prompts)
    existing_lf = home.scan("item_embeddings", cities)
    existing = existing_lf.collect() if existing_lf is not None else None
    frames, common = [], {}
    counts = {c: {} for c in cities}
    for variant in config.variants:
        if variant == "origin":
            enc = encoder.encoder()
        elif variant == "aligned":
            adapter = home.current("aligned_encoder")
            if adapter is None:
                context.log.warning("no aligned_encoder yet: skipping the aligned variant")
                continue
            enc = _aligned(encoder, str(adapter))
        else:
            raise dg.Failure(f"unknown embedding variant {variant!r}")
        progress = _progress_logger(context, f"encoding {variant}")

        def encode(texts, enc=enc, progress=progress, key=f"encode_{variant}"):
            with timer(key):  # the encoder only, not the reuse joins
                return enc.encode(texts, progress=progress)
        done = embeddings.embed_variant(current, prompts, existing, variant=variant, version=enc.version,
                                        identity=enc.identity, encode=encode)
        frames.append(done.rows)
        for city in cities:
            counts[city][f"{variant}.encoded"] = done.encoded.get(city, 0)
            counts[city][f"{variant}.reused"] = done.reused.get(city, 0)
        common[f"{variant}.encoder_version"] = enc.version
        if done.n_encoded:
            common[f"{variant}.items_per_s"] = round(done.n_encoded / max(timer.seconds[f"encode_{variant}"], 1e-9), 1)
    out = pl.concat(frames)
    dim = len(out["embedding"][0]) if out.height else 0
    rows_per_city = dict(out.group_by("city_key").len().iter_rows())
    per_city = {c: {"dagster/row_count": int(rows_per_city.get(c, 0)), **counts[c]} for c in cities}
    return emit(context, out, per_city, {"config": config_json(config), "dim": dim, **common, **timer.metadata()})


_ALIGNED_CACHE: dict = {}


def _aligned(encoder: EncoderResource, adapter: str):
    key = (encoder.config(), adapter)
    if key not in _ALIGNED_CACHE:
        _ALIGNED_CACHE.clear()
        _ALIGNED_CACHE[key] = gdpo.load_aligned_encoder(encoder.config(), adapter)
    return _ALIGNED_CACHE[key]


class AlignmentReportConfig(dg.Config):
    max_queries: int | None = Field(default=alignment_metrics.PIPELINE_MAX_QUERIES, description="Query items in all (a total budget, allocated "
                                   "across cities in proportion to their size); None scores every item.")
    queries_floor: int = Field(default=alignment_metrics.PIPELINE_QUERIES_FLOOR, description="Queries per city at least (up to the city's items), so "
                               "small cities are scored too.")
    seed: int = 0


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"polars", "numpy"}, deps=[dg.AssetDep("item_embeddings")],
    description="Paper Table 3 / RQ2-3 for every embedding variant, per city and overall: Top@K semantic "
                "similarity (in the origin space), P@K / C@K / T@K province, city and town coverage of the K "
                "nearest neighbours, NMI of k-means clusters against province/city/town, and a 2-D projection. "
                "Core: lgsid_pipeline/alignment/metrics.py",
)
def alignment_report(context: dg.AssetExecutionContext, config: AlignmentReportConfig,
                     home: LgsidHome) -> dg.MaterializeResult:
    timer = Timer()
    catalog = home.read("item_catalog").sort("city_key", "item_id")
    variants = sorted(home.read("item_embeddings")["variant"].unique().to_list())
    embeddings = {v: load_embeddings(home, v, catalog) for v in variants}
    # Same-name cities (Springfield IL / MA) are different cities, and town names repeat across
    # cities: score C@K / T@K / NMI on the partition key and on city-qualified towns.
    labels = catalog.with_columns(pl.col("city_key").alias("city"),
                                  pl.concat_str("city_key", pl.lit("/"), "town").alias("town"))
    with timer("report"):
        report = alignment_metrics.alignment_report(embeddings, labels, seed=config.seed,
                                                    max_queries=config.max_queries,
                                                    queries_floor=config.queries_floor)
    path = home.artifact_dir("alignment_report") / "alignment_report.parquet"
    report.table.write_parquet(path)
    plot = alignment_metrics.projection_plot(embeddings, catalog["city_key"].to_list(),
                                             home.artifact_dir("plots") / "embedding_projection.png",
                                             seed=config.seed)
    overall = report.table.filter(pl.col("scope") == "overall")
    meta = {}
    for row in overall.iter_rows(named=True):
        for k in ("top@5", "c@5", "t@5", "nmi_city"):
            meta[f"{row['variant']}.{k}"] = float(row[k])
    return dg.MaterializeResult(metadata={
        "config": config_json(config), "variants": ", ".join(variants), "items": catalog.height,
        **({"query_budget": dg.MetadataValue.json(allocation_summary(report.query_allocation)),
            "queries_per_city": _allocation_table(report.query_allocation, "queries")}
           if report.query_allocation is not None else {}),
        "overall": table(overall), "per_city": table(report.table.filter(pl.col("scope") != "overall")),
        "projection": image(plot, "embedding projection by city"), "table": dg.MetadataValue.path(str(path)),
        **meta, **timer.metadata(),
    })


# -- checks: does the alignment do what it is for? ----------------------------------------------


def _latest_metadata(context: dg.AssetCheckExecutionContext, asset: str) -> dict[str, float] | None:
    records = context.instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    if not records:
        return None
    out = {}
    for key, value in records[0].asset_materialization.metadata.items():
        try:
            out[key] = float(value.value)
        except (TypeError, ValueError):
            continue
    return out


@dg.asset_check(asset="aligned_encoder", blocking=False,
                description="The reward model prefers the near / co-visited location over the far one on the "
                            "reference embeddings of the G-DPO pairs (pair accuracy > 0.5). If not, G-DPO "
                            "amplifies a non-geographic signal: train the reward model on more anchors first.")
def aligned_encoder_reward_signal(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    meta = _latest_metadata(context, "aligned_encoder")
    if meta is None:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "aligned_encoder never materialized"})
    passed, detail = reward_signal_verdict(meta)
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN, metadata=detail)


@dg.asset_check(asset="alignment_report", blocking=False,
                description=f"Aligned embeddings keep or raise C@5 and T@5 over origin and lose at most "
                            f"{MAX_TOP5_LOSS:.0%} top@5 semantic similarity (overall scope).")
def alignment_geography_gain(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    meta = _latest_metadata(context, "alignment_report")
    if meta is None:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "alignment_report never materialized"})
    if "aligned.c@5" not in meta:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no aligned variant in this report"})
    passed, detail = geography_gain_verdict(meta)
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN, metadata=detail)
