"""The alignment stage, one code path for the pipeline's assets and the Table 3 ladder.

    per city:  distance-ranked negatives (Eq. 1, 3)          city_negatives
    all:       sample anchors -> mismatched prompts (Eq. 1) -> same-text dedupe
               -> encode with the frozen encoder (cached) -> reward model R (Eq. 2-4)   fit_reward
    all:       preference pairs D_mix = D_dc U D_gc (Eq. 5 pairs), a budget allocated
               across cities -> [oracle R] -> G-DPO (Eq. 6-8)                          fit_gdpo

The assets call these functions with their Dagster config; the ladder
(:mod:`lgsid_pipeline.alignment.ladder`) calls the same functions and only changes switches (reward mode,
negatives strategy, D_dc on or off, lambda, learned or oracle R). The defaults of every setting
live in the dataclasses below; the asset configs read them from here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from lgsid_pipeline.alignment import gdpo, reward
from lgsid_pipeline import paper
from lgsid_pipeline.budgets import allocation_summary, sample_by_city
from lgsid_pipeline.geo import haversine_km
from lgsid_pipeline.alignment.negatives import (
    STRATEGIES,
    dedupe_prompt_lists,
    distance_ranked_negatives,
    mismatched_prompts,
)
from lgsid_pipeline.alignment.prompts import DEFAULT_TEMPLATE, PromptTemplate
from lgsid_pipeline.train_state import atomic_save_tensors, load_tensors

REWARD_SOURCES = ("learned", "oracle")
# Steps between G-DPO's held-out geography evaluations in the pipeline (GDPOConfig.eval_every):
# the asset and the ladder both select the kept step with it.
PIPELINE_EVAL_EVERY = 16


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


# -- negatives, per city ------------------------------------------------------------------------
@dataclass(frozen=True)
class NegativeSettings:
    k: int = paper.NEGATIVES_PER_POSITIVE  # negatives per anchor
    density_k: int = 10  # k of the anchor's k-th neighbour distance r_k, the local density scale
    near_scale: float = 2.0  # hard negatives lie within near_scale * r_k
    hard_share: float = 1 / 3  # share of each list drawn from the hard band
    far_share: float = 0.2  # share of negatives from other cities (G-DPO's far items come from there)
    max_anchors: int | None = None  # cap anchors per city (seeded sample)
    plain_variant: bool = True  # also the uniformly random lists (the DPO-LR ablation)
    distinct_variant: bool = True  # also the distinct-location lists (negatives.py, "distinct")
    seed: int = 0


def city_negatives(items: pl.DataFrame, far_items: pl.DataFrame | None,
                   settings: NegativeSettings = NegativeSettings()) -> tuple[pl.DataFrame, dict]:
    """The density lists (and the plain ones) of one city; returns (lists, {"density": result, ...})."""
    far = far_items if settings.far_share > 0 and far_items is not None and far_items.height else None
    kwargs = dict(k=settings.k, seed=settings.seed, density_k=settings.density_k, max_anchors=settings.max_anchors,
                  far_items=far, far_share=settings.far_share if far is not None else 0.0)
    results = {"density": distance_ranked_negatives(items, strategy="density", near_scale=settings.near_scale,
                                                    hard_share=settings.hard_share, **kwargs)}
    if settings.plain_variant:
        results["plain"] = distance_ranked_negatives(items, strategy="plain", **kwargs)
    if settings.distinct_variant:
        results["distinct"] = distance_ranked_negatives(items, strategy="distinct", **kwargs)
    return pl.concat([r.lists for r in results.values()], how="diagonal_relaxed"), results


# -- the reward model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardSettings:
    mode: str = "listwise"  # listwise (Eq. 4 as ListNet) | pointwise (the DPO-PR row)
    loss: str = "listnet"  # listnet | soft_bce: readings of Eq. 4 (docs/alignment.md)
    negatives: str = "density"  # density (DPO-LRD) | plain (DPO-LR)
    # Anchors in all, allocated across cities by size after anchors_floor each (None: all).
    anchors_total: int | None = 160
    anchors_floor: int = 8
    hidden: int = reward.HIDDEN
    epochs: int = reward.EPOCHS
    lr: float = reward.LR
    batch_size: int = reward.BATCH_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in reward.REWARD_MODES:
            raise ValueError(f"reward mode must be one of {reward.REWARD_MODES}, got {self.mode!r}")
        if self.loss not in reward.REWARD_LOSSES:
            raise ValueError(f"reward loss must be one of {reward.REWARD_LOSSES}, got {self.loss!r}")
        if self.negatives not in STRATEGIES:
            raise ValueError(f"negatives must be one of {STRATEGIES}, got {self.negatives!r}")


@dataclass
class RewardStage:
    model: reward.RewardModel
    metrics: dict
    history: list[dict]
    allocation: dict[str, int]
    dedupe: dict
    shape: tuple[int, int, int]  # (anchors, K + 1, d)
    cached: bool  # the prompt-list embeddings came from the cache

    def summary(self) -> dict:
        return allocation_summary(self.allocation)


def fit_reward(catalog: pl.DataFrame, lists: pl.DataFrame, encoder, settings: RewardSettings = RewardSettings(),
               *, workdir: Path | str, template: PromptTemplate = DEFAULT_TEMPLATE,
               progress: Callable[[dict], None] | None = None) -> RewardStage:
    """Sample anchors, build and dedupe their prompt lists, encode them (cached in ``workdir``) and
    train R (checkpointed in ``workdir``). ``lists`` are distance-ranked negatives with a
    ``strategy`` and a ``city_key`` column, as :func:`city_negatives` returns them."""
    workdir = Path(workdir)
    if "strategy" in lists.columns:
        lists = lists.filter(pl.col("strategy") == settings.negatives)
    if lists.height == 0:
        raise ValueError(f"no {settings.negatives!r} negative lists to train the reward model on")
    if "city_key" not in lists.columns:
        raise ValueError("negative lists need a 'city_key' column (the anchors are allocated across cities)")
    lists, allocation = sample_by_city(lists, "anchor_id", settings.anchors_total, settings.anchors_floor,
                                       settings.seed)
    prompts, dedupe = dedupe_prompt_lists(mismatched_prompts(catalog, lists, template))
    k = reward.common_list_length(prompts)
    key = hashlib.sha256(("\n".join(prompts.sort("anchor_id", "rank")["prompt"].to_list())
                          + encoder.version + f"|k={k}").encode()).hexdigest()[:16]
    cache = workdir / "cache" / f"lists-{key}.safetensors"
    cached = cache.exists()
    if cached:
        t = load_tensors(cache, "cached prompt-list embeddings")
        E, labels = t["E"], t["labels"]
    else:
        E, labels, _ = reward.encode_prompt_lists(_Progress(encoder, progress), prompts, k=k)
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors({"E": E.contiguous(), "labels": labels.contiguous()}, cache)
    result = reward.train_reward_model(
        E, labels, mode=settings.mode, loss=settings.loss, hidden=settings.hidden, epochs=settings.epochs,
        lr=settings.lr, batch_size=settings.batch_size, seed=settings.seed,
        checkpoint_dir=workdir / "checkpoints" / f"{key}-{_hash(asdict(settings))}")
    return RewardStage(model=result.model, metrics=result.metrics, history=result.history,
                       allocation=allocation, dedupe=dedupe, shape=tuple(E.shape), cached=cached)


class _Progress:
    """The encoder with ``progress`` passed to every ``encode`` call."""

    def __init__(self, encoder, progress) -> None:
        self.encoder, self.progress = encoder, progress

    def encode(self, texts):
        return self.encoder.encode(texts, progress=self.progress)


# -- preference pairs and G-DPO -------------------------------------------------------------------
@dataclass(frozen=True)
class PairSettings:
    use_dc: bool = True  # domain-collaborative pairs D_dc (co-occurrence, Eq. 5)
    use_gc: bool = True  # geography-constrained pairs D_gc
    gc_outside: str = "town"  # D_gc's far item lies outside the target's town (or "city")
    # The run is one pass over D_mix or max_steps steps, whichever is smaller: D_mix is sampled to
    # max_steps x batch_size pairs, allocated across the targets' cities with pairs_floor each.
    max_steps: int | None = 64
    max_pairs: int | None = None  # an extra cap on the pairs
    pairs_floor: int = 8
    seed: int = 0


def preference_pairs(catalog: pl.DataFrame, cooc: pl.DataFrame | None, settings: PairSettings,
                     batch_size: int) -> tuple[pl.DataFrame, dict[str, int]]:
    """D_mix within the budget; returns (pairs with the target's city_key, allocation per city)."""
    pairs = gdpo.build_preference_pairs(catalog, cooc, seed=settings.seed, use_dc=settings.use_dc,
                                        use_gc=settings.use_gc, outside=settings.gc_outside)
    budget = None if settings.max_steps is None else settings.max_steps * batch_size
    cap = min((c for c in (budget, settings.max_pairs) if c is not None), default=None)
    city = (catalog.select(pl.col("item_id").cast(pl.Utf8).alias("target_id"),
                           pl.col("city_key").cast(pl.Utf8) if "city_key" in catalog.columns
                           else pl.lit("all").alias("city_key")))
    pairs = pairs.join(city, on="target_id", how="left").with_row_index("_pair")
    pairs, allocation = sample_by_city(pairs, "_pair", cap, settings.pairs_floor if cap is not None else 0,
                                       settings.seed)
    return pairs.sort("_pair").drop("_pair"), allocation


def pair_distances_km(catalog: pl.DataFrame, pairs: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Great-circle km from each pair's target to its near (i+) and far (i-) locations."""
    loc = catalog.select(pl.col("item_id").cast(pl.Utf8), "lat", "lon")
    df = pairs.select("target_id", "near_id", "far_id")
    for col, tag in (("target_id", "t"), ("near_id", "n"), ("far_id", "f")):
        df = df.join(loc.rename({"item_id": col, "lat": f"lat_{tag}", "lon": f"lon_{tag}"}), on=col, how="left")
    if df.height != pairs.height or df.select(pl.any_horizontal(pl.all().is_null()).any()).item():
        raise ValueError("every pair's target, near and far item needs lat/lon in the catalog")
    a = {c: df[c].to_numpy() for c in df.columns if c.startswith(("lat_", "lon_"))}
    return (haversine_km(a["lat_t"], a["lon_t"], a["lat_n"], a["lon_n"]),
            haversine_km(a["lat_t"], a["lon_t"], a["lat_f"], a["lon_f"]))


def fit_oracle(catalog: pl.DataFrame, pairs: pl.DataFrame, encoder, *, template: PromptTemplate,
               hidden: int, seed: int, max_length: int | None = None) -> reward.OracleResult:
    """The oracle R of :func:`reward.train_oracle_reward` on the reference embeddings of the pairs."""
    pos, neg, _ = gdpo.pair_texts(catalog, pairs, template)
    uniq = list(dict.fromkeys(pos + neg))
    emb = encoder.encode(uniq, max_length=max_length)
    where = {t: i for i, t in enumerate(uniq)}
    e_pos = torch.from_numpy(emb[[where[t] for t in pos]])
    e_neg = torch.from_numpy(emb[[where[t] for t in neg]])
    d_pos, d_neg = pair_distances_km(catalog, pairs)
    return reward.train_oracle_reward(e_pos, e_neg, reward.oracle_preferences(d_pos, d_neg), hidden=hidden,
                                      seed=seed)


def weights_hash(model: torch.nn.Module) -> str:
    """A digest of a model's weights: a G-DPO run is keyed by the R it was trained against, so a
    refitted reward model never resumes (or reuses) an adapter trained against the old one."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class GDPOStage:
    result: gdpo.GDPOResult
    pairs: pl.DataFrame
    allocation: dict[str, int]
    run_key: str
    adapter: Path
    reward_source: str
    oracle: dict = field(default_factory=dict)  # the oracle's metrics (reward_source == "oracle")


def fit_gdpo(catalog: pl.DataFrame, cooc: pl.DataFrame | None, encoder, reward_model: reward.RewardModel | None,
             config: gdpo.GDPOConfig, pairs_settings: PairSettings = PairSettings(), *, workdir: Path | str,
             template: PromptTemplate = DEFAULT_TEMPLATE, reward_source: str = "learned",
             progress: Callable[[dict], None] | None = None,
             reference_embeddings: dict[str, np.ndarray] | None = None) -> GDPOStage:
    """Build D_mix within the budget and train G-DPO against ``reward_model`` (``"learned"``) or
    the distance oracle (``"oracle"``). Checkpoints and the adapter live under ``workdir``, keyed
    by the pairs, the encoder, the template and the settings, so a rerun resumes."""
    if reward_source not in REWARD_SOURCES:
        raise ValueError(f"reward_source must be one of {REWARD_SOURCES}, got {reward_source!r}")
    workdir = Path(workdir)
    config = replace(config, max_steps=pairs_settings.max_steps)  # the one step budget: PairSettings
    pairs, allocation = preference_pairs(catalog, cooc, pairs_settings, config.batch_size)
    if pairs.height == 0:
        raise ValueError("no preference pairs: the catalog needs items in more than one town (or city)")
    oracle: dict = {}
    if reward_source == "oracle":
        hidden = reward_model.hidden if reward_model is not None else RewardSettings.hidden
        res = fit_oracle(catalog, pairs, encoder, template=template, hidden=hidden, seed=config.seed,
                         max_length=config.max_length)
        reward_model, oracle = res.model, res.metrics
    elif reward_model is None:
        raise ValueError("a learned-reward G-DPO run needs the reward model")
    key_parts = {"pairs": hashlib.sha256(pairs.write_csv().encode()).hexdigest()[:16], "encoder": encoder.version,
                 "template": repr(template), "config": asdict(config), "pair_settings": asdict(pairs_settings),
                 "reward": reward_source, "reward_weights": weights_hash(reward_model)}
    run_key = _hash(key_parts)
    adapter = workdir / "adapters" / run_key
    result = gdpo.train_gdpo(encoder, reward_model, catalog, pairs, config,
                             checkpoint_dir=workdir / "checkpoints" / run_key, adapter_dir=adapter,
                             progress=progress, template=template, reference_embeddings=reference_embeddings)
    return GDPOStage(result=result, pairs=pairs, allocation=allocation, run_key=run_key, adapter=adapter,
                     reward_source=reward_source, oracle=oracle)
