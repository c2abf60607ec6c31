"""Split protocol, metrics, stats, reachability and heuristics of lgsid_pipeline.recommenders."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats as st
from sklearn.metrics import roc_auc_score

from lgsid_pipeline.recommenders.data import item_attribute, k_core, last_value_per_user, next_item_split
from lgsid_pipeline.recommenders.heuristics import (
    drop_masked,
    geo_nearest_topk,
    popularity_topk,
    run_heuristic,
    transitions_topk,
)
from lgsid_pipeline.recommenders.metrics import auc, gauc, hit_ndcg, target_ranks, topk_metrics
from lgsid_pipeline.recommenders.reachability import haversine_km, reachable_share, reachable_share_per_user
from lgsid_pipeline.recommenders.stats import min_attainable_p, paired_over_users, summarize, wilcoxon_paired
from lgsid_pipeline.recommenders.synthetic import planted_sequences


def _inter(rows, with_ts=False):
    """rows: (user, item, order) -> interactions frame (seq_idx order, or timestamp)."""
    df = pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "seq_idx": [r[2] for r in rows]})
    if with_ts:
        df = df.with_columns((pl.datetime(2024, 1, 1, time_zone="UTC") + pl.duration(hours=pl.col("seq_idx"))).alias("timestamp"))
    return df


# ---------------------------------------------------------------- split protocol


def test_leave_one_out_orders_by_seq_idx_and_splits_last_two():
    rows = [("u", "c", 2), ("u", "a", 0), ("u", "d", 3), ("u", "b", 1)]
    s = next_item_split(_inter(rows), min_core=0)
    ids = s.item_ids
    assert [ids[i] for i in s.train_seqs[0]] == ["a", "b"]
    assert ids[s.valid_target[0]] == "c" and ids[s.test_target[0]] == "d"
    assert s.order == "seq_idx"
    assert [ids[i] for i in s.history("test")[0]] == ["a", "b", "c"]
    assert ids[s.last_item("test")[0]] == "c" and ids[s.last_item("valid")[0]] == "b"


def test_timestamp_order_wins_over_seq_idx():
    df = _inter([("u", "x", 0), ("u", "y", 1), ("u", "z", 2)], with_ts=True)
    df = df.with_columns(pl.Series("seq_idx", [2, 1, 0]))  # contradicts time
    s = next_item_split(df, min_core=0)
    assert s.order == "timestamp"
    assert s.item_ids[s.test_target[0]] == "z"


def test_immediate_repeats_collapse_but_revisits_stay():
    rows = [("u", it, k) for k, it in enumerate(["a", "a", "b", "b", "b", "a", "c", "d"])]
    s = next_item_split(_inter(rows), min_core=0)
    seq = [s.item_ids[i] for i in s.history("serve")[0]]
    assert seq == ["a", "b", "a", "c", "d"]
    assert s.counts["collapsed_repeats"] == 3
    s2 = next_item_split(_inter(rows), min_core=0, collapse_repeats=False)
    assert len(s2.history("serve")[0]) == 8


def test_unknown_items_are_dropped_and_counted():
    rows = [("u", it, k) for k, it in enumerate(["a", "ghost", "b", "c", "d"])]
    s = next_item_split(_inter(rows), min_core=0, known_items=["a", "b", "c", "d"])
    assert "ghost" not in s.item_ids
    assert s.counts["dropped_unknown_items"] == 1


def test_k_core_is_iterated_to_a_fixed_point():
    # u1 has 2 interactions -> removed; that makes item "x" drop below 2 -> u2 then has 1 -> removed
    rows = [("u1", "x", 0), ("u1", "y", 1), ("u2", "x", 0), ("u2", "z", 1), ("u2", "z2", 2)]
    rows += [(f"v{j}", it, k) for j in range(3) for k, it in enumerate(["p", "q", "r"])]
    df = _inter(rows)
    once = df.join(df.group_by("user_id").len().filter(pl.col("len") >= 3).select("user_id"), on="user_id", how="semi")
    assert "u2" in once["user_id"].to_list()  # a single user pass would keep u2
    core, iters = k_core(df, 3)
    assert set(core["user_id"].unique().to_list()) == {"v0", "v1", "v2"}
    assert iters >= 2
    s = next_item_split(df, min_core=3)
    assert sorted(s.user_ids) == ["v0", "v1", "v2"] and sorted(s.item_ids) == ["p", "q", "r"]


def test_short_histories_are_dropped():
    rows = [("short", "a", 0), ("short", "b", 1), ("long", "a", 0), ("long", "b", 1), ("long", "c", 2)]
    s = next_item_split(_inter(rows), min_core=0)
    assert s.user_ids == ["long"]
    assert s.counts["dropped_short_users"] == 1
    assert s.train_seqs[0].size == 1


def test_fixed_split_orders_train_before_test():
    df = pl.DataFrame(
        {
            "user_id": ["u"] * 5,
            "item_id": ["t1", "a", "b", "v", "c"],
            "split": ["test", "train", "train", "tune", "train"],
            "seq_idx": [None] * 5,
        },
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "split": pl.Utf8, "seq_idx": pl.Int64},
    )
    s = next_item_split(df, min_core=0)
    assert s.order == "split"
    seq = [s.item_ids[i] for i in s.history("serve")[0]]
    assert seq == ["a", "b", "c", "v", "t1"]


def test_source_row_restores_file_order_after_a_shuffle():
    """yelp_multicity: no time or seq_idx, so the order inside a split is the file order. A
    Delta table reads back in any row order; ``source_row`` (written by the catalog stage)
    restores it, and the split equals the one on the file."""
    rng = np.random.default_rng(0)
    n = 60
    df = pl.DataFrame({
        "user_id": [f"u{i % 4}" for i in range(n)],
        "item_id": [f"i{j}" for j in rng.integers(0, 25, n)],
        "split": ["train"] * 40 + ["tune"] * 8 + ["test"] * 12,
    }).with_row_index("source_row").with_columns(pl.col("source_row").cast(pl.Int64))
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=1)
    ref = next_item_split(df.drop("source_row"), min_core=0)
    got = next_item_split(shuffled, min_core=0)
    assert got.order == "split"
    assert got.item_ids == ref.item_ids and got.user_ids == ref.user_ids
    assert [list(a) for a in got.history("serve")] == [list(a) for a in ref.history("serve")]
    assert got.test_target.tolist() == ref.test_target.tolist()
    # Without source_row the shuffled frame gives another split: the column is what matters.
    lost = next_item_split(shuffled.drop("source_row"), min_core=0)
    assert [list(a) for a in lost.history("serve")] != [list(a) for a in ref.history("serve")]
    # A table written before the column existed reads back with nulls: row order is used.
    partial = df.with_columns(pl.when(pl.col("source_row") < 5).then(None)
                              .otherwise(pl.col("source_row")).alias("source_row"))
    assert next_item_split(partial, min_core=0).test_target.tolist() == ref.test_target.tolist()


def test_last_value_per_user_follows_the_split_order_with_or_without_source_row():
    """The serving cache's city per user: the last interaction in the split's order. Tables
    written before ``source_row`` existed (no column at all) must work too."""
    df = pl.DataFrame({
        "user_id": ["u", "u", "u", "v", "v"],
        "item_id": ["a", "b", "c", "d", "e"],
        "split": ["test", "train", "train", "train", "tune"],
        "city_key": ["x-test", "x-1", "x-2", "y-1", "y-tune"],
        "source_row": [0, 1, 2, 3, 4],
    })
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=3)
    expect = {"u": "x-test", "v": "y-tune"}
    for frame in (df, shuffled, df.drop("source_row")):
        got = last_value_per_user(frame, "city_key")
        assert dict(zip(got["user_id"].to_list(), got["city_key"].to_list())) == expect
    # Inside one split the file row decides: u's train rows are x-1 then x-2.
    train_only = df.filter(pl.col("split") == "train").sample(fraction=1.0, shuffle=True, seed=0)
    got = last_value_per_user(train_only, "city_key")
    assert dict(zip(got["user_id"].to_list(), got["city_key"].to_list())) == {"u": "x-2", "v": "y-1"}
    with pytest.raises(ValueError, match="city_key"):
        last_value_per_user(df.drop("city_key"), "city_key")


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="item_id"):
        next_item_split(pl.DataFrame({"user_id": ["u"]}))
    with pytest.raises(ValueError, match="order"):
        next_item_split(_inter([("u", "a", 0)]), order="magic")
    with pytest.raises(ValueError, match="split"):
        bad = pl.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "split": ["train", "x", "test"]})
        next_item_split(bad, min_core=0)
    with pytest.raises(ValueError, match=">= 3"):
        next_item_split(_inter([("u", "a", 0), ("u", "b", 1)]), min_core=0)


def test_item_attribute_aligns_to_vocabulary():
    d = planted_sequences(n_items=60, n_users=30, seed=1)
    s = next_item_split(d.interactions, min_core=0)
    lat = item_attribute(s, d.items, "lat")
    ref = dict(zip(d.items["item_id"], d.items["lat"]))
    assert np.allclose(lat, [ref[i] for i in s.item_ids])


# ---------------------------------------------------------------- metrics


def test_hit_ndcg_against_brute_force():
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 50
    scores = rng.normal(size=(n_users, n_items))
    targets = rng.integers(0, n_items, n_users)
    topk = np.argsort(-scores, axis=1)[:, :10]
    m = topk_metrics(topk, targets)
    for k in (5, 10):
        hit = ndcg = 0.0
        for u in range(n_users):
            order = list(np.argsort(-scores[u]))
            r = order.index(targets[u])
            if r < k:
                hit += 1
                ndcg += 1.0 / np.log2(r + 2)
        assert m[f"hit@{k}"] == pytest.approx(hit / n_users)
        assert m[f"ndcg@{k}"] == pytest.approx(ndcg / n_users)
    assert hit_ndcg(np.array([0, -1]))["ndcg@10"] == pytest.approx(0.5)
    assert list(target_ranks(np.array([[3, 4], [5, 6]]), np.array([4, 9]))) == [1, -1]


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding creates ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))
    with pytest.raises(ValueError):
        auc(np.ones(4), np.arange(4.0))


def test_gauc_is_impression_weighted_and_skips_single_class_users():
    rng = np.random.default_rng(2)
    users, labels, scores = [], [], []
    for u in range(30):
        n = int(rng.integers(2, 12))
        y = rng.integers(0, 2, n)
        if u % 5 == 0:
            y[:] = 1  # single-class user: must be skipped
        users += [u] * n
        labels += list(y)
        scores += list(rng.normal(size=n) + y)
    users, labels, scores = np.array(users), np.array(labels), np.array(scores)
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() == labels[m].max():
            continue
        num += roc_auc_score(labels[m], scores[m]) * m.sum()
        den += m.sum()
    assert gauc(users, labels, scores) == pytest.approx(num / den)
    with pytest.raises(ValueError):
        gauc(np.array([0, 0]), np.array([1, 1]), np.array([0.1, 0.2]))


# ---------------------------------------------------------------- stats


def test_summarize_against_scipy():
    x = [0.61, 0.63, 0.62, 0.64, 0.60, 0.625]
    s = summarize(x)
    lo, hi = st.t.interval(0.95, df=5, loc=np.mean(x), scale=st.sem(x))
    assert s["mean"] == pytest.approx(np.mean(x)) and s["sd"] == pytest.approx(np.std(x, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))
    assert s["median"] == pytest.approx(np.median(x))
    assert s["iqr"] == pytest.approx(st.iqr(x))


def test_wilcoxon_paired_matches_scipy_and_flags_small_n():
    a = [0.626, 0.627, 0.625, 0.628, 0.6245, 0.6262]
    b = [0.586, 0.585, 0.587, 0.5855, 0.5862, 0.584]
    w = wilcoxon_paired(a, b)
    assert w["p"] == pytest.approx(st.wilcoxon(a, b).pvalue)
    assert w["p"] == pytest.approx(2 / 64)  # the paper's p = 0.031 with six seeds
    assert w["significant"] and w["can_reach_significance"]
    w5 = wilcoxon_paired(a[:5], b[:5])
    assert w5["min_p"] == pytest.approx(2 / 32) and not w5["can_reach_significance"] and not w5["significant"]
    assert min_attainable_p(3) == pytest.approx(0.25)
    same = wilcoxon_paired([1.0, 2.0], [1.0, 2.0])
    assert np.isnan(same["p"]) and not same["significant"]
    with pytest.raises(ValueError):
        wilcoxon_paired([1.0, 2.0], [1.0])


# ---------------------------------------------------------------- reachability


def test_paired_over_users_detects_a_real_gain_and_not_noise():
    rng = np.random.default_rng(0)
    base = (rng.random(2000) < 0.2).astype(float)  # per-user Hit@10 of a baseline
    better = np.maximum(base, (rng.random(2000) < 0.1).astype(float))  # the same users, plus ~8% more hits
    r = paired_over_users(better, base, n_boot=500, n_perm=2000, seed=1)
    assert r["users"] == 2000 and r["mean_diff"] == pytest.approx(better.mean() - base.mean())
    assert r["significant"] and r["p"] == pytest.approx(1 / 2001)  # no sign flip reaches the observed mean
    assert r["wilcoxon_p"] < 1e-6 and 0 < r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r["rel_diff"] == pytest.approx(r["mean_diff"] / base.mean())
    assert r["wilcoxon_p"] == pytest.approx(st.wilcoxon(better - base, zero_method="wilcox").pvalue)
    assert paired_over_users(better, base, n_boot=500, n_perm=2000, seed=1) == r  # seeded
    # a relabelled copy of the same distribution: no significant difference, CI covers 0
    noise = rng.permutation(base)
    q = paired_over_users(noise, base, n_boot=500, n_perm=2000, seed=1)
    assert not q["significant"] and q["p"] > 0.05 and q["ci_low"] < 0 < q["ci_high"]
    # the permutation p tracks the normal approximation of a paired t-test on the mean
    d = noise - base
    t_p = st.ttest_1samp(d, 0.0).pvalue
    assert abs(q["p"] - t_p) < 0.05
    # the mean and the Wilcoxon test can disagree: few large gains against many small losses
    few_big = np.zeros(1000)
    few_big[:100] = 1.0  # 100 users gain a top-1 hit...
    many_small = np.zeros(1000)
    many_small[100:500] = 0.25  # ...400 others lose a small NDCG: the means are level
    k = paired_over_users(few_big, many_small, n_boot=500, n_perm=2000)
    assert k["mean_diff"] == pytest.approx(0.0) and k["p"] > 0.5 and k["ci_low"] < 0 < k["ci_high"]
    assert k["wilcoxon_p"] < 0.05  # ranks: most differing users lose
    same = paired_over_users(base, base, n_boot=10, n_perm=10)
    assert same["differing_users"] == 0 and np.isnan(same["wilcoxon_p"]) and same["p"] == 1.0
    assert not same["significant"] and same["ci_low"] == same["ci_high"] == 0.0
    with pytest.raises(ValueError, match="paired"):
        paired_over_users(base, base[:-1])
    with pytest.raises(ValueError, match="n_boot"):
        paired_over_users(base, base, n_boot=0)
    with pytest.raises(ValueError, match="n_perm"):
        paired_over_users(base, base, n_perm=0)


def test_reachability_counts_items_within_radius_of_recent_items():
    # item 0 at origin, item 1 ~1.1 km north, item 2 ~11 km north, item 3 has no coordinates
    lat = np.array([0.0, 0.01, 0.1, np.nan])
    lon = np.zeros(4)
    assert haversine_km(0.0, 0.0, 0.01, 0.0) == pytest.approx(1.112, abs=0.01)
    topk = np.array([[1, 2, 3], [0, 1, 2]])
    hist = [np.array([0]), np.array([3])]  # user 1's only recent item has no coordinates
    share = reachable_share_per_user(topk, hist, lat, lon, km=3.0, last_n=5)
    assert share[0] == pytest.approx(0.5)  # item 1 reachable, item 2 not, item 3 unlocated
    assert np.isnan(share[1])
    assert reachable_share(topk, hist, lat, lon, km=3.0) == pytest.approx(0.5)
    assert reachable_share(topk, hist, lat, lon, km=20.0) == pytest.approx(1.0)
    # only the last n items count
    assert reachable_share_per_user(np.array([[2]]), [np.array([2, 0])], lat, lon, km=3.0, last_n=1)[0] == 0.0


# ---------------------------------------------------------------- heuristics


def test_drop_masked_keeps_order():
    c = np.array([[5, 3, 7], [1, 2, 3]])
    assert drop_masked(c, np.array([3, 9]), 2).tolist() == [[5, 7], [1, 2]]


def test_heuristics_learn_what_they_should_and_mask_last_item():
    d = planted_sequences(n_items=120, n_users=80, noise=0.0, seed=3)
    s = next_item_split(d.interactions, min_core=0)
    lat, lon = item_attribute(s, d.items, "lat"), item_attribute(s, d.items, "lon")
    for stage in ("valid", "test"):
        for tk in (
            popularity_topk(s, stage),
            transitions_topk(s, stage),
            geo_nearest_topk(s, stage, lat, lon),
        ):
            assert tk.shape == (s.n_users, 10)
            assert not (tk == s.last_item(stage)[:, None]).any()
            assert all(len(set(r)) == 10 for r in tk.tolist())
    tr = run_heuristic("transitions", s)
    pop = run_heuristic("popularity", s)
    assert tr.metrics["test_hit@10"] > 0.9  # deterministic successor is seen in training
    assert pop.metrics["test_hit@10"] < 0.5
    geo = run_heuristic("geo_nearest", s, item_lat=lat, item_lon=lon)
    # geo-nearest really returns nearest items: first pick is the closest other located item
    last = s.last_item("test")[0]
    dist = haversine_km(lat[last], lon[last], lat, lon)
    dist[last] = np.inf
    assert geo.topk["test"][0, 0] == int(np.argmin(dist))
    with pytest.raises(ValueError, match="geo_nearest"):
        run_heuristic("geo_nearest", s)
    with pytest.raises(ValueError, match="unknown heuristic"):
        run_heuristic("oracle", s)
