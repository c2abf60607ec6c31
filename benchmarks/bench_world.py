"""Benchmark the synthetic world generator: seconds and peak memory at 100k / 1M / 2.3M items.

Each size runs in its own subprocess so the peak RSS (``resource.getrusage``) is per size.
Interactions are ~10 x items (the ``bench-*`` presets). When ``lgsid_pipeline.data.catalog``
provides ``validate_items`` / ``validate_interactions``, their seconds are reported too.

Baseline, measured in the same run: a naive per-row Python generator of the same model
(``random`` module, one item / one click at a time, each click sampled exactly over all the
city's items with weight exp(-d / scale) x taste x popularity). It is timed on a small
sample at the benchmark's items-per-city and scaled linearly to the full size; the printed
ratio is naive-estimate / measured. A second reference is the cost of drawing the same
number of plain numpy random points.

    .venv/bin/python benchmarks/bench_world.py --quick          # 100k items, 1M interactions
    .venv/bin/python benchmarks/bench_world.py --sizes 1m       # one size
    .venv/bin/python benchmarks/bench_world.py                  # 100k, 1M, 2.3M
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time

SIZES = {"100k": "bench-100k", "1m": "bench-1m", "2.3m": "bench-2.3m"}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(preset: str, seed: int, validate: bool) -> dict:
    """Generate one preset (and validate it), report seconds and peak RSS as a dict."""
    from lgsid_pipeline.world import gazetteer
    from lgsid_pipeline.world.generator import generate_world, resolve_config

    t = time.perf_counter()
    gazetteer._us_places()  # the GeoNames load is a fixed cost, reported separately
    out: dict = {"preset": preset, "seed": seed, "gazetteer_load_s": time.perf_counter() - t}
    t, c = time.perf_counter(), time.process_time()
    world = generate_world(resolve_config(preset, seed))
    out["generate_s"] = time.perf_counter() - t
    out["generate_cpu_s"] = time.process_time() - c  # CPU seconds, all threads (robust to a busy machine)
    out["items"] = world.items.height
    out["interactions"] = world.interactions.height
    out["users"] = world.users.height
    out["peak_rss_gib_generate"] = _peak_rss_gib()
    out["items_frame_gib"] = world.items.estimated_size() / 2**30
    out["interactions_frame_gib"] = world.interactions.estimated_size() / 2**30
    if validate:
        try:
            from lgsid_pipeline.data.catalog import validate_interactions, validate_items
        except ImportError:
            out["validation"] = "lgsid_pipeline.data.catalog has no validate_items/validate_interactions"
        else:
            t = time.perf_counter()
            items = validate_items(world.items)
            out["validate_items_s"] = time.perf_counter() - t
            t = time.perf_counter()
            inter = validate_interactions(world.interactions, items.valid)
            out["validate_interactions_s"] = time.perf_counter() - t
            out["quarantined_items"] = items.quarantine.height
            out["quarantined_interactions"] = inter.quarantine.height
            out["peak_rss_gib_with_validation"] = _peak_rss_gib()
    return out


# ------------------------------------------------------------------ naive baseline


def _naive_items(n: int, rng: random.Random) -> list[dict]:
    """Per-row Python item generation (the same fields the vectorised generator fills)."""
    from lgsid_pipeline.world.categories import COMMON_WORDS, LEAVES

    towns = [(0.0, 0.0, 3.0, 0.6)] + [(rng.uniform(-30, 30), rng.uniform(-30, 30), 1.5, 0.4) for _ in range(20)]
    weights = [w for *_, w in towns]
    leaf_w = [lf.weight for lf in LEAVES]
    out = []
    for i in range(n):
        tx, ty, sd, _ = rng.choices(towns, weights)[0]
        leaf = rng.choices(LEAVES, leaf_w)[0]
        goods = rng.sample(leaf.goods, min(len(leaf.goods), rng.randint(5, 9)))
        out.append({
            "item_id": f"it{i:07d}",
            "name": f"{rng.choice(COMMON_WORDS)} {rng.choice(leaf.suffixes)}",
            "cat1": leaf.cat1, "cat2": leaf.cat2, "cat3": leaf.cat3,
            "price": round(leaf.price * math.exp(rng.gauss(0, 0.35)) * 2) / 2,
            "x": tx + rng.gauss(0, sd), "y": ty + rng.gauss(0, sd),
            "goods": ", ".join(goods), "top_sellers": ", ".join(goods[: rng.randint(2, 3)]),
            "pop": math.exp(rng.gauss(0, 1)), "cat": leaf.cat2,
        })
    return out


def _naive_clicks(items: list[dict], n_clicks: int, rng: random.Random) -> float:
    """Seconds for ``n_clicks`` exact clicks: weight every item of the city, then sample."""
    cats = sorted({it["cat"] for it in items})
    taste = {c: rng.random() for c in cats}
    x, y = 0.0, 0.0
    t = time.perf_counter()
    for _ in range(n_clicks):
        w = [math.exp(-math.hypot(it["x"] - x, it["y"] - y) / 3.0) * taste[it["cat"]] * it["pop"] for it in items]
        pick = rng.choices(items, w)[0]
        x, y = pick["x"], pick["y"]
    return time.perf_counter() - t


def naive_baseline(n_items: int, n_interactions: int, items_per_city: int, seed: int) -> dict:
    rng = random.Random(seed)
    sample = 20_000
    t = time.perf_counter()
    _naive_items(sample, rng)
    item_rate = sample / (time.perf_counter() - t)
    city_items = _naive_items(items_per_city, rng)
    n_clicks = max(3, min(50, 2_000_000 // items_per_city))
    click_rate = n_clicks / _naive_clicks(city_items, n_clicks, rng)
    return {
        "naive_item_rate": item_rate,
        "naive_click_rate": click_rate,
        "naive_estimate_s": n_items / item_rate + n_interactions / click_rate,
    }


def numpy_points_s(n: int, seed: int) -> float:
    import numpy as np

    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    _ = rng.standard_normal((n, 2)) * 3.0 + rng.uniform(-30, 30, size=(n, 2))
    return time.perf_counter() - t


# ------------------------------------------------------------------ driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only 100k items")
    ap.add_argument("--sizes", default=None, help="comma-separated among 100k,1m,2.3m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per size")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.seed, not args.no_validate)))
        return

    sizes = ["100k"] if args.quick else (args.sizes.split(",") if args.sizes else list(SIZES))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lgsid_pipeline.world.generator import PRESETS

    print(f"cpu count: {os.cpu_count()}, load average {os.getloadavg()}, seed {args.seed}")
    rows = []
    for size in sizes:
        preset = SIZES[size]
        cmd = [sys.executable, os.path.abspath(__file__), "--child", preset, "--seed", str(args.seed)]
        if args.no_validate:
            cmd.append("--no-validate")
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(f"{preset}: child failed (rc {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["child_wall_s"] = wall
        cfg = PRESETS[preset]
        per_city = cfg.n_items // len(cfg.cities)
        res.update(naive_baseline(res["items"], res["interactions"], per_city, args.seed))
        res["numpy_points_s"] = numpy_points_s(res["items"], args.seed)
        res["speedup_vs_naive"] = res["naive_estimate_s"] / res["generate_s"]
        res["load_average_after"] = os.getloadavg()
        rows.append(res)
        print(json.dumps(res, indent=1))
        sys.stdout.flush()

    print()
    print("| preset | items | interactions | generate s (CPU s) | peak RSS GiB (generate) | validate items s "
          "| validate interactions s | peak RSS GiB (with validation) | naive estimate s | speedup vs naive "
          "| numpy points s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['items']:,} | {r['interactions']:,} | {r['generate_s']:.1f} "
              f"({r['generate_cpu_s']:.1f}) "
              f"| {r['peak_rss_gib_generate']:.2f} | {r.get('validate_items_s', float('nan')):.1f} "
              f"| {r.get('validate_interactions_s', float('nan')):.1f} "
              f"| {r.get('peak_rss_gib_with_validation', float('nan')):.2f} | {r['naive_estimate_s']:.0f} "
              f"| {r['speedup_vs_naive']:.0f}x | {r['numpy_points_s']:.3f} |")


if __name__ == "__main__":
    main()
