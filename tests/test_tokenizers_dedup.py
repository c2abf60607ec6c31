"""Tests of SID uniqueness (dedup.py) and tokenizer diagnostics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.tokenizers import make_tokenizer
from lgsid_pipeline.tokenizers.dedup import (
    hub_codes,
    append_dedup_level,
    assign_unique,
    collision_rate,
    greedy_reassign,
    n_duplicates,
    unique_sids,
)
from lgsid_pipeline.tokenizers.diagnostics import (
    diagnostics_markdown,
    plot_codebook_usage,
    plot_coverage,
    prefix_purity,
    tokenizer_diagnostics,
)
from lgsid_pipeline.tokenizers.synthetic import clustered_catalog as synthetic_catalog

torch.set_num_threads(1)


def _unique_rows(a: np.ndarray) -> bool:
    return np.unique(a, axis=0).shape[0] == a.shape[0]


def test_collision_rate_and_duplicates():
    codes = np.array([[0, 1], [0, 1], [0, 1], [2, 3], [2, 4]])
    assert collision_rate(codes) == pytest.approx(3 / 5)
    assert n_duplicates(codes) == 2
    assert collision_rate(np.array([[1, 2], [2, 1]])) == 0.0


def test_append_dedup_level_counts_within_prefix():
    codes = np.array([[0, 1], [2, 3], [0, 1], [0, 1], [2, 3], [5, 5]])
    out = append_dedup_level(codes)
    assert out.shape == (6, 3) and out.dtype == np.int32
    np.testing.assert_array_equal(out[:, :2], codes)
    np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 2, 1, 0])
    assert _unique_rows(out)


def test_assign_unique_never_touches_existing_and_never_clashes():
    rng = np.random.default_rng(0)
    raw_old = rng.integers(0, 3, (200, 2))
    existing = append_dedup_level(raw_old)
    before = existing.copy()
    raw_new = rng.integers(0, 4, (150, 2))
    new = assign_unique(raw_new, existing)
    np.testing.assert_array_equal(existing, before)  # existing SIDs untouched
    np.testing.assert_array_equal(new[:, :2], raw_new)  # raw levels kept
    assert _unique_rows(np.concatenate([existing, new]))
    # a prefix that existing items never used starts at digit 0
    fresh = np.flatnonzero((raw_new == 3).any(1))
    first = fresh[0]
    assert new[first, 2] == 0
    with pytest.raises(ValueError, match="columns"):
        assign_unique(raw_new, raw_old)


@pytest.fixture(scope="module")
def crowded():
    """Few codes for many items, so raw SIDs collide a lot."""
    X, items = synthetic_catalog(n=300, d=16, seed=1)
    tok = make_tokenizer("res_kmeans", codebook_sizes=[6, 80], levels=2, seed=0).fit(X, items)
    return tok, X, items, tok.transform(X, items)


def test_greedy_reassign_makes_sids_unique(crowded):
    tok, X, items, codes = crowded
    assert collision_rate(codes) > 0.2
    out = greedy_reassign(tok, X, items, codes)
    assert out.shape == codes.shape and out.dtype == np.int32
    assert n_duplicates(out) == 0
    # the first item of each raw tuple keeps its code
    df = pl.DataFrame({"a": codes[:, 0], "b": codes[:, 1]}).with_row_index("row")
    firsts = df.group_by(["a", "b"]).agg(pl.col("row").min())["row"].to_numpy()
    np.testing.assert_array_equal(out[firsts], codes[firsts])
    # moved items went to the nearest free last-level code: never further than needed
    moved = np.flatnonzero((out != codes).any(1) & (out[:, 0] == codes[:, 0]))
    d = tok.level_distances(X[moved], None, codes[moved], 1)
    assert (d[np.arange(moved.size), out[moved, 1]] >= d[np.arange(moved.size), codes[moved, 1]]).all()


def test_greedy_falls_back_one_level_up_and_counts_unresolved(caplog):
    X, items = synthetic_catalog(n=120, d=16, seed=2)
    tok = make_tokenizer("res_kmeans", codebook_sizes=[2, 3], levels=2, seed=0).fit(X, items)
    codes = tok.transform(X, items)
    out = greedy_reassign(tok, X, items, codes)  # only 6 distinct SIDs exist for 120 items
    assert np.unique(out, axis=0).shape[0] == 6
    assert n_duplicates(out) == 120 - 6
    assert "could not be moved" in caplog.text
    # level-1 codes changed for some items: the fallback one level up was used
    small = make_tokenizer("res_kmeans", codebook_sizes=[3, 2], levels=2, seed=0).fit(X[:6], items[:6])
    c6 = np.zeros((6, 2), dtype=np.int32)  # everybody on one SID: needs level-1 moves
    out6 = greedy_reassign(small, X[:6], items[:6], c6)
    assert n_duplicates(out6) == 0 and (out6[:, 0] != 0).any()
    sids, info = unique_sids(codes, "greedy", tokenizer=tok, X=X, items=items)
    assert info["n_unresolved"] == 114 and _unique_rows(sids) and sids.shape == (120, 3)


def test_greedy_respects_existing_codes(crowded):
    tok, X, items, codes = crowded
    old = greedy_reassign(tok, X[:200], items[:200], codes[:200])
    new = greedy_reassign(tok, X[200:], items[200:], codes[200:], existing_codes=old)
    both = np.concatenate([old, new])
    assert n_duplicates(both) == 0


def test_greedy_works_for_hgit_and_rqvae():
    X, items = synthetic_catalog(n=200, d=16, seed=3)
    for method, extra in (("hgit", {"epochs": 2}), ("rqvae", {"epochs": 3, "hidden_dims": [32], "latent_dim": 8})):
        tok = make_tokenizer(method, codebook_sizes=[8, 48], levels=2, seed=0, **extra).fit(X, items)
        codes = tok.transform(X, items)
        out = greedy_reassign(tok, X, items, codes)
        assert n_duplicates(out) == 0, method


def test_unique_sids_append_and_bad_strategy(crowded):
    tok, X, items, codes = crowded
    sids, info = unique_sids(codes)
    assert sids.shape == (len(codes), 3) and _unique_rows(sids)
    assert info["collision_rate_before"] == pytest.approx(collision_rate(codes))
    assert info["n_unresolved"] == n_duplicates(codes)
    g, ginfo = unique_sids(codes, "greedy", tokenizer=tok, X=X, items=items)
    assert ginfo["n_unresolved"] == 0 and (g[:, -1] == 0).all() and _unique_rows(g)
    with pytest.raises(ValueError, match="unknown dedup strategy"):
        unique_sids(codes, "random")
    with pytest.raises(ValueError, match="needs the fitted tokenizer"):
        unique_sids(codes, "greedy")


def test_prefix_purity_values():
    codes = np.array([[0], [0], [0], [1], [1]])
    labels = pl.Series(["a", "a", "b", "c", None])
    assert prefix_purity(codes, labels) == pytest.approx(3 / 4)
    assert prefix_purity(codes, pl.Series([None] * 5, dtype=pl.Utf8)) is None
    assert prefix_purity(codes, None) is None


def test_diagnostics_and_plots(tmp_path):
    X, items = synthetic_catalog(n=240, d=16, seed=4)
    diags = {}
    for method in ("hgit", "res_kmeans"):
        tok = make_tokenizer(method, codebook_sizes=[8, 8, 8], seed=0, epochs=2) if method == "hgit" else \
            make_tokenizer(method, codebook_sizes=[8, 8, 8], seed=0)
        tok.fit(X, items)
        codes = tok.transform(X, items)
        sids, _ = unique_sids(codes)
        d = tokenizer_diagnostics(tok, X, items, codes, dedup_codes=sids)
        diags[method] = d
        assert 0 <= d["recon_rel"] < 1
        rec = tok.reconstruct(codes)
        assert d["recon_mse"] == pytest.approx(float(((X - rec) ** 2).sum(1).mean()), rel=1e-4)
        assert d["collision_rate_after"] == 0.0 and d["collision_rate_before"] == collision_rate(codes)
        for lv in d["per_level"]:
            assert lv["used"] + lv["dead"] == 8 and 1 <= lv["perplexity"] <= 8
            q = lv["coverage"]
            assert q["q50"] <= q["q75"] <= q["q90"] <= q["q95"] <= q["q99"] <= lv["max_items_per_token"]
        assert 0 < d["category_purity"]["cat1@L1"] <= d["category_purity"]["cat1@L1+2"] <= 1
    assert diags["hgit"]["geo_purity"]["city@L1"] > diags["res_kmeans"]["geo_purity"]["city@L1"]
    md = diagnostics_markdown(diags)
    assert "| hgit |" in md and "| res_kmeans | 3 |" in md
    p1 = plot_coverage(diags, tmp_path / "cov.png")
    p2 = plot_codebook_usage(diags, tmp_path / "usage.png")
    assert p1.stat().st_size > 1000 and p2.stat().st_size > 1000


def test_diagnostics_without_categories():
    X, items = synthetic_catalog(n=120, d=16, seed=5)
    bare = items.select("item_id", "lat", "lon")
    tok = make_tokenizer("res_kmeans", codebook_sizes=[4, 4], levels=2).fit(X)
    d = tokenizer_diagnostics(tok, X, bare, tok.transform(X))
    assert d["category_purity"]["cat1@L1"] is None and d["geo_purity"]["city@L1"] is None
    assert "-" in diagnostics_markdown({"res_kmeans": d})


def test_hub_codes_give_the_most_visited_items_first_level_codes_of_their_own():
    codes = np.array([[0, 1, 2], [0, 1, 2], [1, 0, 0], [1, 0, 0], [2, 2, 1], [0, 1, 2]], dtype=np.int32)
    pop = np.array([5.0, 40.0, 0.0, 40.0, 1.0, 3.0])
    out, hubs = hub_codes(codes, pop, share=0.34)  # ceil(0.34 * 6) = 3 hubs
    assert hubs.tolist() == [1, 3, 0]  # most visited first, the tie 40/40 to the lower row
    assert out[hubs].tolist() == [[3, 0, 0], [4, 0, 0], [5, 0, 0]]  # past the largest first-level code (2)
    rest = np.setdiff1d(np.arange(6), hubs)
    assert (out[rest] == codes[rest]).all()  # everyone else keeps the tokenizer's code
    sids = append_dedup_level(out)
    assert (sids[hubs, -1] == 0).all() and n_duplicates(sids) == 0
    assert collision_rate(out[hubs]) == 0.0
    # never-visited items are never hubs, and share 0 changes nothing
    out, hubs = hub_codes(codes, np.array([0, 0, 7.0, 0, 0, 0]), share=0.5)
    assert hubs.tolist() == [2] and out[2].tolist() == [3, 0, 0]
    same, none = hub_codes(codes, pop, share=0.0)
    assert none.size == 0 and (same == codes).all()
    with pytest.raises(ValueError, match="one entry per row"):
        hub_codes(codes, pop[:3], share=0.1)
    with pytest.raises(ValueError, match="hub share"):
        hub_codes(codes, pop, share=1.0)
