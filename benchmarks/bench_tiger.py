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
  number of steps), to show the fast path learns the same;
- the ``TigerConfig.bf16`` option (off by default): its own training run (same seed and
  steps), its beam search on the fast model's weights, and the share of users whose top-10
  it keeps.

Prints every figure with the ratio fast / reference and the 1-minute load average, and writes
them to ``--out`` as JSON.

cornac's TIGER (``cornac.models.TIGER``, a benchmark-only dependency) is compared when cornac is
importable; otherwise the JSON says it was not run. It gets the same items and the same SIDs
(ours are injected in place of its tokenizer, so only the seq2seq part is compared), the same
sizes as far as its T5 stack allows, the same training samples and the same thread count; its
own training loop runs ``--steps`` optimiser steps and its own beam-search ``score`` ranks
``--cornac-users`` of the same users (see :func:`compare_cornac`; ``differences`` in the JSON
lists what is not the same).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sid_shootout import build_sids, load_dataset, origin_embeddings, parse_method, ranked_items  # noqa: E402
from lgsid_pipeline.alignment.prompts import build_prompts  # noqa: E402
from lgsid_pipeline.recommenders.data import SplitData, next_item_split  # noqa: E402
from lgsid_pipeline.recommenders.heuristics import item_counts  # noqa: E402
from lgsid_pipeline.recommenders.metrics import topk_metrics  # noqa: E402
from lgsid_pipeline.recommenders.tiger import (TigerConfig, TigerModel, Tokens, beam_search,  # noqa: E402
                                               history_matrix, rank_users, train_tiger, trim)
from lgsid_pipeline.tokenizers import default_codebook_sizes  # noqa: E402


def _train(split, sid_map, cfg):
    model, codec, tk, hist, _ = train_tiger(split, sid_map, cfg)
    secs = sum(h["train_seconds"] for h in hist)
    return model, codec, tk, hist[-1]["steps"] / secs


def _rank(model, tk, hist, users, masked, cfg):
    t = time.perf_counter()
    items, _ = rank_users(model, tk, hist, users, masked, cfg, cfg.k)
    return items, users.size / (time.perf_counter() - t)


def _latency_ms(model, tk, hist, cfg, n=50) -> float:
    ts = []
    for u in range(min(n, hist.shape[0])):
        src = tk.encoder_input(trim(hist[u : u + 1], cfg), np.array([u]))
        t = time.perf_counter()
        beam_search(model, tk.codec, src, cfg.beams)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def _as(model: TigerModel, cfg: TigerConfig) -> TigerModel:
    other = TigerModel(cfg, model.n_codes, model.levels)
    other.load_state_dict(model.state_dict())
    return other.eval()


def _cornac_train_set(split: SplitData):
    """cornac's SequentialDataset of the training sequences: one session per user, and the
    user and item index maps pre-filled with the identity, so cornac's internal indices are
    ours and every catalogue item is known (also items seen only as validation targets)."""
    from cornac.data import SequentialDataset

    rows = [(u, u, int(i), t) for u, s in enumerate(split.train_seqs) for t, i in enumerate(s)]
    return SequentialDataset.build(rows, fmt="USIT", global_uid_map=OrderedDict((u, u) for u in range(split.n_users)),
                                   global_iid_map=OrderedDict((i, i) for i in range(split.n_items)))


