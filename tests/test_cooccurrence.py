import itertools
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from lgsid_pipeline.alignment import cooccurrence as cooc
from lgsid_pipeline.alignment.cooccurrence import cooccurrence_pairs, default_threshold


def _brute(df: pl.DataFrame, s_th: int) -> dict[tuple[str, str], int]:
    """Eq. 5 literally: count users whose (whole) history holds both items."""
    hist: dict[str, set[str]] = {}
    for u, i in df.select("user_id", "item_id").iter_rows():
        hist.setdefault(u, set()).add(i)
    counts: Counter = Counter()
    for items in hist.values():
        for a, b in itertools.combinations(sorted(items), 2):
            counts[(a, b)] += 1
    return {p: s for p, s in counts.items() if s > s_th}


def _as_dict(res) -> dict[tuple[str, str], int]:
    return {(a, b): s for a, b, s in res.pairs.iter_rows()}


def _random_interactions(n_users=120, n_items=40, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        length = int(rng.integers(1, 12))
        # Skewed item choice so some pairs are frequent; repeats on purpose.
        its = np.minimum(rng.geometric(0.12, length) - 1, n_items - 1)
        rows += [(f"u{u}", f"item{i:02d}") for i in its]
    return pl.DataFrame(rows, schema=["user_id", "item_id"], orient="row")


def test_tiny_example_with_repeats_and_single_item_users():
    df = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u2", "u2", "u3", "u4", "u4", "u5"],
            "item_id": ["a", "b", "a", "a", "a", "b", "c", "b", "c", "a"],
        }
    )
    res = cooccurrence_pairs(df, s_th=0)
    assert _as_dict(res) == {("a", "b"): 2, ("b", "c"): 1}
    assert res.pairs["score"].to_list() == [2, 1]  # sorted by score desc
    # Strictly greater: s_th = 1 keeps only the pair shared by two users.
    assert _as_dict(cooccurrence_pairs(df, s_th=1)) == {("a", "b"): 2}
    assert cooccurrence_pairs(df, s_th=2).pairs.height == 0
    m = res.metrics
    assert m["n_pairs"] == 2 and m["n_users"] == 5 and m["n_items_in_pairs"] == 3
    assert m["score_max"] == 2 and m["threshold"] == 0 and m["max_history"] == 50


@pytest.mark.parametrize("s_th", [0, 1, 2, 3, 5])
def test_matches_brute_force_on_random_data(s_th, monkeypatch):
    df = _random_interactions()
    expected = _brute(df, s_th)
    assert _as_dict(cooccurrence_pairs(df, s_th=s_th, max_history=1000)) == expected
    # Force many small blocks of X^T X: same answer, with one thread or several at once (the
    # frame is identical, row order included).
    monkeypatch.setattr(cooc, "_BLOCK_WORK", 7)
    res = cooccurrence_pairs(df, s_th=s_th, max_history=1000, workers=1)
    assert _as_dict(res) == expected
    for workers in (2, 3):
        assert cooccurrence_pairs(df, s_th=s_th, max_history=1000, workers=workers).pairs.equals(res.pairs)
    # sorted by score desc, then item_a, item_b (string order)
    assert res.pairs.equals(res.pairs.sort(["score", "item_a", "item_b"], descending=[True, False, False]))
    assert all(a < b for a, b in expected)
    if expected:
        assert res.metrics["score_max"] == max(expected.values())


def test_item_order_is_string_order():
    df = pl.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["z9", "b10", "b10", "z9"]})
    res = cooccurrence_pairs(df, s_th=0)
    assert res.pairs.rows() == [("b10", "z9", 2)]


def test_history_cap_keeps_most_recent_by_timestamp_then_seq_idx():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    # u1 clicked a, b, c, d in time order (rows shuffled); with a cap of 2 only c, d remain.
    df = pl.DataFrame(
        {
            "user_id": ["u1"] * 4 + ["u2"] * 4,
            "item_id": ["c", "a", "d", "b", "a", "b", "c", "a"],
            "timestamp": [t0 + timedelta(days=d) for d in (2, 0, 3, 1)] + [None] * 4,
            "seq_idx": [None] * 4 + [0, 1, 2, 3],
        }
    )
    res = cooccurrence_pairs(df, s_th=0, max_history=2)
    # u2 without timestamps: seq_idx order a, b, c, a -> distinct most recent: a (3), c (2).
    assert _as_dict(res) == {("c", "d"): 1, ("a", "c"): 1}
    # Without a cap every pair of each user's distinct items counts.
    full = cooccurrence_pairs(df, s_th=0, max_history=100)
    assert _as_dict(full) == _brute(df, 0)


