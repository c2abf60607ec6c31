"""The paper's Table 3 ablation ladder: Origin -> DPO-PR -> ... -> G-DPO on the same data.

Each rung switches one ingredient on:

========== ============ ========== ============== ============
row        reward       negatives  pairs          lambda (Eq.8)
========== ============ ========== ============== ============
Origin     -            -          -              -
DPO-PR     point-wise   plain      D_gc           0
DPO-LR     list-wise    plain      D_gc           0
DPO-LRD    list-wise    density    D_gc           0
DPO-LRDM   list-wise    density    D_gc + D_dc    0
DPO-LRDMS  list-wise    density    D_gc + D_dc    1.0
G-DPO      list-wise    density    D_gc + D_dc    ``gdpo_lam``
========== ============ ========== ============== ============

(The paper's Table 6 lists its lambda = 1.0 run with exactly the DPO-LRDMS numbers and its
chosen lambda with the G-DPO numbers, so the last two rows differ only in lambda.)

Every row runs through the pipeline's own alignment path (:mod:`lgsid_pipeline.alignment.stage`,
the functions the assets call): per-city negatives and co-occurrence pairs, anchors allocated
across cities, the same dedupe, reward model, pair budget and G-DPO with held-out selection.
The extra row "G-DPO oracle-R" swaps R for the distance oracle (:func:`reward.train_oracle_reward`).

Everything is cached under ``workdir`` (prompt-list embeddings, reward models, adapters, item
embeddings per row), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from lgsid_pipeline.alignment.stage import (
    PIPELINE_EVAL_EVERY,
    NegativeSettings,
    PairSettings,
    RewardSettings,
    city_negatives,
    fit_gdpo,
    fit_reward,
)
from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder
from lgsid_pipeline.alignment.gdpo import GDPOConfig, load_aligned_encoder
from lgsid_pipeline.alignment.prompts import build_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LadderRow:
    name: str
    reward: str | None  # None (Origin) | "pointwise" | "listwise"
    negatives: str = "plain"  # "plain" | "density"
    use_dc: bool = False
    lam: float = 0.0
    reward_source: str = "learned"  # "learned" (R) | "oracle" (R fitted to the true distance order)


def ladder_rows(gdpo_lam: float = GDPOConfig.lam, extra_lams: tuple[float, ...] = (),
                oracle: bool = False, negatives: str = "density") -> list[LadderRow]:
    """The Table 3 rows; ``negatives`` is the strategy of the rows from DPO-LRD on (the paper's
    density-aware lists, or ``distinct`` locations)."""
    d = negatives
    rows = [
        LadderRow("Origin", None),
        LadderRow("DPO-PR", "pointwise", "plain"),
        LadderRow("DPO-LR", "listwise", "plain"),
        LadderRow("DPO-LRD", "listwise", d),
        LadderRow("DPO-LRDM", "listwise", d, use_dc=True),
        LadderRow("DPO-LRDMS", "listwise", d, use_dc=True, lam=1.0),
        LadderRow("G-DPO", "listwise", d, use_dc=True, lam=gdpo_lam),
    ]
    rows += [LadderRow(f"G-DPO lam={lam:g}", "listwise", d, True, lam) for lam in extra_lams]
    if oracle:
        rows.append(LadderRow("G-DPO oracle-R", "listwise", d, True, gdpo_lam, reward_source="oracle"))
    return rows


PAPER_TABLE3 = {  # Table 3 of the paper: top@5/10/100, P@5/10/100, C@5/10/100, T@5/10/100
    "Origin": (0.9204, 0.9133, 0.8833, 0.8716, 0.8410, 0.6681, 0.7342, 0.6827, 0.4372, 0.1601, 0.1328, 0.0552),
    "DPO-PR": (0.8771, 0.8679, 0.8286, 0.9001, 0.8752, 0.7477, 0.7478, 0.7013, 0.5064, 0.1452, 0.1167, 0.0445),
    "DPO-LR": (0.7595, 0.7478, 0.7088, 0.8995, 0.8648, 0.6560, 0.8681, 0.8254, 0.5783, 0.5584, 0.4966, 0.2480),
    "DPO-LRD": (0.7411, 0.7288, 0.6876, 0.8715, 0.8302, 0.6012, 0.8277, 0.7755, 0.5043, 0.6114, 0.5435, 0.2620),
    "DPO-LRDM": (0.8107, 0.7954, 0.7401, 0.9047, 0.8773, 0.7261, 0.7812, 0.7329, 0.5218, 0.1816, 0.1481, 0.0625),
    "DPO-LRDMS": (0.8856, 0.8754, 0.8283, 0.9960, 0.9936, 0.9662, 0.9548, 0.9352, 0.8130, 0.4030, 0.3525, 0.2260),
    "G-DPO": (0.8977, 0.8892, 0.8504, 0.9905, 0.9852, 0.9307, 0.9173, 0.8858, 0.7065, 0.2940, 0.2432, 0.1290),
}
PAPER_COLUMNS = [f"{m}@{k}" for m in ("top", "p", "c", "t") for k in (5, 10, 100)]


def paper_table() -> pl.DataFrame:
    return pl.DataFrame([{"variant": k, **dict(zip(PAPER_COLUMNS, v))} for k, v in PAPER_TABLE3.items()])


def _save_array(path: Path, x: np.ndarray) -> None:
    save_file({"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))}, str(path))


def load_array(path: Path) -> np.ndarray:
    """An array saved by the ladder (its cached item embeddings)."""
    return load_file(str(path))["x"].numpy()


def slug(name: str) -> str:
    """A row name as it appears in the ladder's cache file names."""
    return name.replace(" ", "_").replace("=", "")


