"""Table 3 ablation ladder (Origin, DPO-PR, DPO-LR, DPO-LRD, DPO-LRDM, DPO-LRDMS, G-DPO).

    .venv/bin/python benchmarks/run_ladder.py --data demo --max-items 2000 --seed 0
    .venv/bin/python benchmarks/run_ladder.py --data /work/shared/data/gowalla_nyc --max-items 1500

Prints (and writes with --out) a markdown table of our ladder next to the paper's, the relative
change of every row against Origin (the baseline measured in the same run), the reward-model
held-out ranking quality and the G-DPO CPU cost. Work is cached in --workdir, so a run that is
stopped can be restarted with the same command and continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import polars as pl

from lgsid_pipeline.encoder import EncoderConfig
from lgsid_pipeline.gdpo import GDPOConfig
from lgsid_pipeline.ladder import ladder_rows, paper_table, run_ladder


def load_data(data: str, max_items: int | None, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    if data in ("demo", "test"):
        from lgsid_pipeline.world import generate_world

        world = generate_world(data, seed=seed)
        items, inter = world.items, world.interactions
    else:
        root = Path(data)
        items = pl.read_parquet(root / "items.parquet")
        inter = pl.read_parquet(root / "interactions.parquet")
        items = items.filter(pl.col("lat").is_not_null() & pl.col("lon").is_not_null())
    if max_items is not None and items.height > max_items:
        items = items.sample(n=max_items, seed=seed).sort("item_id")
    inter = inter.filter(pl.col("item_id").is_in(items["item_id"].implode()))
    return items, inter


def markdown(df: pl.DataFrame, digits: int = 4) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.iter_rows():
        lines.append("| " + " | ".join(
            (f"{v:.{digits}f}" if isinstance(v, float) else str(v)) for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="demo")
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    ap.add_argument("--gdpo-lam", type=float, default=None, help="lambda of the G-DPO row")
    ap.add_argument("--extra-lams", default="", help="extra G-DPO rows, e.g. 0.3,5")
    ap.add_argument("--max-pairs", type=int, default=800)
    ap.add_argument("--reward-anchors", type=int, default=300)
    ap.add_argument("--far-share", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--eval-pairs", type=int, default=256)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    t0 = time.perf_counter()
    items, inter = load_data(args.data, args.max_items, args.seed)
    base = GDPOConfig()
    gcfg = GDPOConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr or base.lr,
                      eval_pairs=args.eval_pairs,
                      lam=args.gdpo_lam if args.gdpo_lam is not None else base.lam)
    extra = tuple(float(x) for x in args.extra_lams.split(",") if x)
    rows = ladder_rows(gcfg.lam, extra)
    if args.rows:
        want = set(args.rows.split(","))
        rows = [r for r in rows if r.name in want]
    tag = Path(args.data).name
    workdir = Path(args.workdir or f"/tmp/lgsid_ladder/{tag}_{args.max_items}_{args.seed}")
    table, diag = run_ladder(items, inter, encoder_config=EncoderConfig(model_path=args.model_path, max_length=args.max_length),
                             rows=rows, gdpo_config=gcfg, seed=args.seed, max_pairs=args.max_pairs,
                             reward_anchors=args.reward_anchors, far_share=args.far_share, max_queries=args.max_queries,
                             workdir=workdir)
    origin = table.filter(pl.col("variant") == "Origin").row(0, named=True)
    rel = table.select(
        "variant",
        *[((pl.col(c) / origin[c] - 1) * 100).round(1).alias(f"{c} %")
          for c in ("top@5", "c@5", "t@5", "nmi_city")],
    )
    cost = []
    for name, info in diag["rows"].items():
        if "gdpo" in info:
            g, r = info["gdpo"], info["reward"]
            cost.append({"variant": name, "pairs": info["pairs"], "pairs_dc": info["pairs_dc"],
                         "steps": g["steps"], "s_per_1k_pairs": g["seconds_per_1k_pairs"],
                         "policy_margin": g["policy_margin"], "ref_margin": g["reference_margin"],
                         "rm_spearman": r["heldout_spearman"], "rm_spearman_untrained": r["untrained_spearman"],
                         "rm_ndcg": r["heldout_ndcg"], "rm_ndcg_untrained": r["untrained_ndcg"]})
    out = [f"data={args.data} items={items.height} interactions={inter.height} seed={args.seed} "
           f"encoder={diag['encoder_version']} wall={time.perf_counter() - t0:.0f}s",
           f"G-DPO config: {json.dumps(diag['gdpo_config'])}",
           f"co-occurrence: {json.dumps(diag.get('cooccurrence', {}), default=str)}", "",
           "### Ours (overall scope)", markdown(table.drop("n_items", "n_queries")), "",
           "### Relative change vs Origin (same run)", markdown(rel, 1), "",
           "### Reward model (held-out anchors) and G-DPO cost", markdown(pl.DataFrame(cost), 3) if cost else "", "",
           "### Paper Table 3", markdown(paper_table())]
    text = "\n".join(out)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
