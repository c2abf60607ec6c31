"""G-DPO cost: seconds per 1k preference pairs, against plain encoding in the same run.

Trains LoRA G-DPO (Eq. 6-8) for a fixed number of steps on generated items with the bundled
all-MiniLM-L6-v2 (or --model-path) and a freshly initialised reward model (the cost does not
depend on what R has learned). The baseline measured in the same run is forward-only encoding
of the same number of texts a step touches (3 per pair: i+, i- and the anchor's prompt), so
the ratio says how much a training step costs over plain inference.

``--size bge-large`` builds a randomly initialised BERT with BGE-large's shape (24 layers,
hidden 1024, 16 heads, FFN 4096, 512 positions; the paper's backbone has a 1024-d embedding and
512-token prompts) around the bundled tokenizer, so the cost of the paper's settings can be
measured without downloading BGE. Step cost does not depend on the weights' values; the
alignment it produces with random weights means nothing and is not reported.

    .venv/bin/python benchmarks/bench_gdpo.py [--quick] [--steps 8] [--batch-size 16]
    .venv/bin/python benchmarks/bench_gdpo.py --size bge-large --device cuda --max-length 512 \
        --pooling last --steps 40 --batch-size 32 [--dtype bfloat16] [--items items.parquet]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder  # noqa: E402
from lgsid_pipeline.alignment.gdpo import GDPOConfig, build_preference_pairs, pair_texts, train_gdpo  # noqa: E402
from lgsid_pipeline.alignment.reward import RewardModel  # noqa: E402

# BGE-large (BERT-large shape). MiniLM's shape is listed for a like-for-like device comparison.
SIZES = {
    "bge-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      intermediate_size=4096, max_position_embeddings=512),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, max_position_embeddings=512),
}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def random_model_dir(size: str, tokenizer_dir: Path, out: Path, seed: int) -> Path:
    """A BERT directory of the given shape with seeded random weights and a real tokenizer."""
    from transformers import BertConfig, BertModel

    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, **SIZES[size])
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--size", choices=sorted(SIZES), default=None,
                    help="random-initialised BERT of this shape instead of --model-path")
    ap.add_argument("--tokenizer-dir", default=None, help="tokenizer for --size (default: the bundled model's)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    ap.add_argument("--pooling", choices=("mean", "cls", "last"), default="mean")
    ap.add_argument("--items", default=None, help="items Parquet (default: the generator's 'test' world)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    steps = 2 if args.quick else args.steps
    if args.items:
        items = pl.read_parquet(args.items)
    else:
        from lgsid_pipeline.world.generator import generate_world

        items = generate_world("test", seed=args.seed).items
    pairs = build_preference_pairs(items, None, seed=args.seed).head(steps * args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path
        if args.size:
            tok_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else EncoderConfig().resolved_model_path()
            model_path = str(random_model_dir(args.size, tok_dir, Path(tmp) / f"random-{args.size}", args.seed))
        enc = TextEncoder(EncoderConfig(model_path=model_path, max_length=args.max_length, device=args.device,
                                        dtype=args.dtype, pooling=args.pooling))
        n_params = sum(p.numel() for p in enc.model.parameters())
        torch.manual_seed(args.seed)
        rm = RewardModel(enc.dim, 256).to(enc.device)
        pos, neg, anc = pair_texts(items, pairs)
        enc.encode(pos[: args.batch_size], batch_size=args.batch_size)  # warm-up (CUDA kernels, caches)

        t = time.perf_counter()
        enc.encode(pos + neg + anc, batch_size=args.batch_size * 3)
        if enc.device.type == "cuda":
            torch.cuda.synchronize()
        enc_s = time.perf_counter() - t

        cfg = GDPOConfig(batch_size=args.batch_size, epochs=1, max_steps=steps, seed=args.seed,
                         eval_pairs=8, checkpoint_every=10_000)
        if enc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        res = train_gdpo(enc, rm, items, pairs, cfg, adapter_dir=Path(tmp) / "adapter")
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if enc.device.type == "cuda" else None
    m = res.metrics
    train_s = m["train_seconds"]
    n_pairs = steps * args.batch_size
    device = torch.cuda.get_device_name() if enc.device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"pairs={n_pairs} steps={steps} batch_size={args.batch_size} max_length={args.max_length} "
          f"pooling={args.pooling} dtype={args.dtype} device={device} model={args.size or enc.model_path.name} "
          f"params={n_params / 1e6:.1f}M embedding_dim={enc.dim}")
    print(f"G-DPO training      : {train_s:7.1f} s  = {1000 * train_s / n_pairs:8.2f} s per 1k pairs")
    print(f"encode same texts   : {enc_s:7.1f} s  = {1000 * enc_s / n_pairs:8.2f} s per 1k pairs (forward only)")
    print(f"ratio training / forward-only encoding: {train_s / enc_s:.2f}")
    if peak_gib is not None:
        print(f"peak GPU memory during training: {peak_gib:.2f} GiB")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "args": vars(args), "device": device, "params_m": n_params / 1e6, "embedding_dim": enc.dim,
            "pairs": n_pairs, "train_seconds": train_s, "seconds_per_1k_pairs": 1000 * train_s / n_pairs,
            "encode_seconds": enc_s, "encode_seconds_per_1k_pairs": 1000 * enc_s / n_pairs,
            "peak_gpu_gib": peak_gib, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
