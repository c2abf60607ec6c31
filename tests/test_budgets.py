"""Budgets by total: a floor per city, the rest by size, never more than a city has."""

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgsid_pipeline.budgets import allocate, sample_by_city


def test_floor_then_proportional():
    alloc = allocate({"big": 1000, "mid": 100, "tiny": 3}, total=200, floor=10)
    assert alloc["tiny"] == 3  # capped by what it has
    assert sum(alloc.values()) == 200
    assert alloc == {"big": 172, "mid": 25, "tiny": 3}  # floors 10+10+3, the other 177 by room 990:90


def test_floors_win_over_a_small_total_and_none_takes_all():
    assert allocate({"a": 50, "b": 50, "c": 50}, total=10, floor=8) == {"a": 8, "b": 8, "c": 8}
    assert allocate({"a": 5, "b": 7}, total=None) == {"a": 5, "b": 7}
    assert allocate({"a": 5, "b": 7}, total=100, floor=2) == {"a": 5, "b": 7}
    with pytest.raises(ValueError):
        allocate({"a": 1}, total=-1)


def test_cost_grows_with_the_total_not_with_cities():
    few = allocate({f"c{i}": 50 for i in range(4)}, total=160, floor=4)
    many = allocate({f"c{i}": 50 for i in range(142)}, total=160, floor=1)
    assert sum(few.values()) == 160 and sum(many.values()) == 160
    assert min(many.values()) >= 1


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 500), min_size=1, max_size=20),
       st.integers(0, 3000), st.integers(0, 20))
def test_allocation_invariants(sizes, total, floor):
    alloc = allocate(sizes, total, floor)
    assert set(alloc) == set(sizes)
    assert all(0 <= alloc[k] <= sizes[k] for k in sizes)
    assert all(alloc[k] >= min(sizes[k], floor) for k in sizes)
    floors = sum(min(v, floor) for v in sizes.values())
    assert sum(alloc.values()) == max(floors, min(total, sum(sizes.values())))


def test_sample_by_city_is_seeded_and_follows_the_allocation():
    frame = pl.DataFrame({"item_id": [f"i{i}" for i in range(300)] * 2,
                          "city_key": ["a"] * 250 + ["b"] * 40 + ["c"] * 10 + ["a"] * 250 + ["b"] * 40 + ["c"] * 10,
                          "rank": [0] * 300 + [1] * 300})
    rows, alloc = sample_by_city(frame, "item_id", total=60, floor=5, seed=3)
    assert alloc == allocate({"a": 250, "b": 40, "c": 10}, 60, 5)
    assert rows.group_by("city_key").agg(pl.col("item_id").n_unique()).sort("city_key")["item_id"].to_list() == \
        [alloc["a"], alloc["b"], alloc["c"]]
    assert rows.height == 2 * 60  # every row of a picked id is kept
    again, _ = sample_by_city(frame, "item_id", total=60, floor=5, seed=3)
    assert again.sort("item_id", "rank").equals(rows.sort("item_id", "rank"))
