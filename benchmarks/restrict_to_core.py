"""Write a copy of a shared-schema dataset restricted to the items that survive the README
next-item protocol (unknown items dropped, iterated 5-core), for full pipeline runs on 2 CPU
cores.

The recommenders rank exactly these items (full-catalogue ranking after filtering), so the
evaluation table is unchanged in scope, while encoding, G-DPO and the tokenizers only see the
ranking universe instead of every venue in the file. Interactions on dropped items are removed
too (they would otherwise be quarantined as unknown items); the 5-core of the result is the
same fixed point, so the split is identical.

    .venv/bin/python benchmarks/restrict_to_core.py ../shared/data/gowalla_nyc /tmp/gowalla_core
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lgsid_pipeline.recommenders.data import next_item_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--min-core", type=int, default=5)
    args = ap.parse_args()
    items = pl.read_parquet(args.src / "items.parquet")
    inter = pl.read_parquet(args.src / "interactions.parquet")
    split = next_item_split(inter, min_core=args.min_core, known_items=items["item_id"].cast(pl.Utf8))
    keep = pl.Series("item_id", split.item_ids, dtype=pl.Utf8)
    items_out = items.filter(pl.col("item_id").cast(pl.Utf8).is_in(keep.implode()))
    # Only items are filtered: the users that the core removes are removed again by the same
    # iterated core (the largest 5-core is unique), so the split comes out identical.
    inter_out = inter.filter(pl.col("item_id").cast(pl.Utf8).is_in(keep.implode()))
    args.dst.mkdir(parents=True, exist_ok=True)
    items_out.write_parquet(args.dst / "items.parquet")
    inter_out.write_parquet(args.dst / "interactions.parquet")
    print(f"{args.src.name}: items {items.height:,} -> {items_out.height:,}, interactions {inter.height:,} -> "
          f"{inter_out.height:,}, users {inter['user_id'].n_unique():,} -> {inter_out['user_id'].n_unique():,}")


if __name__ == "__main__":
    main()
