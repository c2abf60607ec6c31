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
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from lgsid_pipeline.alignment.stage import PIPELINE_EVAL_EVERY, NegativeSettings, PairSettings, RewardSettings
from lgsid_pipeline.alignment.encoder import EncoderConfig
from lgsid_pipeline.alignment.gdpo import GDPOConfig
from lgsid_pipeline.alignment.ladder import ladder_rows, paper_table, run_ladder


def train_split(items: pl.DataFrame, inter: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The README next-item split's ranked items and their training interactions only, so that
    aligned embeddings used downstream (``--aligned-out``) never saw a validation or test target."""
    from lgsid_pipeline.recommenders.data import next_item_split

    split = next_item_split(inter, known_items=items["item_id"].cast(pl.Utf8))
    users = np.repeat(np.array(split.user_ids, dtype=object), [len(t) for t in split.train_seqs])
    seqs = np.concatenate(split.train_seqs)
    order = np.concatenate([np.arange(len(t)) for t in split.train_seqs])
    train = pl.DataFrame({"user_id": users.astype(str), "item_id": np.array(split.item_ids, dtype=object)[seqs]
                          .astype(str), "seq_idx": order})
    ranked = items.filter(pl.col("item_id").cast(pl.Utf8).is_in(split.item_ids))
    return ranked, train


def load_data(data: str, max_items: int | None, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    if data in ("demo", "test"):
        from lgsid_pipeline.world.generator import generate_world

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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="demo")
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    ap.add_argument("--gdpo-lam", type=float, default=None, help="lambda of the G-DPO row")
    ap.add_argument("--extra-lams", default="", help="extra G-DPO rows, e.g. 0.3,5")
    ap.add_argument("--oracle", action="store_true", help="add the 'G-DPO oracle-R' row")
    ap.add_argument("--negatives", default="density", choices=("density", "distinct"),
                    help="negative lists of the rows from DPO-LRD on")
    ap.add_argument("--train-only", action="store_true",
                    help="the next-item split's ranked items and training interactions only (for --aligned-out)")
    ap.add_argument("--max-steps", type=int, default=None, help="G-DPO step budget (default: the pipeline's)")
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--reward-anchors", default=None,
                    help="anchors in all, or 'all' for every item (default: the pipeline's)")
    ap.add_argument("--anchors-floor", type=int, default=None)
    ap.add_argument("--far-share", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--sim-reading", default=None, choices=("printed", "pull"))
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--eval-pairs", type=int, default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="markdown report")
    ap.add_argument("--json", default=None, help="the table and diagnostics as JSON")
    ap.add_argument("--aligned-out", default=None,
                    help="ROW=PATH: write that row's item embeddings as parquet (item_id, embedding)")
    return ap


def _given(**kw):
    return {k: v for k, v in kw.items() if v is not None}


def settings(args) -> dict:
    """run_ladder's keyword arguments from the command line (None = the pipeline's default)."""
    gcfg = replace(GDPOConfig(eval_every=PIPELINE_EVAL_EVERY),
                   **_given(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, eval_pairs=args.eval_pairs,
                           lam=args.gdpo_lam, sim_reading=args.sim_reading, eval_every=args.eval_every,
                           max_length=args.max_length))
    neg = replace(NegativeSettings(), **_given(far_share=args.far_share))
    rset = replace(RewardSettings(), **_given(anchors_floor=args.anchors_floor))
    if args.reward_anchors is not None:
        rset = replace(rset, anchors_total=None if args.reward_anchors == "all" else int(args.reward_anchors))
    pset = replace(PairSettings(), **_given(max_steps=args.max_steps, max_pairs=args.max_pairs))
    extra = tuple(float(x) for x in args.extra_lams.split(",") if x)
    rows = ladder_rows(gcfg.lam, extra, oracle=args.oracle, negatives=args.negatives)
    if args.rows:
        want = set(args.rows.split(","))
        rows = [r for r in rows if r.name in want]
    tag = Path(args.data).name
    workdir = Path(args.workdir or f"/tmp/lgsid_ladder/{tag}_{args.max_items}_{args.seed}")
    enc_cfg = EncoderConfig(**_given(model_path=args.model_path, max_length=args.max_length))
    return dict(encoder_config=enc_cfg, rows=rows, gdpo_config=gcfg, negatives=neg, reward_settings=rset,
                pair_settings=pset, seed=args.seed, max_queries=args.max_queries, workdir=workdir)


def main() -> None:
    args = parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    items, inter = load_data(args.data, args.max_items, args.seed)
    if args.train_only:
        items, inter = train_split(items, inter)
    kwargs = settings(args)
    table, diag = run_ladder(items, inter, **kwargs)
    if args.aligned_out:
        row, _, path = args.aligned_out.partition("=")
        write_embeddings(items, kwargs["workdir"], row, diag, Path(path))
    text = report(args, items, inter, table, diag, t0)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "table": table.to_dicts(),
                                               "diagnostics": diag, "wall_s": time.perf_counter() - t0},
                                              indent=1, default=str))


def report(args, items: pl.DataFrame, inter: pl.DataFrame, table: pl.DataFrame, diag: dict, t0: float) -> str:
    """The markdown report: the table, its change against Origin, R and G-DPO costs, paper Table 3."""
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
            cost.append({"variant": name, "reward": info["reward_source"], "pairs": info["pairs"],
                         "pairs_dc": info["pairs_dc"], "steps": g["steps"], "best_step": g.get("best_step"),
                         "s_per_1k_pairs": g["seconds_per_1k_pairs"],
                         "r_pair_acc": g["reference_pair_acc"], "policy_pair_acc": g["policy_pair_acc"],
                         "oracle_pair_acc": info["oracle"].get("pair_acc"),
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
    return "\n".join(out)


def write_embeddings(items: pl.DataFrame, workdir: Path, row: str, diag: dict, path: Path) -> None:
    """A ladder row's item embeddings as the shootout's --aligned parquet (item_id, embedding)."""
    from lgsid_pipeline.alignment.ladder import load_array, slug

    key = diag["rows"].get(row, {}).get("run_key")
    if key is None:
        raise SystemExit(f"error: row {row!r} was not run (rows run: {sorted(diag['rows'])})")
    x = load_array(workdir / f"emb_{slug(row)}-{key}.safetensors")
    pl.DataFrame({"item_id": items["item_id"].cast(pl.Utf8), "embedding": x.tolist()}).write_parquet(path)


if __name__ == "__main__":
    main()