def _cornac_model(codes: np.ndarray, cfg: TigerConfig):
    """cornac's TIGER on our SIDs: its tokenizer is skipped (``codes`` row ``i`` is item ``i``'s
    full SID, dedup digit included); its seq2seq model, training loop and beam search are its own."""
    from cornac.models import TIGER

    class GivenSIDTIGER(TIGER):
        def _get_item_features(self):
            return np.zeros((self.total_items, 0), dtype="float32")  # no content features: SIDs are given

        def _tokenize(self, torch_module, feats_t):
            return codes

        def _build_semantic_ids(self, sid_codes):
            # cornac appends its own dedup level; ours are unique already, so it is all zeros: drop it
            super()._build_semantic_ids(sid_codes)
            self.sid_table = self.sid_table[:, :-1]
            self.level_sizes = [int(v) for v in self.sid_table.max(0) + 1]
            self.prefix_children = self.prefix_children[:-1]
            self.sid_to_item = {sid[:-1]: i for sid, i in self.sid_to_item.items()}

    # rqvae_num_levels = our SID width: cornac sizes its trie by it (plus the level it appends)
    return GivenSIDTIGER(
        tokenizer="rkmeans", rqvae_num_levels=codes.shape[1], rqvae_codebook_size=int(codes.max()) + 1,
        d_model=cfg.d_model, d_ff=cfg.ff_dim, num_heads=cfg.heads, d_kv=cfg.d_model // cfg.heads,
        num_enc_layers=cfg.enc_layers, num_dec_layers=cfg.dec_layers, dropout=cfg.dropout, max_len=cfg.max_history,
        n_epochs=1, learning_rate=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
        lr_schedule="constant", model_selection="last", scoring="beam", n_beams=cfg.beams, device="cpu", seed=cfg.seed)


def _cornac_differences(cfg: TigerConfig, levels: int) -> list[str]:
    enc_ours = cfg.max_history * (levels if cfg.history_tokens == "flat" else 1)
    out = [
        "blocks: cornac uses transformers' T5Stack (RMS-style T5LayerNorm without bias, no bias in any linear layer, "
        "no 1/sqrt(d_kv) attention scaling, relative position bias of 32 buckets / max distance 128 in the first "
        "block of each stack); ours are pre-norm nn.Transformer layers (LayerNorm with bias, biased linears, "
        "scaled attention) with learned absolute position embeddings (encoder right-aligned, decoder per level)",
        f"encoder input: cornac feeds {levels} tokens per history item, always {cfg.max_history * levels} positions "
        f"(left-padded to max_len={cfg.max_history}); ours ({cfg.history_tokens!r}) feeds {enc_ours} positions at most"
        + (", one per item (the sum of its SID-token embeddings)" if cfg.history_tokens == "item" else "")
        + (" and drops the columns that are padding in every row of a batch" if cfg.fast else ""),
        "decoder input: cornac prompts with a learned BOS vector and adds no position embedding; ours uses a BOS "
        "token embedding plus a decoder position embedding",
        "output: cornac has one bias-free linear head per level; ours one biased linear over all codes, sliced per "
        "level (both: a softmax over the level's own codes)",
        f"loss: cornac sums the per-level mean cross-entropies (= {levels} x ours, the mean over levels); "
        f"both AdamW, lr {cfg.lr}, weight decay {cfg.weight_decay}",
        f"dropout {cfg.dropout} in both; T5 also drops the input embeddings and the final stack output; ours drops "
        "attention weights, residual branches and the feed-forward hidden layer only",
        "batches: cornac shuffles users and cuts their consecutive prefixes into batches (a user's samples sit "
        "together; each pass ends with a partial batch)"
        + (f"; ours shuffles the samples and sorts each run of {cfg.length_buckets} batches by history length"
           if cfg.fast and cfg.length_buckets else "; ours shuffles the samples"),
        "ranking: cornac scores one user per call (batch 1), re-runs the decoder on the whole prefix at every level "
        "with the encoder memory expanded per beam, masks the trie in a Python loop over beams and returns a "
        f"full-catalogue score vector; ours ranks {cfg.eval_batch} users per batch with a key/value-cached decoder, "
        "a dense trie table and the masked last item dropped (top-10)",
    ]
    if cfg.user_buckets:
        out.append(f"user token: ours hashes users into {cfg.user_buckets} tokens; cornac has none")
    return out


