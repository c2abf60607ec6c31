"""benchmarks/bench_cities.py: the spread world keeps every item valid and each city compact."""

import polars as pl

from benchmarks.bench_cities import spread_over_cities
from lgsid_pipeline.data.catalog import validate_items


def test_spread_keeps_items_valid_and_makes_the_asked_cities(test_world):
    spread = spread_over_cities(test_world.items, 40)
    res = validate_items(spread)
    assert res.quarantine.height == 0 and res.valid.height == test_world.items.height
    assert 30 <= res.valid["city_key"].n_unique() <= 40  # a few of 40 may draw no item
    extent = res.valid.group_by("city_key").agg((pl.col("lat").max() - pl.col("lat").min()).alias("span"))
    assert extent["span"].max() < 1.0  # each city stays as compact as a city of the original world
