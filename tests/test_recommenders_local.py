"""Target strata, target reachability, and the local-life ranking mode (heuristics and TIGER)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lgsid_pipeline.geo import haversine_km
from lgsid_pipeline.recommenders.data import SplitData, item_attribute, next_item_split
from lgsid_pipeline.recommenders.heuristics import item_counts
from lgsid_pipeline.recommenders.local import (
    allowed_masks,
    eligible_users,
    local_candidates,
    local_metrics,
    local_nearest_topk,
    local_popularity_topk,
    tiger_local_topk,
)
from lgsid_pipeline.recommenders.strata import stratified_scores, target_reachability, target_strata
from lgsid_pipeline.recommenders.synthetic import planted_sequences
from lgsid_pipeline.recommenders.tiger import (
    SIDCodec,
    TigerConfig,
    beam_search,
    history_matrix,
    rank_stage,
    rank_users,
    train_tiger,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KM_PER_DEG_LAT = 111.195  # haversine km per degree of latitude on the mean Earth radius


def _split(train, valid, test, n_items):
    return SplitData(
        item_ids=[f"i{j}" for j in range(n_items)],
        user_ids=[f"u{u}" for u in range(len(train))],
        train_seqs=[np.asarray(t, dtype=np.int64) for t in train],
        valid_target=np.asarray(valid, dtype=np.int64),
        test_target=np.asarray(test, dtype=np.int64),
        order="seq_idx",
    )


@pytest.fixture
def line_world():
    """Eight items on a meridian, item j at j km north of the origin (item 7 has no coordinates)."""
    lat = np.arange(8) / KM_PER_DEG_LAT
    lon = np.zeros(8)
    lat[7] = np.nan
    lon[7] = np.nan
    # item 0 is by far the most popular in training
    split = _split(
        train=[[0, 0, 0, 1], [0, 5, 0, 6], [2, 0, 3], [0, 4, 0, 1], [0, 2, 0, 6]],
        valid=[2, 1, 4, 6, 3],
        test=[0, 6, 3, 1, 7],
        n_items=8,
    )
    return split, lat, lon


def test_target_strata_known_answers(line_world):
    split, lat, lon = line_world
    m = target_strata(split, lat, lon, airports=[3], popular_share=0.01, near_km=1.5, last_n=2, jump_km=4.0)
    # user 0: target 0 = most popular; last two items (1, 2); 0 is 1 km from 1; in history; 2 km jump
    # user 1: target 6; last two (6, 1)... history is [0,5,0,6,1]: last two (6, 1) -> revisit, near (0 km)
    #         jump from last item 1 to 6 = 5 km > 4
    # user 2: target 3 = airport; last two (3, 4) -> near, revisit; jump 4 -> 3 = 1 km
    # user 3: target 1; last two (1, 6) -> near, revisit; jump 6 -> 1 = 5 km
    # user 4: target 7 has no coordinates -> geographic strata False; 7 never seen -> no revisit
    np.testing.assert_array_equal(m["airport_or_popular"], [True, False, True, False, False])
    np.testing.assert_array_equal(m["near_recent"], [True, True, True, True, False])
    np.testing.assert_array_equal(m["revisit"], [True, True, True, True, False])
    np.testing.assert_array_equal(m["long_jump"], [False, True, False, True, False])
    # validation stage: history = training only, target = valid target
    v = target_strata(split, lat, lon, near_km=0.5, last_n=1, jump_km=3.5, stage="valid")
    # user 0: target 2, last item 1 -> 1 km: not near at 0.5 km; jump 1 km; not revisit
    # user 1: target 1, last 6 -> 5 km jump; user 2: 4 from 3 (1 km); user 3: 6 from 1 (5 km)
    # user 4: 3 from 6 (3 km)
    np.testing.assert_array_equal(v["near_recent"], [False] * 5)
    np.testing.assert_array_equal(v["long_jump"], [False, True, False, True, False])
    np.testing.assert_array_equal(v["revisit"], [False, False, False, False, False])
    np.testing.assert_array_equal(v["airport_or_popular"], [False] * 5)  # item 0 is popular, never a target


def test_target_reachability_matches_brute_force():
    rng = np.random.default_rng(1)
    n_items, n_users = 40, 30
    lat = 52.0 + rng.normal(0, 0.03, n_items)
    lon = 13.0 + rng.normal(0, 0.05, n_items)
    lat[[3, 11]] = np.nan
    lon[[3, 11]] = np.nan
    train = [rng.integers(0, n_items, rng.integers(1, 9)) for _ in range(n_users)]
    split = _split(train, rng.integers(0, n_items, n_users), rng.integers(0, n_items, n_users), n_items)
    for stage in ("valid", "test"):
        got = target_reachability(split, lat, lon, km=3.0, last_n=3, stage=stage)
        vals = []
        for h, t in zip(split.history(stage), split.target(stage)):
            rec = [j for j in h[-3:] if np.isfinite(lat[j])]
            if not np.isfinite(lat[t]) or not rec:
                continue
            vals.append(float(any(haversine_km(lat[t], lon[t], lat[j], lon[j]) <= 3.0 for j in rec)))
        assert got == pytest.approx(np.mean(vals))
        assert 0 < got < 1


def _brute_candidates(split, lat, lon, stage, km):
    last = split.last_item(stage)
    out = np.zeros((split.n_users, split.n_items), dtype=bool)
    for u, q in enumerate(last):
        for j in range(split.n_items):
            if j != q and np.isfinite(lat[q]) and np.isfinite(lat[j]):
                out[u, j] = haversine_km(lat[q], lon[q], lat[j], lon[j]) <= km
    return out


@pytest.fixture(scope="module")
def planted_local():
    d = planted_sequences(n_items=64, n_users=48, min_len=6, max_len=9, noise=0.3, levels=3, codebook=4,
                          n_cities=2, seed=3)
    split = next_item_split(d.interactions, min_core=0)
    lat = item_attribute(split, d.items, "lat").copy()
    lon = item_attribute(split, d.items, "lon").copy()
    lat[5] = lon[5] = np.nan  # one unlocated item
    return d, split, lat, lon


def test_local_candidates_match_brute_force_haversine(planted_local):
    _, split, lat, lon = planted_local
    for stage in ("valid", "test"):
        cands = local_candidates(split, lat, lon, stage, km=2.5)
        dense = cands.toarray()
        np.testing.assert_array_equal(dense, _brute_candidates(split, lat, lon, stage, 2.5))
        assert dense.any() and not dense.all()
        last = split.last_item(stage)
        assert not dense[np.arange(split.n_users), last].any()  # the masked item is never a candidate
        assert not dense[:, 5].any()
        assert not dense[last == 5].any()  # unlocated last item -> empty row


def test_eligible_users_and_local_heuristics(planted_local):
    _, split, lat, lon = planted_local
    stage = "test"
    cands = local_candidates(split, lat, lon, stage, km=2.5)
    dense = cands.toarray()
    elig = eligible_users(split, cands, stage)
    np.testing.assert_array_equal(elig, dense[np.arange(split.n_users), split.test_target])
    counts = item_counts(split, stage)
    last = split.last_item(stage)
    pop = local_popularity_topk(split, cands, stage, k=10)
    near = local_nearest_topk(split, cands, stage, lat, lon, k=10)
    for u in range(split.n_users):
        c = np.flatnonzero(dense[u])
        want_pop = c[np.lexsort((c, -counts[c]))][:10]
        d = haversine_km(lat[last[u]], lon[last[u]], lat[c], lon[c])
        want_near = c[np.lexsort((c, d))][:10]
        for got, want in ((pop[u], want_pop), (near[u], want_near)):
            np.testing.assert_array_equal(got[: want.size], want)
            assert (got[want.size :] == -1).all()
    assert (np.diff(counts[np.where(pop >= 0, pop, 0)], axis=1)[(pop[:, 1:] >= 0)] <= 0).all()
    m = local_metrics(pop, split, stage, elig)
    assert m["users"] == elig.sum() and m["share"] == pytest.approx(elig.mean())
    assert m["hit@10_per_user"].shape == (elig.sum(),)
    assert m["hit@10"] == pytest.approx(m["hit@10_per_user"].mean())
    assert 0 <= m["ndcg@10"] <= m["hit@10"] <= 1 and m["hit@5"] <= m["hit@10"]


def test_local_popularity_hand_built():
    # user 0's candidates {1, 2, 3}; training counts: 3 -> 3, 1 -> 2, 2 -> 0
    split = _split([[3, 1, 3, 1, 3, 0], [0, 4, 0]], valid=[0, 4], test=[1, 2], n_items=5)
    lat = np.array([0.0, 0.01, 0.02, 0.03, 1.0])
    lon = np.zeros(5)
    cands = local_candidates(split, lat, lon, "test", km=5.0)
    np.testing.assert_array_equal(cands.toarray()[0], [False, True, True, True, False])
    np.testing.assert_array_equal(local_popularity_topk(split, cands, "test", k=4)[0], [3, 1, 2, -1])
    np.testing.assert_array_equal(local_nearest_topk(split, cands, "test", lat, lon, k=2)[0], [1, 2])
    assert cands.toarray()[1].sum() == 0  # item 4 is alone, > 5 km from everything
    np.testing.assert_array_equal(eligible_users(split, cands, "test"), [True, False])


def test_stratified_scores_ci_brackets_mean_and_share_adds_up():
    rng = np.random.default_rng(0)
    n = 500
    per_user = {
        "a": ((rng.random(n) < 0.3).astype(float), rng.random(n) * 0.5),
        "b": ((rng.random(n) < 0.6).astype(float), rng.random(n)),
    }
    near = rng.random(n) < 0.4
    masks = {"near": near, "far": ~near, "none": np.zeros(n, dtype=bool)}
    rows = stratified_scores(per_user, masks, n_boot=300, seed=1)
    assert len(rows) == 6
    got = {(r["stratum"], r["method"]): r for r in rows}
    assert got[("near", "a")]["share"] + got[("far", "a")]["share"] == pytest.approx(1.0)
    assert got[("near", "b")]["users"] + got[("far", "b")]["users"] == n
    for (stratum, method), r in got.items():
        if stratum == "none":
            assert r["users"] == 0 and np.isnan(r["hit@10"])
            continue
        m = masks[stratum]
        assert r["hit@10"] == pytest.approx(per_user[method][0][m].mean())
        assert r["ndcg@10"] == pytest.approx(per_user[method][1][m].mean())
        for name in ("hit@10", "ndcg@10"):
            assert r[f"{name}_ci_low"] < r[name] < r[f"{name}_ci_high"]
            assert r[f"{name}_ci_high"] - r[f"{name}_ci_low"] < 0.25
    again = stratified_scores(per_user, {"near": near}, n_boot=300, seed=1)
    assert again[0] == got[("near", "a")]  # seeded per stratum name: reproducible, order-free


def test_codec_item_prefix_matches_trie():
    codes = np.array([[0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 2], [1, 2, 1]])
    codec = SIDCodec(codes)
    parent = torch.zeros(codes.shape[0], dtype=torch.long)
    for lvl in range(codec.levels):
        valid, child = codec.lookup(lvl, parent)
        c = torch.from_numpy(codes[:, lvl])
        assert valid[torch.arange(5), c].all()
        parent = child[torch.arange(5), c]
        np.testing.assert_array_equal(parent.numpy(), codec.item_prefix[lvl])
        assert codec.item_prefix[lvl].max() < codec.n_nodes[lvl]
    np.testing.assert_array_equal(codec.item_prefix[-1], np.arange(5))
    assert codec.n_nodes == [2, 4, 5]


def test_tiger_local_topk_respects_candidates_and_all_allowed_is_unchanged(planted_local):
    d, split, lat, lon = planted_local
    cfg = TigerConfig(d_model=16, ff_dim=32, enc_layers=1, dec_layers=1, heads=2, dropout=0.0, max_history=4,
                      batch_size=64, epochs=1, max_steps=30, beams=11, k=10, eval_batch=16, seed=0)
    model, codec, tk, _, _ = train_tiger(split, d.sids, cfg)
    stage, km = "test", 2.5
    cands = local_candidates(split, lat, lon, stage, km=km)
    dense = cands.toarray()
    items, scores = tiger_local_topk(model, tk, split, stage, cfg, cands, k=10)
    assert items.shape == (split.n_users, 10)
    last = split.last_item(stage)
    got = items >= 0
    assert got.any()
    u, r = np.nonzero(got)
    assert dense[u, items[u, r]].all()  # only candidate items
    assert (items[u, r] != last[u]).all()  # never the masked item
    assert (haversine_km(lat[last[u]], lon[last[u]], lat[items[u, r]], lon[items[u, r]]) <= km).all()
    assert np.isfinite(scores[got]).all() and np.isinf(scores[~got]).all()
    assert (np.diff(np.where(got, scores, -1e9), axis=1) <= 1e-6).all()  # best first
    n_c = dense.sum(axis=1)
    small = n_c <= 10  # few enough candidates: the restricted search must return all of them
    assert small.any()
    for uu in np.flatnonzero(small):
        assert sorted(items[uu][items[uu] >= 0].tolist()) == np.flatnonzero(dense[uu]).tolist()
    assert (got.sum(axis=1) == np.minimum(n_c, 10)).all()

    # an allowed mask that allows everything reproduces the unrestricted search exactly
    hist = history_matrix(split.history(stage), cfg.max_history)
    everything = lambda rows: [torch.ones(len(rows), n, dtype=torch.bool) for n in codec.n_nodes]  # noqa: E731
    a_i, a_s = rank_users(model, tk, hist, np.arange(split.n_users), last, cfg, 10, allowed=everything)
    b_i, b_s = rank_stage(model, tk, split, stage, cfg)
    np.testing.assert_array_equal(a_i, b_i)
    np.testing.assert_array_equal(a_s, b_s)
    src = tk.encoder_input(hist[:8], np.arange(8))
    bi, bs = beam_search(model, codec, src, 11)
    ai, as_ = beam_search(model, codec, src, 11, allowed=everything(np.arange(8)))
    assert torch.equal(ai, bi) and torch.equal(as_, bs)
    # masks built by scatter: node allowed iff some candidate lies under it
    masks = allowed_masks(codec, cands[:8])
    for lvl in range(codec.levels):
        want = np.zeros((8, codec.n_nodes[lvl]), dtype=bool)
        for uu in range(8):
            want[uu, codec.item_prefix[lvl][dense[uu]]] = True
        np.testing.assert_array_equal(masks[lvl].numpy(), want)
