"""Cost against the number of cities: the same items and interactions spread over 10, 100 and
1,000 cities, through the per-city stages (catalog, co-occurrence pairs, negatives, origin
embeddings, SIDs from the codebook), batched (one run per batch of up to CITY_BATCH cities, the default) and, as the
baseline measured in the same run, one run per city (``--city-batch 1``).

    python -m benchmarks.bench_cities --cities 10,100,1000 --baseline 10,100 \
        --out benchmarks/results/speed/cities.json

For a fixed item count the work does not depend on the number of cities, so the time that
grows with it is per-city overhead: ``(t(N) - t(N0)) / (N - N0)`` per stage, printed per mode.
The embeddings use a tiny BERT built from a config (the stage's cost here is its overhead, not
the encoder's speed; bench_encoder.py measures that). The SID codebook (one cross-city fit of
the shipped default variant) is timed apart and not counted per city. Prints the machine's load beside the
figures: on a shared machine read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

STAGE_ASSETS = ["item_catalog", "user_interactions", "catalog_quarantine", "cooccurrence_pairs",
                "distance_ranked_negatives", "item_embeddings", "sid_codebook", "sid_table"]
CODEBOOK = {"variants": ["hgit_geo_last_origin"]}  # the shipped default, on origin embeddings


def spread_over_cities(items: pl.DataFrame, n_cities: int, seed: int = 0) -> pl.DataFrame:
    """The same items relabelled into ``n_cities`` cities (city ``c0001``...; one province per 50
    cities), each moved to its own place on a grid so cities stay apart; offsets inside a city
    are kept, so every city is a small copy of the original geography."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, n_cities, items.height)
    grid = int(np.ceil(np.sqrt(n_cities)))
    row, col = which // grid, which % grid
    # offsets from each item's own (original) city centre, so a new city is as compact as an old one
    return items.with_columns(
        (pl.col("lat") - pl.col("lat").mean().over(["province", "city"]) + 20.0 + pl.Series(row * 0.6)).alias("lat"),
        (pl.col("lon") - pl.col("lon").mean().over(["province", "city"]) - 100.0 + pl.Series(col * 0.6)).alias("lon"),
    ).with_columns(
        pl.Series("city", [f"c{k:04d}" for k in which]),
        pl.Series("province", [f"p{k // 50:03d}" for k in which]),
    )


def run_once(data: Path, model: Path, n_cities: int, batch: int | None, root: Path) -> dict:
    import dagster as dg

    from orchestration.cli import materialize_graph, open_instance, prepare_home, stages
    from orchestration.definitions import build_defs
    from resources import DataSource, EncoderResource

    home = root / f"home-{n_cities}-{batch or 'default'}"
    home = prepare_home(str(home))
    source = DataSource(kind="folder", path=str(data))
    defs = build_defs(str(home), source, EncoderResource(model_path=str(model), device="cpu"))
    cities = source.city_keys()
    run_config = {"ops": {"item_embeddings": {"config": {"variants": ["origin"]}},
                          "sid_codebook": {"config": CODEBOOK}}}
    seconds: dict[str, float] = {}
    global_seconds: dict[str, float] = {}
    quiet = lambda *a, **k: None  # noqa: E731
    with open_instance(home) as instance:
        instance.add_dynamic_partitions("city", cities)
        selection = {dg.AssetKey(k) for k in STAGE_ASSETS}
        for is_city, keys in stages(defs, selection):
            name = "+".join(sorted(k.to_user_string() for k in keys))
            start = time.perf_counter()
            materialize_graph(defs, instance, cities, set(keys), run_config=run_config, echo=quiet,
                              batch_size=batch)
            # the codebook is one cross-city fit: its time is reported, not counted per city
            (seconds if is_city else global_seconds)[name] = round(time.perf_counter() - start, 2)
        runs = len(instance.get_run_records())
    return {"cities": len(cities), "batch": batch, "runs": runs, "seconds": seconds,
            "total_s": round(sum(seconds.values()), 2), "global_seconds": global_seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo", help="world preset whose items and interactions are spread")
    ap.add_argument("--items", type=int, default=None,
                    help="items of the world (users scale with them); default: the preset's")
    ap.add_argument("--cities", default="10,100,1000")
    ap.add_argument("--baseline", default="10,100", help="city counts also run with one run per city")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from lgsid_pipeline.alignment.encoder import build_tiny_bert
    from lgsid_pipeline.world.generator import generate_world

    from dataclasses import replace

    from lgsid_pipeline.world.generator import PRESETS

    config = PRESETS[args.preset]
    if args.items:
        config = replace(config, n_items=args.items, n_users=max(1, round(config.n_users * args.items / config.n_items)))
    world = generate_world(config, seed=0)
    counts = [int(c) for c in args.cities.split(",") if c]
    base_counts = [int(c) for c in args.baseline.split(",") if c]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lgsid-cities-") as tmp:
        root = Path(tmp)
        model = build_tiny_bert(root / "tiny-bert")
        for n in counts:
            data = root / f"data-{n}"
            data.mkdir()
            spread_over_cities(world.items, n).write_parquet(data / "items.parquet")
            world.interactions.write_parquet(data / "interactions.parquet")
            for batch in ([None, 1] if n in base_counts else [None]):
                row = run_once(data, model, n, batch, root)
                row["mode"] = "one run per city" if batch == 1 else "batched"
                rows.append(row)
                print(f"{row['cities']:>5} cities  {row['mode']:<17} {row['runs']:>5} runs  "
                      f"{row['total_s']:>8.1f} s  " + "  ".join(f"{k}={v}" for k, v in row["seconds"].items()),
                      flush=True)
    summary = {}
    for mode in ("batched", "one run per city"):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["cities"])
        if len(mine) < 2:
            continue
        first, last = mine[0], mine[-1]
        span = last["cities"] - first["cities"]
        summary[mode] = {
            "from_cities": first["cities"], "to_cities": last["cities"],
            "overhead_s_per_city": {k: round((last["seconds"][k] - first["seconds"][k]) / span, 4)
                                    for k in last["seconds"]},
            "overhead_s_per_city_all_stages": round((last["total_s"] - first["total_s"]) / span, 4)}
    ratios = {}
    for n in base_counts:
        b = [r for r in rows if r["cities"] == n and r["mode"] == "batched"]
        o = [r for r in rows if r["cities"] == n and r["mode"] == "one run per city"]
        if b and o:
            ratios[str(n)] = round(o[0]["total_s"] / max(b[0]["total_s"], 1e-9), 2)
    report = {"preset": args.preset, "items": world.items.height, "interactions": world.interactions.height,
              "load_avg": os.getloadavg(), "cpus": os.cpu_count(), "rows": rows, "overhead": summary,
              "speedup_batched_vs_one_run_per_city": ratios}
    print(json.dumps({"overhead": summary, "speedup_batched_vs_one_run_per_city": ratios,
                      "load_avg": report["load_avg"]}, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
