"""G-DPO CPU cost: seconds per 1k preference pairs, against plain encoding in the same run.

Trains LoRA G-DPO (Eq. 6-8) for a fixed number of steps on generated items with the bundled
all-MiniLM-L6-v2 (or --model-path) and a freshly initialised reward model (the cost does not
depend on what R has learned). The baseline measured in the same run is forward-only encoding
of the same number of texts a step touches (3 per pair: i+, i- and the anchor's prompt), so
the ratio says how much a training step costs over plain inference.

    .venv/bin/python benchmarks/bench_gdpo.py [--quick] [--steps 8] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lgsid_pipeline.encoder import EncoderConfig, TextEncoder
from lgsid_pipeline.gdpo import GDPOConfig, build_preference_pairs, pair_texts, train_gdpo
from lgsid_pipeline.reward import RewardModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    steps = 2 if args.quick else args.steps
    from lgsid_pipeline.world import generate_world

    items = generate_world("test", seed=args.seed).items
    pairs = build_preference_pairs(items, None, seed=args.seed).head(steps * args.batch_size)
    enc = TextEncoder(EncoderConfig(model_path=args.model_path, max_length=args.max_length, device="cpu"))
    torch.manual_seed(args.seed)
    rm = RewardModel(enc.dim, 256)
    pos, neg, anc = pair_texts(items, pairs)

    t = time.perf_counter()
    enc.encode(pos + neg + anc, batch_size=args.batch_size * 3)
    enc_s = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GDPOConfig(batch_size=args.batch_size, epochs=1, max_steps=steps, seed=args.seed,
                         eval_pairs=8, checkpoint_every=10_000)
        res = train_gdpo(enc, rm, items, pairs, cfg, adapter_dir=Path(tmp) / "adapter")
    m = res.metrics
    train_s = m["train_seconds"]
    n_pairs = steps * args.batch_size
    print(f"pairs={n_pairs} steps={steps} batch_size={args.batch_size} max_length={args.max_length} "
          f"threads={torch.get_num_threads()} model={enc.model_path.name}")
    print(f"G-DPO training      : {train_s:7.1f} s  = {1000 * train_s / n_pairs:8.1f} s per 1k pairs")
    print(f"encode same texts   : {enc_s:7.1f} s  = {1000 * enc_s / n_pairs:8.1f} s per 1k pairs (forward only)")
    print(f"ratio training / forward-only encoding: {train_s / enc_s:.2f}")


if __name__ == "__main__":
    main()
