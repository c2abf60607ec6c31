"""Benchmark the item tokenizers: fit time, peak memory, reconstruction, incremental assignment.

Each (method, size) runs in its own subprocess so its peak RSS is its own. Data: a seeded
Gaussian mixture (64 topics x 8 sub-topics, dimension 384, like MiniLM) with synthetic
geography (32 cities x 8 towns), from ``lgsid_pipeline.tokenizers.synthetic``.

Comparisons printed, all measured in the same run:
* HGIT vs RQ-VAE at matched reconstruction error: RQ-VAE trains until its epoch mean error
  (input space) reaches HGIT's final training error, or ``--rqvae-epochs``; both errors and
  the fit-time ratio are printed.
* incremental assignment of 10k new items into the frozen codebook (transform +
  ``assign_unique``) vs the full fit of the same worker.

Usage:
    .venv/bin/python benchmarks/bench_tokenizers.py --quick          # 100k only
    .venv/bin/python benchmarks/bench_tokenizers.py --sizes 1000000  # one size per run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_NEW = 10_000
DIM = 384


def worker(method: str, n: int, seed: int, target_mse: float | None, rqvae_epochs: int, threads: int) -> dict:
    import numpy as np
    import psutil
    import torch

    torch.set_num_threads(threads)
    from lgsid_pipeline.tokenizers import default_codebook_sizes, make_tokenizer
    from lgsid_pipeline.tokenizers.dedup import append_dedup_level, assign_unique, collision_rate
    from lgsid_pipeline.tokenizers.diagnostics import tokenizer_diagnostics
    from lgsid_pipeline.tokenizers.synthetic import clustered_catalog

    X_all, items_all = clustered_catalog(
        n=n + N_NEW, d=DIM, seed=seed, n_cities=32, n_topics=64, n_subtopics=8, towns_per_city=8, noise=0.3
    )
    X, items = X_all[:n], items_all[:n]
    X_new, items_new = X_all[n:], items_all[n:]
    rss_data = psutil.Process().memory_info().rss
    sizes = default_codebook_sizes(n, 3)
    params: dict = {"codebook_sizes": sizes, "seed": seed}
    if method == "rqvae":
        params.update(epochs=rqvae_epochs, target_mse=target_mse)
    tok = make_tokenizer(method, **params)
    t0, c0 = time.perf_counter(), time.process_time()
    tok.fit(X, items)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    codes = tok.transform(X, items)
    transform_s = time.perf_counter() - t0
    diag = tokenizer_diagnostics(tok, X, items, codes)
    sids = append_dedup_level(codes)
    t0, c0 = time.perf_counter(), time.process_time()
    new_codes = tok.transform(X_new, items_new)
    new_sids = assign_unique(new_codes, sids)
    incr_s, incr_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    assert np.unique(np.concatenate([sids, new_sids]), axis=0).shape[0] == n + N_NEW
    return {
        "method": method,
        "n": n,
        "dim": DIM,
        "codebook_sizes": sizes,
        "threads": threads,
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "epochs_run": len([h for h in getattr(tok, "history_", []) if h["epoch"] > 0]),
        "history": getattr(tok, "history_", []),
        "transform_s": transform_s,
        "incremental_10k_s": incr_s,
        "incremental_10k_cpu_s": incr_cpu_s,
        "rss_after_data_gib": rss_data / 2**30,
        "peak_rss_gib": peak_fit / 2**30,
        "recon_mse": diag["recon_mse"],
        "recon_rel": diag["recon_rel"],
        "train_final_mse": (tok.history_[-1]["recon_mse"] if getattr(tok, "history_", None) else None),
        "collision_rate": collision_rate(codes),
        "perplexity": [lv["perplexity"] for lv in diag["per_level"]],
        "used": [lv["used"] for lv in diag["per_level"]],
        "city_purity_l1": diag["geo_purity"]["city@L1"],
        "cat1_purity_l1": diag["category_purity"]["cat1@L1"],
    }


def run_worker(method: str, n: int, args, target_mse: float | None = None) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--seed", str(args.seed),
           "--rqvae-epochs", str(args.rqvae_epochs), "--threads", str(args.threads)]
    if target_mse is not None:
        cmd += ["--target-mse", repr(target_mse)]
    print(f"[run] {method} n={n:,} ...", flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        print(f"[timeout] {method} n={n:,} exceeded {args.timeout}s", flush=True)
        return {"method": method, "n": n, "timeout_s": args.timeout}
    if out.returncode != 0:
        print(out.stderr[-3000:], flush=True)
        return {"method": method, "n": n, "error": out.stderr[-500:]}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"[done] {method:10s} n={n:>9,}  fit {res['fit_s']:8.1f}s (cpu {res.get('fit_cpu_s', float('nan')):.1f}s)  transform {res['transform_s']:6.1f}s  "
        f"peak RSS {res['peak_rss_gib']:.2f} GiB (data {res['rss_after_data_gib']:.2f})  "
        f"recon_rel {res['recon_rel']:.4f}  collisions {res['collision_rate']:.4f}  "
        f"incr10k {res['incremental_10k_s']:.2f}s",
        flush=True,
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k items only")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=["hgit", "res_kmeans", "rqvae"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rqvae-epochs", type=int, default=20, help="cap on RQ-VAE epochs when chasing HGIT's error")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    ap.add_argument("--json", type=Path, default=None, help="also write all results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target-mse", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.worker, args.n, args.seed, args.target_mse, args.rqvae_epochs, args.threads)
        print(json.dumps(res))
        return
    sizes = [100_000] if args.quick else (args.sizes or [100_000, 1_000_000])
    results = []
    for n in sizes:
        by_method = {}
        for m in [m for m in args.methods if m != "rqvae"]:
            by_method[m] = run_worker(m, n, args)
        if "rqvae" in args.methods:
            h = by_method.get("hgit") or {}
            target = h.get("train_final_mse")
            by_method["rqvae"] = run_worker("rqvae", n, args, target_mse=target)
        results.extend(r for r in by_method.values() if r)
        h, r = by_method.get("hgit"), by_method.get("rqvae")
        if h and r and "fit_s" in h and "fit_s" in r:
            reached = r["train_final_mse"] is not None and r["train_final_mse"] <= h["train_final_mse"]
            print(
                f"[hgit vs rqvae] n={n:,}: HGIT fit {h['fit_s']:.1f}s recon_mse {h['recon_mse']:.4f} "
                f"(rel {h['recon_rel']:.4f}); RQ-VAE fit {r['fit_s']:.1f}s over {r['epochs_run']} epochs, "
                f"recon_mse {r['recon_mse']:.4f} (rel {r['recon_rel']:.4f}), "
                f"{'reached' if reached else 'did NOT reach'} HGIT's training error; "
                f"fit-time ratio RQ-VAE/HGIT = {r['fit_s'] / h['fit_s']:.2f}x wall, "
                f"{r.get('fit_cpu_s', float('nan')) / h.get('fit_cpu_s', float('nan')):.2f}x CPU",
                flush=True,
            )
        for m, res in by_method.items():
            if res and "fit_s" in res:
                print(
                    f"[incremental] {m} n={n:,}: 10k new items {res['incremental_10k_s']:.2f}s vs fit "
                    f"{res['fit_s']:.1f}s -> {res['fit_s'] / res['incremental_10k_s']:.0f}x faster than a refit",
                    flush=True,
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
