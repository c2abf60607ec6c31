"""Soak: a 1M-item catalog refresh (validate -> per-city Delta partitions -> re-read), then the
fault drills of ``tests/reliability`` repeated more times.

    .venv/bin/python benchmarks/soak.py --quick       # bench-100k items, fewer drills
    .venv/bin/python benchmarks/soak.py               # bench-1m items (1,000,000)

Refresh phases (items of ``lgsid_pipeline.world.generator.stream_world(preset, seed)``, no interactions):

1. ``generate``: the synthetic catalog; then 1% of the rows are damaged (NaN / out-of-range /
   swapped coordinates, empty and duplicated ids, NUL bytes), seeded.
2. ``validate``: ``catalog.validate_items``; checks valid + quarantined == input rows.
3. ``delta_write``: every city written as its own partition through the pipeline's Delta type
   handler (``resources.delta_io.RetryingDeltaLakePolarsTypeHandler``, a predicate overwrite of
   that ``city_key``), twice (an initial load, then a refresh of every city).
4. ``reread``: ``pl.read_delta`` of the table; per-city row counts and ids compared.

Baseline, same run: one ``write_parquet`` + ``read_parquet`` of the whole validated catalog
(no partitions, no transaction log) -- the ratio is the cost of per-city Delta partitions.

Peak RSS is ``ru_maxrss`` of this process after each phase (the drills run in child processes,
not counted; wrap the command in ``/usr/bin/time -v`` for the whole run).

Drills: SIGKILL during Delta writes (table must hold one complete version), and racing first
writes of fresh tables by 3 processes with the pipeline's handler and with the stock
``dagster-deltalake-polars`` handler for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def damage(items: pl.DataFrame, frac: float, seed: int) -> tuple[pl.DataFrame, int]:
    """Damage ``frac`` of the rows, vectorised and seeded; returns (frame, n damaged)."""
    rng = np.random.default_rng(seed)
    n = items.height
    idx = rng.choice(n, size=int(n * frac), replace=False)
    kind = rng.integers(0, 6, size=len(idx))
    lat = items["lat"].to_numpy().copy()
    lon = items["lon"].to_numpy().copy()
    ids = items["item_id"].to_numpy().astype(object)
    names = items["name"].to_numpy().astype(object)
    lat[idx[kind == 0]] = np.nan
    lat[idx[kind == 1]] = 123.0
    sw = idx[kind == 2]
    lat[sw], lon[sw] = lon[sw].copy(), lat[sw].copy()
    ids[idx[kind == 3]] = ""
    ids[idx[kind == 4]] = ids[(idx[kind == 4] + 1) % n]
    names[idx[kind == 5]] = "bad\x00name"
    return items.with_columns(pl.Series("lat", lat), pl.Series("lon", lon),
                              pl.Series("item_id", ids, dtype=pl.Utf8),
                              pl.Series("name", names, dtype=pl.Utf8)), len(idx)


def write_cities(valid: pl.DataFrame, table_uri: str) -> int:
    import dagster as dg
    from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice
    from dagster_deltalake.io_manager import TableConnection

    storage = _module("lgsid_storage", REPO / "resources" / "storage.py")
    handler = storage.RetryingDeltaLakePolarsTypeHandler()
    cities = valid["city_key"].unique().sort().to_list()
    for city in cities:
        ctx = dg.build_output_context(resource_config={"mode": None}, definition_metadata={})
        table_slice = TableSlice(table=Path(table_uri).name, schema="lgsid", database="deltalake",
                                 partition_dimensions=[TablePartitionDimension(partition_expr="city_key",
                                                                               partitions=[city])])
        conn = TableConnection(table_uri=table_uri, storage_options={}, table_config=None)
        handler.handle_output(ctx, table_slice, valid.filter(pl.col("city_key") == city), conn)
    return len(cities)


def refresh(preset: str, seed: int, work: Path) -> dict:
    from lgsid_pipeline.data.catalog import validate_items
    from lgsid_pipeline.world.generator import stream_world

    out: dict = {"preset": preset, "seed": seed}
    t = time.perf_counter()
    items = stream_world(preset, seed=seed).items
    items, n_damaged = damage(items, 0.01, seed)
    out.update(n_items=items.height, n_damaged=n_damaged, generate_s=time.perf_counter() - t,
               rss_after_generate_mb=peak_mb())

    t = time.perf_counter()
    res = validate_items(items, source=f"{preset}/items")
    out.update(validate_s=time.perf_counter() - t, valid=res.valid.height, quarantined=res.quarantine.height,
               rows_lost=items.height - res.valid.height - res.quarantine.height,
               rss_after_validate_mb=peak_mb())
    assert out["rows_lost"] == 0
    valid = res.valid
    del items, res

    table = str(work / "item_catalog")
    t = time.perf_counter()
    out["cities"] = write_cities(valid, table)
    out["delta_first_write_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_cities(valid, table)  # the refresh: every city overwritten in place
    out["delta_refresh_write_s"] = time.perf_counter() - t
    out["rss_after_delta_write_mb"] = peak_mb()

    t = time.perf_counter()
    back = pl.read_delta(table)
    out["reread_s"] = time.perf_counter() - t
    want = dict(valid.group_by("city_key").len().iter_rows())
    got = dict(back.group_by("city_key").len().iter_rows())
    assert got == want, "per-city row counts differ after re-read"
    assert back["item_id"].sort().equals(valid["item_id"].sort())
    out["reread_rows"] = back.height
    out["rss_after_reread_mb"] = peak_mb()
    del back

    t = time.perf_counter()
    valid.write_parquet(work / "baseline.parquet")
    out["baseline_parquet_write_s"] = time.perf_counter() - t
    t = time.perf_counter()
    assert pl.read_parquet(work / "baseline.parquet").height == valid.height
    out["baseline_parquet_read_s"] = time.perf_counter() - t
    out["ratio_delta_write_vs_parquet"] = out["delta_refresh_write_s"] / max(out["baseline_parquet_write_s"], 1e-9)
    out["ratio_delta_read_vs_parquet"] = out["reread_s"] / max(out["baseline_parquet_read_s"], 1e-9)
    return out


def drills(kills: int, races: int, work: Path, seed: int) -> dict:
    import subprocess

    kd = _module("kill_drill", REPO / "tests" / "reliability" / "test_kill_delta_write.py")
    cc = _module("conc_drill", REPO / "tests" / "reliability" / "test_concurrency.py")
    conf = _module("rel_conftest", REPO / "tests" / "reliability" / "conftest.py")
    env = conf.subprocess_env()
    rng = random.Random(seed)
    out: dict = {}
    # (a) SIGKILL during Delta writes.
    table = work / "killed"
    kd._write_other(table)
    script = work / "writer.py"
    script.write_text(kd.WRITER)
    start, current, survived, torn = 0, None, 0, 0
    seen: set[str] = set()
    from deltalake import DeltaTable

    for _ in range(kills):
        committed = kd._run_and_kill([sys.executable, str(script), str(table), str(start), str(kd.N_ROWS)],
                                     rng.uniform(0.05, 1.5), env)
        df = pl.read_delta(str(table))
        allowed = {start + len(committed), committed[-1] if committed else current} - {None}
        current = kd._check_partition(df, "big", allowed, kd.N_ROWS)
        kd._check_partition(df, "other", {-1}, 1000)
        on_disk = {p.name for p in table.rglob("*.parquet")}
        live = {Path(f).name for f in DeltaTable(str(table)).file_uris()}
        torn += bool(on_disk - live - seen)
        seen |= on_disk - live
        start += len(committed) + 1
        survived += 1
    subprocess.run([sys.executable, "-c", kd.WRITER.replace("range(start, start + 1000)", "range(start, start + 1)"),
                    str(table), str(start), str(kd.N_ROWS)], check=True, env=env, capture_output=True)
    kd._check_partition(pl.read_delta(str(table)), "big", {start}, kd.N_ROWS)
    out.update(sigkill_drills=kills, sigkill_survived=survived, sigkill_torn_writes=torn)
    # (c) racing first writes: the pipeline's handler vs the stock one.
    for kind in ("lgsid", "upstream"):
        lost, crashed = 0, 0
        try:
            counts = cc.race_first_writes(work / f"race-{kind}", env, kind, races)
            lost = sum(1 for c in counts if c != {k: 50_000 for k in ("c0", "c1", "c2")})
        except AssertionError:
            crashed = 1
        out[f"race_{kind}_tables"] = races
        out[f"race_{kind}_tables_with_lost_rows"] = lost
        out[f"race_{kind}_writer_crashed"] = crashed
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="bench-100k items and fewer drills")
    ap.add_argument("--preset", default=None, help="world preset (default bench-1m, --quick bench-100k)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kills", type=int, default=None)
    ap.add_argument("--races", type=int, default=None)
    ap.add_argument("--skip-drills", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    preset = args.preset or ("bench-100k" if args.quick else "bench-1m")
    kills = args.kills if args.kills is not None else (3 if args.quick else 10)
    races = args.races if args.races is not None else (3 if args.quick else 8)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lgsid-soak-") as tmp:
        work = Path(tmp)
        result = refresh(preset, args.seed, work)
        for k, v in result.items():
            print(f"refresh {k}: {v:.3f}" if isinstance(v, float) else f"refresh {k}: {v}", flush=True)
        if not args.skip_drills:
            d = drills(kills, races, work, args.seed)
            for k, v in d.items():
                print(f"drill {k}: {v:.1f}" if isinstance(v, float) else f"drill {k}: {v}", flush=True)
            result.update(d)
    result["total_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = peak_mb()
    print(f"SOAK {preset}: {result['n_items']:,} items, peak RSS {result['peak_rss_mb']:.0f} MB, "
          f"validate {result['validate_s']:.1f}s, per-city Delta refresh {result['delta_refresh_write_s']:.1f}s "
          f"({result['ratio_delta_write_vs_parquet']:.1f}x one parquet write), re-read {result['reread_s']:.1f}s "
          f"({result['ratio_delta_read_vs_parquet']:.1f}x), rows lost {result['rows_lost']}, total {result['total_s']:.0f}s",
          flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