def test_row_order_is_recency_without_time_columns():
    df = pl.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "d"]})
    assert _as_dict(cooccurrence_pairs(df, s_th=0, max_history=2)) == {("c", "d"): 1}


def test_source_row_is_recency_when_rows_are_shuffled():
    """Rows read back from Delta come in any order; ``source_row`` keeps the file's recency."""
    df = pl.DataFrame({"user_id": ["u"] * 4, "item_id": ["c", "a", "d", "b"], "source_row": [2, 0, 3, 1]})
    assert _as_dict(cooccurrence_pairs(df, s_th=0, max_history=2)) == {("c", "d"): 1}
    assert _as_dict(cooccurrence_pairs(df.drop("source_row"), s_th=0, max_history=2)) == {("b", "d"): 1}


def test_default_threshold():
    assert default_threshold(50_000_000, 2_325_266) == 1200  # the paper's own setting
    assert default_threshold(23_000_000, 2_300_000) == 552
    assert default_threshold(1_000, 500) == 1  # floor
    assert default_threshold(10**12, 10) == 1200  # never above the paper's value
    assert default_threshold(0, 0) == 1
    with pytest.raises(ValueError, match="n_interactions"):
        default_threshold(-1, 5)


def test_default_threshold_used_and_yields_pairs():
    df = _random_interactions(n_users=400, n_items=60, seed=3)
    res = cooccurrence_pairs(df)
    assert res.threshold == default_threshold(df.height, df["item_id"].n_unique()) == 1
    assert res.pairs.height == len(_brute(df, 1)) > 0
    assert res.metrics["n_items_in_pairs"] > 10


def test_empty_and_bad_input():
    empty = pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8})
    res = cooccurrence_pairs(empty, s_th=0)
    assert res.pairs.height == 0 and res.pairs.columns == ["item_a", "item_b", "score"]
    with pytest.raises(ValueError, match="'item_id' is null in row 1"):
        cooccurrence_pairs(pl.DataFrame({"user_id": ["u", "u"], "item_id": ["a", None]}))
    with pytest.raises(ValueError, match="user_id"):
        cooccurrence_pairs(pl.DataFrame({"item_id": ["a"]}))
    with pytest.raises(ValueError, match="max_history"):
        cooccurrence_pairs(pl.DataFrame({"user_id": ["u"], "item_id": ["a"]}), max_history=1)


@pytest.mark.parametrize("max_history", [2, 3, 5])
def test_history_cap_matches_brute_force(max_history):
    rng = np.random.default_rng(max_history)
    df = _random_interactions(n_users=80, n_items=25, seed=max_history)
    df = df.with_columns(pl.Series("seq_idx", rng.permutation(df.height)))  # shuffled recency
    # Reference: per user, most recent first (seq_idx desc), first max_history distinct items.
    capped = []
    for (u,), g in df.group_by("user_id"):
        seen: list[str] = []
        for item in g.sort("seq_idx", descending=True)["item_id"]:
            if item not in seen:
                seen.append(item)
        capped += [(u, i) for i in seen[:max_history]]
    ref = pl.DataFrame(capped, schema=["user_id", "item_id"], orient="row")
    got = cooc.capped_histories(df, max_history)
    assert sorted(got.rows()) == sorted(ref.rows())
    assert _as_dict(cooccurrence_pairs(df, s_th=0, max_history=max_history)) == _brute(ref, 0)


def test_workers_must_be_positive():
    df = pl.DataFrame({"user_id": ["u1", "u1"], "item_id": ["a", "b"]})
    with pytest.raises(ValueError, match="workers must be >= 1"):
        cooccurrence_pairs(df, s_th=0, workers=0)
