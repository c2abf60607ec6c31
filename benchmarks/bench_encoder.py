"""Encoding throughput: TextEncoder.encode vs sentence-transformers' encode() on the same model.

Same model directory (the bundled all-MiniLM-L6-v2 unless --model-path), same texts (Appendix A
prompts of generated items), same batch size and max length, measured in one process with the
order alternated. Prints items/s for both and the ratio TextEncoder / sentence-transformers.

    .venv/bin/python benchmarks/bench_encoder.py [--quick] [--n 1000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lgsid_pipeline.encoder import EncoderConfig, TextEncoder
from lgsid_pipeline.prompts import build_prompt

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
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    n = 200 if args.quick else args.n
    texts = make_texts(n, args.seed)
    torch.manual_seed(args.seed)
    enc = TextEncoder(EncoderConfig(model_path=args.model_path, max_length=args.max_length,
                                    batch_size=args.batch_size, device="cpu"))
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(enc.model_path), device="cpu", local_files_only=True)
    st.max_seq_length = args.max_length
    enc.encode(texts[:64])  # warm-up both
    st.encode(texts[:64], batch_size=args.batch_size)
    # Each repeat times both, in alternating order, by wall clock and by this process's CPU time
    # (which other jobs on a shared machine disturb far less than wall time).
    ours, theirs, ours_cpu, theirs_cpu = [], [], [], []

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, n / (time.perf_counter() - w), n / max(time.process_time() - c, 1e-9)

    run_ours = lambda: enc.encode(texts)  # noqa: E731
    run_theirs = lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,  # noqa: E731
                                   convert_to_numpy=True)
    for r in range(args.repeats):
        order = (("ours", run_ours), ("theirs", run_theirs))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            emb, wall_rate, cpu_rate = timed(fn)
            if name == "ours":
                a = emb
                ours.append(wall_rate), ours_cpu.append(cpu_rate)
            else:
                b = emb
                theirs.append(wall_rate), theirs_cpu.append(cpu_rate)
    pair = [x / y for x, y in zip(ours, theirs)]
    pair_cpu = [x / y for x, y in zip(ours_cpu, theirs_cpu)]
    cos = float(np.mean(np.sum(a * b, axis=1)))
    print(f"texts={n} batch_size={args.batch_size} max_length={args.max_length} threads={torch.get_num_threads()}")
    print(f"TextEncoder.encode          : {max(ours):8.1f} items/s (runs: {', '.join(f'{x:.1f}' for x in ours)})")
    print(f"sentence-transformers encode: {max(theirs):8.1f} items/s (runs: {', '.join(f'{x:.1f}' for x in theirs)})")
    print(f"ratio (ours / sentence-transformers, best runs): {max(ours) / max(theirs):.3f}")
    print(f"ratio per repeat, wall: {', '.join(f'{x:.2f}' for x in pair)} (median {np.median(pair):.3f})")
    print(f"items per CPU-second    : ours {np.median(ours_cpu):.1f}, sentence-transformers {np.median(theirs_cpu):.1f}; "
          f"ratio per repeat {', '.join(f'{x:.2f}' for x in pair_cpu)} (median {np.median(pair_cpu):.3f})")
    print(f"mean cosine between the two embeddings: {cos:.6f}")


if __name__ == "__main__":
    main()