def compare_cornac(split: SplitData, codes: np.ndarray, cfg: TigerConfig, steps: int, users: np.ndarray,
                   fast_steps_per_s: float, fast_users_per_s: float) -> dict:
    """cornac's TIGER against our fast path on the same items, SIDs (``codes``, aligned to
    ``split.item_ids``) and training samples, at ``cfg``'s sizes and the current torch thread count.

    Training: cornac's own ``fit`` (tokenizer skipped, no validation) with its batch iterator
    wrapped so the loop ends after ``steps`` optimiser steps (passes over the data repeat, with
    cornac's reshuffle, when an epoch is shorter); the clock runs from the loop's first batch
    request to the end of its last step, so model set-up is left out as in ``train_tiger``.
    Ranking: cornac's ``score`` (constrained beam search) for each of ``users``, one per call.
    """
    import cornac
    from cornac.models import TIGER

    model = _cornac_model(np.asarray(codes, dtype=np.int64), cfg)
    module = sys.modules[TIGER.__module__]  # where TIGER's training loop looks up its batch iterator
    plain_iter = module.session_seq_iter
    clock: list[float] = []

    def capped_iter(*a, **kw):
        clock.append(time.perf_counter())
        done = 0
        while done < steps:
            before = done
            for batch in plain_iter(*a, **kw):
                yield batch
                done += 1
                if done == steps:
                    break
            if done == before:
                raise ValueError("cornac's iterator yields no training batch (no sequence of two items)")
        clock.append(time.perf_counter())

    train_set = _cornac_train_set(split)
    with mock.patch.object(module, "session_seq_iter", capped_iter):
        model.fit(train_set)
    steps_per_s = steps / (clock[1] - clock[0])

    hists = [split.history("valid")[u].tolist() for u in users]
    t = time.perf_counter()
    for u, h in zip(users.tolist(), hists):
        model.score(u, h)
    users_per_s = len(hists) / (time.perf_counter() - t)

    levels = int(codes.shape[1])
    ours = TigerModel(cfg, int((codes.max(0) + 1).sum()), levels)
    return {
        "version": cornac.__version__,
        "method": (f"cornac.models.TIGER.fit on a SequentialDataset of the training sequences (one session per user, "
                   f"item indices = ours), our {levels}-level SIDs injected in place of its tokenizer, n_epochs=1, "
                   f"model_selection='last' (no validation), its session_seq_iter wrapped to stop after {steps} "
                   "batches; steps/s = steps / time from the loop's first batch request to the end of its last "
                   f"step (model set-up excluded). users/s = {len(hists)} calls of its score() (scoring='beam', "
                   f"n_beams={cfg.beams}, batch 1) on the weights it trained, histories = the users' training "
                   f"sequences (last {cfg.max_history}); torch threads {torch.get_num_threads()}"),
        "differences": _cornac_differences(cfg, levels),
        "parameters": {"cornac": sum(p.numel() for p in model.model.parameters()),
                       "ours": sum(p.numel() for p in ours.parameters())},
        "steps": steps,
        "steps_per_s": steps_per_s,
        "users": len(hists),
        "users_per_s": users_per_s,
        "ratio_fast_over_cornac_steps": fast_steps_per_s / steps_per_s,
        "ratio_fast_over_cornac_users": fast_users_per_s / users_per_s,
    }


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
    hist = history_matrix([split.history("valid")[u] for u in users], base.max_history)
    masked = split.last_item("valid")[users]
    ref_view = _as(fast_model, ref_cfg)
    ri, ref_ups = _rank(ref_view, Tokens(codec, ref_cfg, split), hist, users, masked, ref_cfg)
    fi, fast_ups = _rank(fast_model, tk_fast, hist, users, masked, base)
    out["rank"] = {"users": int(users.size), "reference_users_per_s": ref_ups, "fast_users_per_s": fast_ups,
                   "ratio": fast_ups / ref_ups, "same_top10": float((ri == fi).all(1).mean()),
                   "latency_ms_batch1": {"reference": _latency_ms(ref_view, Tokens(codec, ref_cfg, split), hist, ref_cfg),
                                         "fast": _latency_ms(fast_model, tk_fast, hist, base)}}

    src = tk_fast.encoder_input(trim(hist, base), users)
    free, _ = beam_search(fast_model, codec, src, base.beams, constrained=False)
    out["unconstrained_valid_share"] = {"top1": float((free[:, 0] >= 0).float().mean()),
                                        "all_beams": float((free >= 0).float().mean())}

    # The bf16 option (TigerConfig.bf16, off by default): autocast matrix products, in training
    # (its own run, same seed and steps) and in beam search on the fast model's float32 weights.
    bf_cfg = replace(base, bf16=True)
    bf_model, _, tk_bf, bf_sps = _train(split, sid_map, bf_cfg)
    bfi, bf_ups = _rank(_as(fast_model, bf_cfg), tk_bf, hist, users, masked, bf_cfg)
    bf_hit = topk_metrics(_rank(bf_model, tk_bf, hist, users, masked, bf_cfg)[0], split.valid_target[users])["hit@10"]
    out["bf16"] = {"steps_per_s": bf_sps, "ratio_train_vs_reference": bf_sps / ref_sps,
                   "users_per_s": bf_ups, "ratio_rank_vs_reference": bf_ups / ref_ups,
                   "same_top10_as_fp32_fast": float((bfi == fi).all(1).mean()),
                   "valid_hit@10": bf_hit, "note": "trained its own run (same seed, steps); ranking on the "
                   "fast model's weights, so same_top10 isolates the decode change"}

    tgt = split.valid_target[users]
    ri2, _ = _rank(ref_model.eval(), tk_ref, hist, users, masked, ref_cfg)
    out["valid_hit@10"] = {"reference": topk_metrics(ri2, tgt)["hit@10"], "fast": topk_metrics(fi, tgt)["hit@10"],
                           "users": int(users.size), "note": f"both trained {args.steps} steps, seed 0"}
    try:
        import cornac  # noqa: F401
    except ImportError as e:
        out["cornac"] = f"not run: cornac is not importable here ({e})"
    else:
        out["cornac"] = compare_cornac(split, codec.codes, base, args.steps, users[: args.cornac_users],
                                       fast_sps, fast_ups)
        # Like with like on input length: cornac always feeds L tokens per history item; our
        # "flat" mode does too (the default "item" mode sums them into one position).
        _, _, _, flat_sps = _train(split, sid_map, replace(base, history_tokens="flat"))
        out["cornac"]["fast_flat_steps_per_s"] = flat_sps
        out["cornac"]["ratio_fast_flat_over_cornac_steps"] = flat_sps / out["cornac"]["steps_per_s"]
    out["load_after"] = os.getloadavg()[0]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--users", type=int, default=1024)
    ap.add_argument("--cornac-users", type=int, default=256, help="the first this many of --users rank through cornac")
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
    b = res["bf16"]
    print(f"bf16 option: train {b['steps_per_s']:.2f} steps/s ({b['ratio_train_vs_reference']:.2f}x reference), rank "
          f"{b['users_per_s']:.0f} users/s ({b['ratio_rank_vs_reference']:.2f}x), same top-10 as fp32 fast "
          f"{b['same_top10_as_fp32_fast']:.3f}, valid hit@10 {b['valid_hit@10']:.4f}")
    c = res["cornac"]
    if isinstance(c, dict):
        print(f"cornac {c['version']}: train {c['steps_per_s']:.2f} steps/s"
              f" (fast/cornac {c['ratio_fast_over_cornac_steps']:.2f}x)  rank {c['users_per_s']:.1f} users/s"
              f" over {c['users']} users (fast/cornac {c['ratio_fast_over_cornac_users']:.1f}x); our fast path with "
              f"flat history tokens (cornac's input length) {c['fast_flat_steps_per_s']:.2f} steps/s "
              f"({c['ratio_fast_flat_over_cornac_steps']:.2f}x)")
    else:
        print(f"cornac: {c}")
    print(f"load average {res['load_before']:.2f} -> {res['load_after']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
