"""Scaling of the training-signal data steps: co-occurrence pairs (Eq. 5) and distance-ranked
negatives (Eq. 1, 3), against naive baselines measured in the same run.

    .venv/bin/python benchmarks/bench_signals.py --quick        # 100k items only
    .venv/bin/python benchmarks/bench_signals.py                # 100k, 1M, 2.3M items

Data: the synthetic world presets ``bench-100k`` / ``bench-1m`` / ``bench-2.3m`` of
``lgsid_pipeline.world.generator`` (interactions ~= 10 x items, 13 cities), generated once with seed 0
and cached as parquet under ``--cache-dir``; ``--data synthetic`` uses a small vectorised
generator in this file instead (Gaussian cities, local Zipf-like histories).

Every (size, step) runs in its own subprocess, so the peak RSS it reports (``ru_maxrss``) is
that step's own, including the loaded data (reported separately as ``rss_loaded``).

Steps
- ``pairs``: ``cooccurrence_pairs`` on all interactions at the default threshold, and at
  ``s_th=1`` (the heaviest threshold the default can give) -- one call over the whole data,
  which is harder than the pipeline's per-city calls.
- ``pairs_naive``: scipy ``X.T @ X`` of the binary user x item matrix without history cap,
  pruning or blocking, then upper triangle and ``> s_th`` (s_th = 1).
- ``negatives``: ``distance_ranked_negatives`` (density, k = 15) over all items, per city.
- ``negatives_naive``: sklearn ``BallTree(metric="haversine")`` per city doing the same
  neighbour searches the density scheme needs (61-NN of every anchor, plus a 4-NN query for
  each of the 10 ring points per anchor), without any sampling bookkeeping -- a lower bound of
  a BallTree implementation. BallTree queries are single-threaded and slow, so above
  ``--naive-anchors`` anchors the queries run on a seeded sample of that many anchors and the
  query time is scaled up by n / sample (reported as ``extrapolated``); the tree builds are
  always complete.
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

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"100k": "bench-100k", "1m": "bench-1m", "2.3m": "bench-2.3m"}
N_ITEMS = {"100k": 100_000, "1m": 1_000_000, "2.3m": 2_300_000}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


# ------------------------------------------------------------------------------------------
# Data


def synthetic_world(n_items: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Vectorised generator: 13 Gaussian cities (60% of items in dense cores, 40% in sparse
    suburbs), n_items / 2 users with geometric history lengths (mean ~20, 3..400, so the
    history cap binds for a tail of users) clicking items near a home item (Cauchy offsets in
    the city's west-to-east item order). About 10 interactions per item."""
    rng = np.random.default_rng(seed)
    n_city = 13
    centres = np.c_[rng.uniform(30, 47, n_city), rng.uniform(-120, -75, n_city)]
    w = np.sqrt(np.arange(1, n_city + 1, dtype=np.float64))
    city = rng.choice(n_city, n_items, p=w / w.sum())
    spread = np.where(rng.random(n_items) < 0.6, 0.03, 0.25)
    lat = centres[city, 0] + rng.normal(size=n_items) * spread
    lon = centres[city, 1] + rng.normal(size=n_items) * spread * 1.3
    order = np.lexsort((lon, city))  # a city's items are contiguous, west to east
    lat, lon, city = lat[order], lon[order], city[order]

    def ids(prefix: str, values: np.ndarray, width: int) -> pl.Series:
        return pl.select(
            pl.lit(prefix) + pl.Series(values).cast(pl.Utf8).str.zfill(width)
        ).to_series()

    items = pl.DataFrame(
        {
            "item_id": ids("it", np.arange(n_items), 7),
            "province": ids("P", city // 2, 2),
            "city": ids("City", city, 2),
            "town": ids("T", city * 10_000 + ((lon + 180) * 20).astype(np.int64), 7),
            "lat": lat,
            "lon": lon,
        }
    )
    n_users = n_items // 2
    length = np.clip(rng.geometric(1 / 20, n_users), 3, 400)
    user = np.repeat(np.arange(n_users), length)
    home = rng.integers(0, n_items, n_users)
    offset = np.clip(rng.standard_cauchy(user.size) * 30, -n_items, n_items).astype(np.int64)
    item = np.clip(home[user] + offset, 0, n_items - 1)
    starts = np.repeat(np.cumsum(length) - length, length)
    inter = pl.DataFrame(
        {
            "user_id": ids("u", user, 7),
            "item_id": items["item_id"].gather(item),
            "seq_idx": np.arange(user.size) - starts,
        }
    )
    return items, inter


def ensure_data(size: str, cache_dir: Path, source: str) -> Path:
    out = cache_dir / f"{source}-{size}"
    if (out / "interactions.parquet").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if source == "world":
        from lgsid_pipeline.world.generator import generate_world

        w = generate_world(SIZES[size], seed=0)
        items, inter = w.items, w.interactions
    else:
        items, inter = synthetic_world(N_ITEMS[size], seed=0)
    items.write_parquet(out / "items.parquet")
    inter.write_parquet(out / "interactions.parquet")
    print(f"generated {source} {size}: {items.height} items, {inter.height} interactions "
          f"in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def load(data_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    from lgsid_pipeline.partitions import city_key_table

    items = pl.read_parquet(data_dir / "items.parquet")
    if "city_key" not in items.columns:
        items = items.join(city_key_table(items), on=["province", "city"], how="left")
    inter = pl.read_parquet(data_dir / "interactions.parquet")
    return items, inter


# ------------------------------------------------------------------------------------------
# Steps (run inside a worker subprocess)


def step_pairs(items: pl.DataFrame, inter: pl.DataFrame, args) -> dict:
    from lgsid_pipeline.alignment.cooccurrence import cooccurrence_pairs

    out = {}
    for label, s_th in (("default", None), ("s_th=1", 1)):
        t = time.perf_counter()
        res = cooccurrence_pairs(inter, s_th=s_th, max_history=50)
        out[label] = {
            "seconds": round(time.perf_counter() - t, 2),
            "threshold": res.threshold,
            "n_pairs": res.metrics["n_pairs"],
            "n_items_in_pairs": res.metrics["n_items_in_pairs"],
            "score_p50": res.metrics["score_p50"],
            "score_max": res.metrics["score_max"],
        }
        del res
    # The pipeline's usage: one call per city partition at that city's default threshold.
    city_of = items.select("item_id", "city_key")
    per_city = inter.join(city_of, on="item_id", how="inner")
    t = time.perf_counter()
    n_pairs = n_in_pairs = 0
    thresholds = []
    for _, g in per_city.group_by("city_key", maintain_order=True):
        res = cooccurrence_pairs(g, max_history=50)
        n_pairs += res.metrics["n_pairs"]
        n_in_pairs += res.metrics["n_items_in_pairs"]
        thresholds.append(res.threshold)
    out["per_city_default"] = {
        "seconds": round(time.perf_counter() - t, 2),
        "thresholds": f"{min(thresholds)}..{max(thresholds)}",
        "n_pairs": n_pairs,
        "n_items_in_pairs": n_in_pairs,
    }
    return out


def step_pairs_naive(items: pl.DataFrame, inter: pl.DataFrame, args) -> dict:
    import scipy.sparse as sp

    t = time.perf_counter()
    u = inter["user_id"].rank("dense").cast(pl.Int64).to_numpy() - 1
    i = inter["item_id"].rank("dense").cast(pl.Int64).to_numpy() - 1
    x = sp.csr_matrix((np.ones(u.size, np.int32), (u, i)), shape=(u.max() + 1, i.max() + 1))
    x.data[:] = 1  # binary: a user counts once per item (duplicates were summed)
    g = sp.triu(x.T @ x, k=1).tocoo()
    keep = g.data > 1
    n_pairs = int(keep.sum())
    return {"seconds": round(time.perf_counter() - t, 2), "n_pairs_s_th_1": n_pairs,
            "gram_nnz": int(g.nnz)}


def _step_pairs_workers(workers: int | None):
    """``cooccurrence_pairs`` at s_th = 1 with ``workers`` block threads (None = the default, both
    cores; 1 = the single-thread code the threads replaced). One subprocess each, so each peak
    RSS is its own."""
    def step(items: pl.DataFrame, inter: pl.DataFrame, args) -> dict:
        from lgsid_pipeline.alignment.cooccurrence import DEFAULT_WORKERS, cooccurrence_pairs

        w = DEFAULT_WORKERS if workers is None else workers
        t = time.perf_counter()
        res = cooccurrence_pairs(inter, s_th=1, max_history=50, workers=w)
        pairs = res.pairs
        digest = pairs.hash_rows(seed=0).sum()  # the frame's content: equal digests = identical pairs
        return {"seconds": round(time.perf_counter() - t, 2), "workers": w, "n_pairs": pairs.height,
                "pairs_digest": int(digest)}
    return step


def step_pairs_naive_capped(items: pl.DataFrame, inter: pl.DataFrame, args) -> dict:
    """scipy ``X.T @ X`` of the same capped binary matrix ours counts (each user's 50 most recent
    distinct items), then the upper triangle and ``> 1``: the same pairs as ours at s_th = 1, so
    the like-for-like baseline of the speed target."""
    import scipy.sparse as sp

    from lgsid_pipeline.alignment.cooccurrence import capped_histories

    t = time.perf_counter()
    h = capped_histories(inter, 50)
    u = h["user_id"].rank("dense").cast(pl.Int64).to_numpy() - 1
    i = h["item_id"].rank("dense").cast(pl.Int64).to_numpy() - 1
    x = sp.csr_matrix((np.ones(u.size, np.int32), (u, i)), shape=(u.max() + 1, i.max() + 1))
    g = sp.triu(x.T @ x, k=1).tocoo()
    n_pairs = int((g.data > 1).sum())
    return {"seconds": round(time.perf_counter() - t, 2), "n_pairs_s_th_1": n_pairs, "gram_nnz": int(g.nnz)}


def step_negatives(items: pl.DataFrame, inter: pl.DataFrame, args) -> dict:
    from lgsid_pipeline.alignment.negatives import distance_ranked_negatives

    t = time.perf_counter()
    res = distance_ranked_negatives(items, k=15, strategy="density", seed=0)
    secs = time.perf_counter() - t
    q = res.rank_quantiles.filter(pl.col("rank").is_in([1, 5, 10, 15]))
    return {
        "seconds": round(secs, 2),
        "n_rows": res.lists.height,
        "n_anchors": res.metrics["n_anchors"],
        "share_within_near_band": round(res.metrics["share_within_near_band"], 3),
        "rank_p50_km": {int(r): round(v, 3) for r, v in zip(q["rank"], q["p50_km"])},
    }


def step_negatives_naive(items: pl.DataFrame, inter: pl.DataFrame, args) -> dict:
    from sklearn.neighbors import BallTree

    rng = np.random.default_rng(0)
    build = query = 0.0
    sampled = 0
    n_total = items.height
    cap_share = min(1.0, args.naive_anchors / n_total)
    for _, g in items.group_by("city_key", maintain_order=True):
        rad = np.radians(g.select("lat", "lon").to_numpy())
        t = time.perf_counter()
        tree = BallTree(rad, metric="haversine")
        build += time.perf_counter() - t
        n = rad.shape[0]
        m = max(1, int(round(n * cap_share)))
        anchors = rad[np.sort(rng.choice(n, m, replace=False))] if m < n else rad
        # Ring points: 10 per anchor, within ~0.3 degrees (same work as the KD-tree queries).
        ring = np.repeat(anchors, 10, axis=0) + np.radians(rng.normal(0, 0.1, (anchors.shape[0] * 10, 2)))
        ring[:, 0] = np.clip(ring[:, 0], -np.pi / 2, np.pi / 2)
        t = time.perf_counter()
        tree.query(anchors, k=min(61, n))
        tree.query(ring, k=min(4, n))
        query += (time.perf_counter() - t) * (n / anchors.shape[0])
        sampled += anchors.shape[0]
    return {"seconds": round(build + query, 2), "build_seconds": round(build, 2),
            "query_seconds": round(query, 2), "anchors_queried": sampled,
            "extrapolated": sampled < n_total}


STEPS = {
    "pairs": step_pairs,
    "pairs_naive": step_pairs_naive,
    "pairs_1thread": _step_pairs_workers(1),
    "pairs_threads": _step_pairs_workers(None),
    "pairs_naive_capped": step_pairs_naive_capped,
    "negatives": step_negatives,
    "negatives_naive": step_negatives_naive,
}


def worker(step: str, data_dir: Path, args) -> None:
    items, inter = load(data_dir)
    rss_loaded = _rss_gb()
    t = time.perf_counter()
    result = STEPS[step](items, inter, args)
    result.update(
        step=step, wall_seconds=round(time.perf_counter() - t, 2),
        rss_loaded_gb=round(rss_loaded, 2), peak_rss_gb=round(_rss_gb(), 2),
        n_items=items.height, n_interactions=inter.height,
    )
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------


def run_step(step: str, data_dir: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", step, "--data-dir", str(data_dir),
           "--naive-anchors", str(args.naive_anchors)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return {"step": step, "error": f"timed out after {args.timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"step": step, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k items only")
    ap.add_argument("--sizes", nargs="*", choices=list(SIZES), default=None)
    ap.add_argument("--steps", nargs="*", choices=list(STEPS), default=list(STEPS))
    ap.add_argument("--data", choices=["world", "synthetic"], default="synthetic")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/lgsid-bench-signals"))
    ap.add_argument("--timeout", type=int, default=600, help="seconds per step subprocess")
    ap.add_argument("--naive-anchors", type=int, default=20_000)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--worker", choices=list(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data_dir, args)
        return

    sizes = ["100k"] if args.quick else (args.sizes or list(SIZES))
    source = args.data
    if source == "world":
        try:
            import lgsid_pipeline.world.generator  # noqa: F401
        except ImportError:
            source = "synthetic"
    results = []
    for size in sizes:
        data_dir = ensure_data(size, args.cache_dir, source)
        for step in args.steps:
            r = run_step(step, data_dir, args)
            r["size"] = size
            results.append(r)
            print(json.dumps(r), flush=True)
    print()
    print("| size | step | seconds | peak RSS GiB | RSS after load GiB | details |")
    print("|---|---|---|---|---|---|")
    by = {(r["size"], r["step"]): r for r in results}
    for r in results:
        if "error" in r:
            print(f"| {r['size']} | {r['step']} | - | - | - | {r['error']} |")
            continue
        if r["step"] == "pairs":
            pc = r["per_city_default"]
            secs = (f"{r['default']['seconds']} (default) / {r['s_th=1']['seconds']} (s_th=1) / "
                    f"{pc['seconds']} (per city)")
            det = (f"default s_th={r['default']['threshold']}: {r['default']['n_pairs']} pairs "
                   f"over {r['default']['n_items_in_pairs']} items; s_th=1: "
                   f"{r['s_th=1']['n_pairs']} pairs; per city (s_th {pc['thresholds']}): "
                   f"{pc['n_pairs']} pairs over {pc['n_items_in_pairs']} items")
        else:
            secs = str(r["seconds"])
            det = ", ".join(f"{k}={v}" for k, v in r.items() if k not in {
                "step", "size", "seconds", "peak_rss_gb", "rss_loaded_gb", "wall_seconds",
                "n_items", "n_interactions"})
        print(f"| {r['size']} | {r['step']} | {secs} | {r['peak_rss_gb']} | {r['rss_loaded_gb']} | {det} |")
    print()
    for size in sizes:
        p, pn = by.get((size, "pairs")), by.get((size, "pairs_naive"))
        if p and pn and "error" not in p and "error" not in pn:
            print(f"{size}: pairs (s_th=1) speed-up vs naive X.T@X: "
                  f"{pn['seconds'] / max(p['s_th=1']['seconds'], 1e-9):.2f}x, "
                  f"peak RSS ratio naive/ours: {pn['peak_rss_gb'] / p['peak_rss_gb']:.2f}")
        ng, nn = by.get((size, "negatives")), by.get((size, "negatives_naive"))
        if ng and nn and "error" not in ng and "error" not in nn:
            print(f"{size}: negatives speed-up vs BallTree(haversine) searches: "
                  f"{nn['seconds'] / max(ng['seconds'], 1e-9):.2f}x"
                  + (" (BallTree query time extrapolated)" if nn.get("extrapolated") else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
