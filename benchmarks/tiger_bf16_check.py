"""Does TigerConfig.bf16 move real-data results beyond seed noise? TIGER in float32 and with the
bf16 option, same SIDs, seeds, step budget and users, on a README split; per-user paired
comparison of test and validation Hit@10 / NDCG@10 (seeds averaged per user).

    .venv/bin/python benchmarks/tiger_bf16_check.py --data ../shared/data/gowalla_nyc \\
        [--method res_kmeans:origin] [--seeds 0,1,2] [--steps 1500] [--jobs 2] [--out FILE.json]

SIDs come from the shootout's machinery on float32 origin embeddings (the recorded tables'
path); every run has one torch thread, ``--jobs`` of them at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sid_shootout import build_sids, load_dataset, origin_embeddings, parse_method, ranked_items  # noqa: E402
from lgsid_pipeline.alignment.prompts import build_prompts  # noqa: E402
from lgsid_pipeline.recommenders.data import next_item_split  # noqa: E402
from lgsid_pipeline.recommenders.heuristics import item_counts  # noqa: E402
from lgsid_pipeline.recommenders.metrics import per_user_hit_ndcg, target_ranks  # noqa: E402
from lgsid_pipeline.recommenders.stats import paired_over_users  # noqa: E402
from lgsid_pipeline.recommenders.tiger import TigerConfig, train_and_evaluate_tiger  # noqa: E402
from lgsid_pipeline.tokenizers import default_codebook_sizes  # noqa: E402

_CTX: dict = {}


def _init(ctx: dict) -> None:
    import torch

    torch.set_num_threads(1)
    _CTX.update(ctx)


def _run(task: tuple[int, bool]) -> tuple[tuple[int, bool], dict]:
    seed, bf16 = task
    split, sid_map, cfg = _CTX["split"], _CTX["sid_map"], _CTX["cfg"]
    res = train_and_evaluate_tiger(split, sid_map, replace(cfg, seed=seed, bf16=bf16))
    per = {}
    for stage, target in (("valid", split.valid_target), ("test", split.test_target)):
        hit, ndcg = per_user_hit_ndcg(target_ranks(res.topk_idx[stage], target), 10)
        per[stage] = np.stack([hit, ndcg])
    return (seed, bf16), {"per_user": per, "seconds": res.seconds, "best_epoch": res.best_epoch,
                          "metrics": {k: float(v) for k, v in res.metrics.items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", default="res_kmeans:origin")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--max-valid-users", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", default=str(ROOT / ".lgsid" / "shootout-cache"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    items, inter = load_dataset(Path(args.data))
    split = next_item_split(inter, known_items=items["item_id"])
    ranked = ranked_items(split, items)
    X = {"origin": origin_embeddings(build_prompts(ranked), Path(args.cache), None, "float32")}
    sizes = default_codebook_sizes(split.n_items, 3)
    sids, _ = build_sids(parse_method(args.method, "item_id"), X, ranked, sizes, 3, item_counts(split, "valid"), 0)
    sid_map = dict(zip(split.item_ids, np.asarray(sids).tolist()))
    cfg = TigerConfig(epochs=1000, max_steps=args.steps, max_seconds=None, seed=0, max_valid_users=args.max_valid_users)
    tasks = [(s, b) for s in seeds for b in (False, True)]
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                             initargs=({"split": split, "sid_map": sid_map, "cfg": cfg},)) as pool:
        runs = dict(pool.map(_run, tasks))
    out = {"dataset": Path(args.data).name, "method": args.method, "seeds": seeds, "steps": args.steps,
           "command": " ".join(sys.argv), "wall_seconds": time.perf_counter() - t0,
           "load_average_start": load0, "load_average_end": os.getloadavg()[0], "runs": [], "paired": {}}
    for (seed, bf16), r in sorted(runs.items()):
        out["runs"].append({"seed": seed, "bf16": bf16, "seconds": r["seconds"], "best_epoch": r["best_epoch"],
                            **{k: v for k, v in r["metrics"].items() if k.startswith(("valid_", "test_"))}})
    for stage in ("valid", "test"):
        mean = {b: np.mean([runs[(s, b)]["per_user"][stage] for s in seeds], axis=0) for b in (False, True)}
        for i, metric in enumerate(("hit@10", "ndcg@10")):
            out["paired"][f"{stage}_{metric}"] = paired_over_users(mean[True][i], mean[False][i])
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1, default=float))
    for r in out["runs"]:
        print(r)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


if __name__ == "__main__":
    main()