def city_signals(catalog: pl.DataFrame, interactions: pl.DataFrame, negatives: NegativeSettings,
                 cooccurrence: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """The per-city signals as the per-city assets compute them: for each city_key, its negatives
    (far slots from the other cities) and its co-occurrence pairs (Eq. 5 over its interactions)."""
    from lgsid_pipeline.alignment.cooccurrence import cooccurrence_pairs

    lists, pairs, metrics = [], [], {}
    city_of = catalog.select(pl.col("item_id").cast(pl.Utf8), "city_key")
    inter = interactions.with_columns(pl.col("item_id").cast(pl.Utf8)).join(city_of, on="item_id")
    for city in sorted(catalog["city_key"].unique().to_list()):
        items = catalog.filter(pl.col("city_key") == city)
        others = catalog.filter(pl.col("city_key") != city)
        found, _ = city_negatives(items, others, negatives)
        lists.append(found.with_columns(pl.lit(city).alias("city_key")))
        ci = inter.filter(pl.col("city_key") == city).drop("city_key")
        if ci.height:
            res = cooccurrence_pairs(ci, **(cooccurrence or {}))
            pairs.append(res.pairs.with_columns(pl.lit(city).alias("city_key")))
            metrics[city] = res.metrics
    cooc = pl.concat(pairs, how="diagonal_relaxed") if pairs else None
    return pl.concat(lists, how="diagonal_relaxed"), cooc, metrics


@dataclass
class _LadderRun:
    """What every row of one ladder run shares: the data, the base encoder, the settings, the
    reward models fitted so far (by reward mode and negatives) and the diagnostics."""

    items: pl.DataFrame
    lists: pl.DataFrame
    cooc: pl.DataFrame | None
    encoder: TextEncoder
    enc_cfg: EncoderConfig
    gcfg: GDPOConfig
    r_cfg: RewardSettings
    p_cfg: PairSettings
    texts: list[str]
    reference: dict | None
    workdir: Path
    diag: dict
    rewards: dict[tuple[str, str], object] = field(default_factory=dict)


def _origin_embeddings(workdir: Path, encoder: TextEncoder, texts: list[str], diag: dict) -> np.ndarray:
    """The Origin row's item embeddings, cached in ``workdir`` (a fresh encode records its rate)."""
    path = workdir / f"emb_{slug('Origin')}.safetensors"
    if path.is_file():
        return load_array(path)
    t = time.perf_counter()
    x = encoder.encode(texts)
    diag["rows"].setdefault("Origin", {})["encode_items_per_s"] = len(texts) / (time.perf_counter() - t)
    _save_array(path, x)
    return x


def _run_row(run: _LadderRun, row: LadderRow) -> np.ndarray:
    """Fit (or reuse) the row's reward model, run its G-DPO and return its item embeddings (cached)."""
    key = (row.reward, row.negatives)
    if key not in run.rewards:
        run.rewards[key] = fit_reward(run.items, run.lists, run.encoder,
                                      replace(run.r_cfg, mode=row.reward, negatives=row.negatives),
                                      workdir=run.workdir / f"reward_{row.reward}_{row.negatives}")
        run.diag.setdefault("prompt_dedupe", {})[row.negatives] = run.rewards[key].dedupe
    rstage = run.rewards[key]
    stage = fit_gdpo(run.items, run.cooc if row.use_dc else None, run.encoder, rstage.model,
                     replace(run.gcfg, lam=row.lam), replace(run.p_cfg, use_dc=row.use_dc),
                     workdir=run.workdir / "gdpo", reward_source=row.reward_source,
                     reference_embeddings=run.reference)
    info: dict = {"reward": rstage.metrics, "pairs": stage.pairs.height,
                  "pairs_dc": int((stage.pairs["source"] == "dc").sum()), "gdpo": stage.result.metrics,
                  "reward_source": row.reward_source, "oracle": stage.oracle, "run_key": stage.run_key}
    run.diag["rows"].setdefault(row.name, {}).update(info)
    emb_path = run.workdir / f"emb_{slug(row.name)}-{stage.run_key}.safetensors"
    if emb_path.is_file():
        emb = load_array(emb_path)
    else:
        emb = load_aligned_encoder(run.enc_cfg, stage.adapter).encode(run.texts)
        _save_array(emb_path, emb)
    log.info("ladder row %s done", row.name)
    return emb


def _ladder_table(report, diag: dict) -> pl.DataFrame:
    """The overall rows of the report, one per variant, with G-DPO's held-out score beside them."""
    table = report.table.filter(pl.col("scope") == "overall").drop("scope")
    table = table.with_columns(pl.col("variant").replace("origin", "Origin"))
    held = {name: info["gdpo"].get("heldout_headroom_closed_best") for name, info in diag["rows"].items()
            if "gdpo" in info}
    return table.with_columns(pl.col("variant").replace_strict(held, default=None, return_dtype=pl.Float64)
                              .alias("heldout_score"))


def run_ladder(
    items: pl.DataFrame,
    interactions: pl.DataFrame,
    *,
    encoder_config: EncoderConfig | None = None,
    rows: list[LadderRow] | None = None,
    gdpo_config: GDPOConfig | None = None,
    negatives: NegativeSettings | None = None,
    reward_settings: RewardSettings | None = None,
    pair_settings: PairSettings | None = None,
    seed: int = 0,
    max_queries: int | None = None,
    workdir: Path | str,
) -> tuple[pl.DataFrame, dict]:
    """Run the ladder rows on ``items`` through the pipeline's own alignment code path
    (:mod:`lgsid_pipeline.alignment.stage`); returns (overall metrics per row, diagnostics).

    The settings default to the pipeline's (the asset defaults); each row only switches the reward
    mode, the negatives strategy, D_dc, lambda and the reward source. The table has one row per
    variant with top@K, p@K, c@K, t@K (K = 5, 10, 100) and NMI per level, from
    ``alignment_report`` over all items; ``heldout_score`` is G-DPO's own held-out validation
    figure (headroom closed on items that are no pair's target), the one to choose lambda on.
    """
    from lgsid_pipeline.alignment.metrics import alignment_report

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = rows or ladder_rows()
    enc_cfg = encoder_config or EncoderConfig()
    gcfg = replace(gdpo_config or GDPOConfig(eval_every=PIPELINE_EVAL_EVERY), seed=seed)
    neg_cfg = replace(negatives or NegativeSettings(), seed=seed)
    r_cfg = replace(reward_settings or RewardSettings(), seed=seed)
    p_cfg = replace(pair_settings or PairSettings(), seed=seed)
    if "city_key" not in items.columns:
        items = items.with_columns(pl.col("city").cast(pl.Utf8).fill_null("unknown").alias("city_key"))
    encoder = TextEncoder(enc_cfg)
    diag: dict = {"encoder_version": encoder.version, "n_items": items.height, "rows": {},
                  "gdpo_config": asdict(gcfg), "negatives": asdict(neg_cfg), "reward_settings": asdict(r_cfg),
                  "pair_settings": asdict(p_cfg), "seed": seed}
    texts = build_prompts(items)
    embeddings = {"origin": _origin_embeddings(workdir, encoder, texts, diag)}
    # E_ref of the true prompts, shared by rows. G-DPO's reference must come from the exact path
    # the policy trains on: when encode() ran the bfloat16 copy, G-DPO encodes its own.
    exact = encoder.fast_check["encode_dtype"] == encoder.identity["dtype"]
    reference = dict(zip(texts, embeddings["origin"])) if exact else None
    lists, cooc, cooc_metrics = city_signals(items, interactions, neg_cfg)
    diag["cooccurrence"] = {"pairs": 0 if cooc is None else cooc.height, "cities": len(cooc_metrics)}
    run = _LadderRun(items, lists, cooc, encoder, enc_cfg, gcfg, r_cfg, p_cfg, texts, reference, workdir, diag)
    for row in rows:
        if row.reward is not None:
            embeddings[row.name] = _run_row(run, row)

    group_col = "city_key" if "city_key" in items.columns else None
    report = alignment_report(embeddings, items, seed=seed, max_queries=max_queries, group_col=group_col)
    table = _ladder_table(report, diag)
    (workdir / "diagnostics.json").write_text(json.dumps(diag, indent=1, default=str))
    return table, diag
