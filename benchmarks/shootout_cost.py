"""What the SID shootout's default budget costs on this machine, and the floor under it.

    .venv/bin/python -m benchmarks.shootout_cost --data ../shared/data/gowalla_nyc \
        [--steps 40] [--out benchmarks/results/speed/shootout_cost.json]

The shootout's default is every default method (7) x 3 seeds, each a TIGER run of 1,500
optimiser steps plus a DIN run, in 2 one-thread worker processes. This measures, in one run and
on one thread (as each worker has), on the README split of ``--data`` with hgit:origin SIDs:

- seconds per TIGER training step of the real loop (the fast path, float32 as the tables use,
  and the bf16 option), over ``--steps`` steps after a warm-up;
- the share of a step spent in matrix products (``aten::mm``/``addmm``/``bmm`` self time under
  torch.profiler): the work that no overhead removal can take away at this model size;
- one run's validation, ranking and DIN time, from a short real run of the shootout's path.

It prints the projected wall time of the default shootout, ``runs x (steps x s/step + rest) /
jobs``, and the floor ``runs x steps x matmul s/step / jobs``: the time the matrix products
alone need, at this model size and float32, on this CPU. It is a measurement of where the time
goes, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.sid_shootout as S  # noqa: E402
import lgsid_pipeline.recommenders.tiger as T  # noqa: E402
from lgsid_pipeline.recommenders.din import DINConfig, train_and_evaluate_din  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def step_profile(split, sid_map, cfg: T.TigerConfig, steps: int) -> dict:
    """Seconds per training step and the matrix products' share, on the real training step."""
    gen = T.seed_all(cfg.seed)
    codec = T.SIDCodec(T.sid_codes_for(split, sid_map))
    tk = T.Tokens(codec, cfg, split)
    model = T.TigerModel(cfg, codec.n_codes, codec.levels)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    samples = T.training_prefixes(split, cfg.max_history)  # (users, histories, targets)
    perm = torch.randperm(samples[2].size, generator=gen).numpy()
    batches = T.epoch_batches(perm, (samples[1] >= 0).sum(1), cfg, gen)

    def step(idx):
        T.train_step(model, opt, tk, samples, idx)

    model.train()
    for b in batches[:10]:  # warm-up
        step(b)
    t = time.perf_counter()
    for b in batches[10 : 10 + steps]:
        step(b)
    per_step = (time.perf_counter() - t) / steps
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[10 + steps : 10 + 2 * steps]:
            step(b)
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    mm = sum(e.self_cpu_time_total for e in ev if e.key in MATMUL_OPS)
    return {"s_per_step": per_step, "matmul_share": mm / total, "matmul_s_per_step": per_step * mm / total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=40, help="timed steps (and as many profiled)")
    ap.add_argument("--short-run-steps", type=int, default=60, help="steps of the short real run (rest-of-run time)")
    ap.add_argument("--cache", default=str(ROOT / ".lgsid" / "shootout-cache"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    items, inter = S.load_dataset(Path(args.data))
    split = S.next_item_split(inter, known_items=items["item_id"])
    ranked = S.ranked_items(split, items)
    prompts = S.build_prompts(ranked, template=S.prompt_template(S.DEFAULT_TEMPLATE_NAME, False))
    X = {"origin": S.origin_embeddings(prompts, Path(args.cache), None, "float32")}
    sizes = S.default_codebook_sizes(split.n_items, 3)
    sids, _ = S.build_sids(S.parse_method("hgit:origin", "item_id"), X, ranked, sizes, 3,
                           S.item_counts(split, "valid"), 0, S.DEFAULT_HUB_SHARE)
    sid_map = dict(zip(split.item_ids, sids.tolist()))
    base = T.TigerConfig(epochs=1000, max_steps=1500, max_seconds=None, seed=0, max_valid_users=1000)
    fp32 = step_profile(split, sid_map, base, args.steps)
    bf16 = step_profile(split, sid_map, replace(base, bf16=True), args.steps)

    # the rest of one run: validation each epoch, final ranking, local mode, DIN
    short = replace(base, max_steps=args.short_run_steps)
    t = time.perf_counter()
    res = T.train_and_evaluate_tiger(split, sid_map, short)
    total = time.perf_counter() - t  # training, one validation pass per epoch, the final rankings
    per_val = float(np.mean([h["epoch_seconds"] - h["train_seconds"] for h in res.history]))  # early-stopping pass
    final_s = total - sum(h["epoch_seconds"] for h in res.history)  # valid and test rankings of every user
    epochs_in_budget = int(np.ceil(1500 * base.batch_size / T.training_prefixes(split, base.max_history)[2].size))
    lat = S.item_attribute(split, ranked, "lat").astype(np.float64)
    lon = S.item_attribute(split, ranked, "lon").astype(np.float64)
    cands = S.local_candidates(split, lat, lon, "test", km=5.0)
    t = time.perf_counter()
    S.tiger_local_topk(res.model, T.Tokens(res.codec, short, split), split, "test", short, cands)
    local_s = time.perf_counter() - t
    t = time.perf_counter()
    train_and_evaluate_din(split, sid_map, DINConfig(epochs=3, seed=0))
    din_s = time.perf_counter() - t

    runs, jobs, steps = len(S.DEFAULT_METHODS) * 3, 2, 1500
    rest = per_val * epochs_in_budget + final_s + local_s + din_s
    out = {
        "data": args.data, "threads": 1, "load_1min": [load0, os.getloadavg()[0]],
        "default_budget": {"methods": list(S.DEFAULT_METHODS), "seeds": 3, "tiger_steps": steps, "jobs": jobs},
        "tiger_step_float32": fp32, "tiger_step_bf16": bf16,
        "rest_of_a_run_s": {"validation_per_epoch": per_val, "epochs_in_budget": epochs_in_budget,
                            "final_rankings": final_s,
                            "local_mode": local_s, "din_3_epochs": din_s, "total": rest},
        "projected_wall_s": runs * (steps * fp32["s_per_step"] + rest) / jobs,
        "projected_wall_s_bf16": runs * (steps * bf16["s_per_step"] + rest) / jobs,
        "floor_matmul_only_s": runs * steps * fp32["matmul_s_per_step"] / jobs,
        "bound_s": 1800,
    }
    print(json.dumps(out, indent=2))
    print(f"projected default shootout: {out['projected_wall_s'] / 60:.1f} min (bf16 option "
          f"{out['projected_wall_s_bf16'] / 60:.1f} min); the float32 matrix products alone: "
          f"{out['floor_matmul_only_s'] / 60:.1f} min; bound 30 min")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
