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

Everything is cached under ``workdir`` (prompt-list embeddings, reward models, adapters, item
embeddings per row), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from lgsid_pipeline.encoder import EncoderConfig, TextEncoder
from lgsid_pipeline.gdpo import GDPOConfig, build_preference_pairs, load_aligned_encoder, train_gdpo
from lgsid_pipeline.prompts import build_prompts
from lgsid_pipeline.reward import (
    common_list_length,
    encode_prompt_lists,
    load_reward_model,
    save_reward_model,
    train_reward_model,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LadderRow:
    name: str
    reward: str | None  # None (Origin) | "pointwise" | "listwise"
    negatives: str = "plain"  # "plain" | "density"
    use_dc: bool = False
    lam: float = 0.0


def ladder_rows(gdpo_lam: float = 0.1, extra_lams: tuple[float, ...] = ()) -> list[LadderRow]:
    rows = [
        LadderRow("Origin", None),
        LadderRow("DPO-PR", "pointwise", "plain"),
        LadderRow("DPO-LR", "listwise", "plain"),
        LadderRow("DPO-LRD", "listwise", "density"),
        LadderRow("DPO-LRDM", "listwise", "density", use_dc=True),
        LadderRow("DPO-LRDMS", "listwise", "density", use_dc=True, lam=1.0),
        LadderRow("G-DPO", "listwise", "density", use_dc=True, lam=gdpo_lam),
    ]
    rows += [LadderRow(f"G-DPO lam={lam:g}", "listwise", "density", True, lam) for lam in extra_lams]
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


def _load_array(path: Path) -> np.ndarray:
    return load_file(str(path))["x"].numpy()


def run_ladder(
    items: pl.DataFrame,
    interactions: pl.DataFrame,
    *,
    encoder_config: EncoderConfig | None = None,
    rows: list[LadderRow] | None = None,
    gdpo_config: GDPOConfig | None = None,
    seed: int = 0,
    k_neg: int = 15,
    far_share: float = 0.2,
    reward_anchors: int = 300,
    reward_epochs: int = 40,
    max_pairs: int = 800,
    max_queries: int | None = None,
    workdir: Path | str,
) -> tuple[pl.DataFrame, dict]:
    """Run the ladder rows on ``items``; returns (overall metrics per row, diagnostics).

    About ``reward_anchors`` anchors (a seeded sample per city) give the reward model's K+1
    prompt lists, ``far_share`` of each list's K slots being items of other cities;
    ``max_pairs`` caps G-DPO's preference pairs per row. The table has one row per variant with
    top@K, p@K, c@K, t@K (K = 5, 10, 100) and NMI per level, from ``alignment_report``.
    """
    from lgsid_pipeline.alignment_metrics import alignment_report
    from lgsid_pipeline.cooccurrence import cooccurrence_pairs
    from lgsid_pipeline.negatives import dedupe_prompt_lists, distance_ranked_negatives, mismatched_prompts

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = rows or ladder_rows()
    enc_cfg = encoder_config or EncoderConfig()
    gcfg = replace(gdpo_config or GDPOConfig(), seed=seed)
    if "city_key" not in items.columns:
        items = items.with_columns(pl.col("city").fill_null("unknown").alias("city_key"))
    encoder = TextEncoder(enc_cfg)
    diag: dict = {"encoder_version": encoder.version, "n_items": items.height, "rows": {},
                  "gdpo_config": asdict(gcfg), "seed": seed}
    texts = build_prompts(items)

    def item_embeddings(name: str, enc: TextEncoder) -> np.ndarray:
        path = workdir / f"emb_{name.replace(' ', '_').replace('=', '')}.safetensors"
        if path.is_file():
            return _load_array(path)
        t = time.perf_counter()
        x = enc.encode(texts)
        diag["rows"].setdefault(name, {})["encode_items_per_s"] = len(texts) / (time.perf_counter() - t)
        _save_array(path, x)
        return x

    embeddings = {"origin": item_embeddings("Origin", encoder)}
    reference = dict(zip(texts, embeddings["origin"]))  # E_ref of the true prompts, shared by rows

    # Reward models, one per (reward mode, negatives strategy) used.
    lists_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prompt_lists(strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
        if strategy in lists_cache:
            return lists_cache[strategy]
        path = workdir / f"lists_{strategy}.safetensors"
        if path.is_file():
            t = load_file(str(path))
            lists_cache[strategy] = (t["E"], t["labels"])
            return lists_cache[strategy]
        per_city = -(-reward_anchors // max(items["city_key"].n_unique(), 1))
        neg = distance_ranked_negatives(items, k=k_neg, strategy=strategy, seed=seed, max_anchors=per_city,
                                        far_items=items if far_share > 0 else None, far_share=far_share)
        lists = neg.lists
        prompts_df, dedupe = dedupe_prompt_lists(mismatched_prompts(items, lists))
        diag.setdefault("prompt_dedupe", {})[strategy] = dedupe
        e, labels, _ = encode_prompt_lists(encoder, prompts_df, k=common_list_length(prompts_df))
        save_file({"E": e.contiguous(), "labels": labels.contiguous()}, str(path))
        lists_cache[strategy] = (e, labels)
        return e, labels

    def reward_model(mode: str, strategy: str):
        rdir = workdir / f"reward_{mode}_{strategy}"
        if (rdir / "reward_model.json").is_file() and (rdir / "metrics.json").is_file():
            return load_reward_model(rdir), json.loads((rdir / "metrics.json").read_text())
        e, labels = prompt_lists(strategy)
        res = train_reward_model(e, labels, mode=mode, epochs=reward_epochs, lr=3e-3, seed=seed,
                                 checkpoint_dir=rdir / "ckpt")
        save_reward_model(res.model, rdir)
        (rdir / "metrics.json").write_text(json.dumps(res.metrics, indent=1))
        return res.model, res.metrics

    cooc = None
    for row in rows:
        if row.reward is None:
            continue
        rm, rmetrics = reward_model(row.reward, row.negatives)
        if row.use_dc and cooc is None:
            cooc = cooccurrence_pairs(interactions.filter(pl.col("item_id").is_in(items["item_id"].implode())))
            diag["cooccurrence"] = {k: v for k, v in cooc.metrics.items()}
        pairs = build_preference_pairs(items, cooc.pairs if row.use_dc else None, seed=seed,
                                       use_dc=row.use_dc, max_pairs=max_pairs)
        rdir = workdir / f"gdpo_{row.name.replace(' ', '_').replace('=', '')}"
        info: dict = {"reward": rmetrics, "pairs": pairs.height,
                      "pairs_dc": int((pairs["source"] == "dc").sum())}
        emb_path = workdir / f"emb_{row.name.replace(' ', '_').replace('=', '')}.safetensors"
        if not emb_path.is_file():
            res = train_gdpo(encoder, rm, items, pairs, replace(gcfg, lam=row.lam), checkpoint_dir=rdir,
                             reference_embeddings=reference)
            (rdir / "metrics.json").write_text(json.dumps(res.metrics, indent=1))
            aligned = load_aligned_encoder(enc_cfg, res.adapter_path)
        else:
            aligned = None
        info["gdpo"] = json.loads((rdir / "metrics.json").read_text())
        diag["rows"].setdefault(row.name, {}).update(info)
        embeddings[row.name] = item_embeddings(row.name, aligned) if aligned else _load_array(emb_path)
        log.info("ladder row %s done", row.name)

    group_col = "city_key" if "city_key" in items.columns else None
    report = alignment_report(embeddings, items, seed=seed, max_queries=max_queries, group_col=group_col)
    table = report.table.filter(pl.col("scope") == "overall").drop("scope")
    table = table.with_columns(pl.col("variant").replace("origin", "Origin"))
    (workdir / "diagnostics.json").write_text(json.dumps(diag, indent=1, default=str))
    return table, diag
