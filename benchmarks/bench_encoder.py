"""Encoding throughput: TextEncoder.encode vs sentence-transformers' encode() on the same model.

Same model directory (the bundled all-MiniLM-L6-v2 unless --model-path), same texts (Appendix A
prompts of generated items), same batch size and max length, measured in one process with the
order rotated each repeat. Four contenders:

- ``fast``: TextEncoder with the default ``dtype="auto"`` (bfloat16 inference where the CPU has
  native bf16 and the probe passes; otherwise it is the exact path);
- ``exact``: TextEncoder with ``dtype="float32"``;
- ``st``: sentence-transformers ``encode()`` as shipped (float32) -- the baseline;
- ``st_bf16``: sentence-transformers with its model cast to bfloat16, to show what the lever
  alone gives a user of that library.

Prints items/s (wall and per CPU-second), ratios against ``st``, and the mean / min cosine of each
to the float32 sentence-transformers embeddings (the issue's bound: mean >= 0.999).

    .venv/bin/python benchmarks/bench_encoder.py [--quick] [--n 1000] [--batch-size 32] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder
from lgsid_pipeline.alignment.prompts import build_prompt

KINDS = ["pizza", "coffee", "sushi", "burger", "tea", "bakery", "ramen", "tacos", "bar", "deli"]
TOWNS = ["Park Slope", "Astoria", "Harlem", "Midtown", "Flushing", "Hoboken", "Jersey City"]


def make_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        kind = KINDS[rng.integers(len(KINDS))]
        goods = ", ".join(f"{KINDS[j]} special {j}" for j in rng.integers(0, len(KINDS), rng.integers(0, 12)))
        row = {"name": f"{TOWNS[rng.integers(len(TOWNS))]} {kind} house {i}", "cat1": "Food", "cat2": kind,
               "province": "NY", "city": "New York", "town": TOWNS[rng.integers(len(TOWNS))],
               "price": float(rng.integers(1, 5)), "goods": goods or None}
        texts.append(build_prompt(row))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 200 if args.quick else args.n
    texts = make_texts(n, args.seed)
    torch.manual_seed(args.seed)
    cfg = dict(model_path=args.model_path, max_length=args.max_length, batch_size=args.batch_size, device="cpu")
    fast = TextEncoder(EncoderConfig(**cfg))  # the default: dtype="auto"
    exact = TextEncoder(EncoderConfig(**cfg, dtype="float32"))
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(exact.model_path), device="cpu", local_files_only=True)
    st.max_seq_length = args.max_length
    st16 = SentenceTransformer(str(exact.model_path), device="cpu", local_files_only=True).to(torch.bfloat16)
    st16.max_seq_length = args.max_length
    st_kw = dict(batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    runs = {
        "fast": lambda: fast.encode(texts),
        "exact": lambda: exact.encode(texts),
        "st": lambda: st.encode(texts, **st_kw),
        "st_bf16": lambda: np.asarray(st16.encode(texts, **st_kw), dtype=np.float32),
    }
    fast.encode(texts[:64]), exact.encode(texts[:64]), st.encode(texts[:64], **st_kw), st16.encode(texts[:64], **st_kw)
    load_start = os.getloadavg()[0]
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    emb = {}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            w, c = time.perf_counter(), time.process_time()
            emb[name] = runs[name]()
            wall[name].append(n / (time.perf_counter() - w))
            cpu[name].append(n / max(time.process_time() - c, 1e-9))
    load_end = os.getloadavg()[0]
    ref = emb["st"]

    def cos(a):
        c = (a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))
        return float(c.mean()), float(c.min())

    out = {"texts": n, "batch_size": args.batch_size, "max_length": args.max_length,
           "threads": torch.get_num_threads(), "repeats": args.repeats,
           "load_average_start": load_start, "load_average_end": load_end,
           "fast_path": fast.fast_check, "contenders": {}}
    print(f"texts={n} batch_size={args.batch_size} max_length={args.max_length} threads={torch.get_num_threads()} "
          f"load average {load_start:.2f} -> {load_end:.2f}")
    print(f"fast path: {fast.fast_check}")
    for name in names:
        ratio_wall = [x / y for x, y in zip(wall[name], wall["st"])]
        ratio_cpu = [x / y for x, y in zip(cpu[name], cpu["st"])]
        cmean, cmin = cos(emb[name])
        out["contenders"][name] = {"items_per_s_wall": wall[name], "items_per_cpu_s": cpu[name],
                                   "ratio_vs_st_wall_median": float(np.median(ratio_wall)),
                                   "ratio_vs_st_cpu_median": float(np.median(ratio_cpu)),
                                   "cosine_to_st_fp32_mean": cmean, "cosine_to_st_fp32_min": cmin}
        print(f"{name:8s}: {np.median(wall[name]):7.1f} items/s wall ({np.median(cpu[name]):6.1f} per CPU-s); "
              f"vs st wall x{np.median(ratio_wall):.2f} (runs {', '.join(f'{x:.2f}' for x in ratio_wall)}), "
              f"CPU x{np.median(ratio_cpu):.2f}; cosine to st fp32 mean {cmean:.6f} min {cmin:.6f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
