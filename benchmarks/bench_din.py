"""DIN training speed: the default forward against the printed form, same data, SIDs, seeds
and steps, in one process.

    python -m benchmarks.bench_din --home HOME [--method hgit_geo_last_origin] [--seeds 0,1,2] \
        [--epochs 2] [--out benchmarks/results/speed/din.json]

``HOME`` is a materialized pipeline home (its ``user_interactions`` and ``sid_table``), e.g.
``lgsid materialize --preset cities-150 --home HOME``. Both contenders train with one torch
thread (as in the evaluation's workers), alternating per seed so that drifting machine load
falls on both. ``PrintedDIN`` looks up the ID and each SID level at every history position and
feeds the concatenated [h, t, h - t, h * t] to the activation unit; ``DIN`` indexes one item
table per step and splits the unit's first layer by input block (the same function and
parameters, tests/test_recommenders_models.py). Prints training samples/s of each, the ratio
per seed and its median, and test/valid AUC per seed, so the change in numbers can be read
against the seed spread. Prints the machine's load at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lgsid_pipeline.recommenders.data import next_item_split  # noqa: E402
from lgsid_pipeline.recommenders.din import DIN, DINConfig, PrintedDIN, train_and_evaluate_din  # noqa: E402


def _table(home: Path, name: str) -> pl.DataFrame:
    from resources.home import LgsidHome

    return LgsidHome(home=str(home), tables_uri=None).read(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--method", default="hgit_geo_last_origin")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=2, help="the evaluation's default (din_epochs)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    split = next_item_split(_table(args.home, "user_interactions"), min_core=5)
    sids = _table(args.home, "sid_table").filter(pl.col("method") == args.method)
    if sids.height == 0:
        raise SystemExit(f"no SIDs of method {args.method!r} in {args.home}")
    rows = []
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        order = [("DIN", DIN), ("PrintedDIN", PrintedDIN)]
        for name, cls in (order if i % 2 == 0 else order[::-1]):
            cfg = DINConfig(epochs=args.epochs, seed=seed, threads=1, patience=args.epochs + 1)
            t = time.perf_counter()
            res = train_and_evaluate_din(split, sids, cfg, model_cls=cls)
            secs = time.perf_counter() - t
            # every prefix with neg_ratio negatives, every epoch (patience > epochs: no early stop)
            samples = sum(max(len(s_) - 1, 0) for s_ in split.train_seqs) * (cfg.neg_ratio + 1) * len(res.history)
            rows.append({"model": name, "seed": seed, "seconds": round(secs, 2),
                         "samples_per_s": round(samples / secs, 1), **{k: round(v, 5) for k, v in res.metrics.items()}})
            print(json.dumps(rows[-1]), flush=True)
    frame = pl.DataFrame(rows)
    fast = frame.filter(pl.col("model") == "DIN").sort("seed")
    ref = frame.filter(pl.col("model") == "PrintedDIN").sort("seed")
    ratios = (fast["samples_per_s"] / ref["samples_per_s"]).to_list()
    out = {
        "home": str(args.home), "method": args.method, "epochs": args.epochs, "threads": 1,
        "users": split.n_users, "items": split.n_items, "runs": rows,
        "ratio_per_seed": [round(r, 3) for r in ratios], "ratio_median": round(float(np.median(ratios)), 3),
        "auc_diff_per_seed": [round(a - b, 5) for a, b in zip(fast["auc"], ref["auc"])],
        "auc_seed_spread": {"DIN": round(float(fast["auc"].max() - fast["auc"].min()), 5),
                            "PrintedDIN": round(float(ref["auc"].max() - ref["auc"].min()), 5)},
        "load_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
