"""TIGER's fast path against the reference nn.Transformer path: same numbers, same beams."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.recommenders.tiger import codec as T
from lgsid_pipeline.recommenders.tiger import (
    SIDCodec,
    TigerConfig,
    TigerModel,
    Tokens,
    beam_search,
    epoch_batches,
    history_matrix,
    rank_users,
    sid_codes_for,
    train_and_evaluate_tiger,
    training_prefixes,
    trim,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(d_model=32, ff_dim=64, heads=2, batch_size=64, lr=3e-3, dropout=0.0, max_history=6, beams=12)


def _codes(n: int, seed: int = 0) -> np.ndarray:
    """Unique 3-level codes with uneven branching (some prefixes with one child)."""
    rng = np.random.default_rng(seed)
    c = np.stack([rng.integers(0, 5, n), rng.integers(0, 7, n), rng.integers(0, 3, n)], 1)
    c = np.unique(c, axis=0)
    return np.concatenate([c, np.zeros((c.shape[0], 1), dtype=np.int64)], 1)


def _pair(cfg_kw: dict, codec: SIDCodec, seed: int = 0) -> tuple[TigerModel, TigerModel]:
    """The same weights run through the fast and the reference path."""
    torch.manual_seed(seed)
    fast = TigerModel(TigerConfig(**cfg_kw, fast=True), codec.n_codes, codec.levels)
    ref = TigerModel(TigerConfig(**cfg_kw, fast=False), codec.n_codes, codec.levels)
    ref.load_state_dict(fast.state_dict())
    return fast.eval(), ref.eval()


def _random_src(codec: SIDCodec, b: int, h: int, seed: int = 1) -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(seed)
    n = codec.codes.shape[0]
    hist = rng.integers(0, n, (b, h))
    lens = rng.integers(1, h + 1, b)
    hist[np.arange(h)[None, :] < (h - lens)[:, None]] = -1  # left padding, ragged
    tok = np.vstack([np.zeros((1, codec.levels), dtype=np.int64), codec.tokens])
    return hist, torch.from_numpy(tok[hist + 1])


@pytest.mark.parametrize("history_tokens", ["item", "flat"])
def test_fast_forward_and_loss_equal_the_reference(history_tokens):
    codec = SIDCodec(_codes(120))
    kw = dict(SMALL, history_tokens=history_tokens)
    fast, ref = _pair(kw, codec)
    hist, src = _random_src(codec, 9, 6)
    if history_tokens == "flat":
        src = src.reshape(src.shape[0], -1)
    with torch.no_grad():
        mf, pf = fast.encode(src)
        mr, pr = ref.encode(src)
        keep = ~pf
        torch.testing.assert_close(mf[keep], mr[keep], atol=1e-5, rtol=1e-4)
        tgt = torch.from_numpy(codec.tokens[[3, 17, 40, 5, 9, 60, 2, 11, 70]] - T.N_SPECIAL)
        tgt_in = torch.cat([torch.full((9, 1), T.BOS), tgt[:, :-1] + T.N_SPECIAL], 1)
        torch.testing.assert_close(fast.decode(tgt_in, mf, pf), ref.decode(tgt_in, mr, pr), atol=1e-5, rtol=1e-4)
        lf, lr = fast.train_loss(src, tgt, codec), ref.train_loss(src, tgt, codec)
    assert float(lf) == pytest.approx(float(lr), abs=1e-5)


def test_trimming_leading_padding_changes_nothing():
    """Right-aligned positions: a batch without its all-padding columns gives the same memory."""
    codec = SIDCodec(_codes(120))
    cfg = TigerConfig(**SMALL)
    fast, _ = _pair(SMALL, codec)
    hist, _ = _random_src(codec, 6, 6)
    hist[:, :2] = -1  # every row shorter than the window
    tk_tok = np.vstack([np.zeros((1, codec.levels), dtype=np.int64), codec.tokens])
    full = torch.from_numpy(tk_tok[hist + 1])
    trimmed_hist = trim(hist, cfg)
    assert trimmed_hist.shape[1] <= 4
    trimmed = torch.from_numpy(tk_tok[trimmed_hist + 1])
    with torch.no_grad():
        a, pa = fast.encode(full)
        b, _ = fast.encode(trimmed)
    torch.testing.assert_close(a[:, -trimmed.shape[1]:], b, atol=1e-5, rtol=1e-4)
    assert pa[:, : full.shape[1] - trimmed.shape[1]].all()
    # with a user token the window start is a fixed position, so nothing is trimmed
    assert trim(hist, TigerConfig(**SMALL, user_buckets=8)).shape == hist.shape


@pytest.mark.parametrize("dense_limit", [T.DENSE_TABLE_LIMIT, 0])
def test_cached_beam_search_equals_the_reference(monkeypatch, dense_limit):
    monkeypatch.setattr(T, "DENSE_TABLE_LIMIT", dense_limit)
    codec = SIDCodec(_codes(150, seed=3))
    assert all((t is None) == (dense_limit == 0) for t in codec.next_table)
    fast, ref = _pair(SMALL, codec, seed=4)
    _, src = _random_src(codec, 12, 6, seed=5)
    fi, fs = beam_search(fast, codec, src, 12)
    ri, rs = beam_search(ref, codec, src, 12)
    torch.testing.assert_close(fs, rs, atol=1e-4, rtol=1e-4)
    assert torch.equal(fi, ri)
    # a per-row restriction gives the same beams on both paths too
    rng = np.random.default_rng(0)
    allowed_items = torch.from_numpy(rng.random((12, codec.codes.shape[0])) < 0.3)
    masks = []
    for lvl in range(codec.levels):
        m = torch.zeros(12, codec.n_nodes[lvl], dtype=torch.bool)
        node = torch.from_numpy(codec.item_prefix[lvl])
        for r in range(12):
            m[r, node[allowed_items[r]]] = True
        masks.append(m)
    fi, fs = beam_search(fast, codec, src, 12, allowed=masks)
    ri, rs = beam_search(ref, codec, src, 12, allowed=masks)
    assert torch.equal(fi, ri)
    got = fi[fi >= 0]
    rows = torch.nonzero(fi >= 0)[:, 0]
    assert allowed_items[rows, got].all()


def test_dense_table_lookup_matches_the_sorted_key_search(monkeypatch):
    codes = _codes(200, seed=7)
    dense = SIDCodec(codes)
    monkeypatch.setattr(T, "DENSE_TABLE_LIMIT", 0)
    sparse = SIDCodec(codes)
    parent = torch.zeros(4, 1, dtype=torch.long)
    for lvl in range(dense.levels):
        va, ca = dense.lookup(lvl, parent)
        vb, cb = sparse.lookup(lvl, parent)
        assert torch.equal(va, vb) and torch.equal(ca, cb)
        parent = torch.randint(0, dense.n_nodes[lvl], (4, 5))


def test_length_sorted_ranking_returns_users_in_input_order(planted):
    d, s = planted
    sids = d.sids.filter(pl.col("method") == "hgit")
    codec = SIDCodec(sid_codes_for(s, sids))
    cfg = TigerConfig(**SMALL, eval_batch=7)
    tk = Tokens(codec, cfg, s)
    torch.manual_seed(0)
    model = TigerModel(cfg, codec.n_codes, codec.levels)
    hist = history_matrix(s.history("test"), cfg.max_history)
    hist[::3, :3] = -1  # ragged lengths, so the sort reorders
    users = np.arange(s.n_users)
    a_i, a_s = rank_users(model, tk, hist, users, s.last_item("test"), cfg, 10)
    one = TigerConfig(**SMALL, eval_batch=10_000, fast=False)
    ref = TigerModel(one, codec.n_codes, codec.levels)
    ref.load_state_dict(model.state_dict())
    b_i, b_s = rank_users(ref, Tokens(codec, one, s), hist, users, s.last_item("test"), one, 10)
    np.testing.assert_array_equal(a_i, b_i)
    np.testing.assert_allclose(a_s, b_s, atol=1e-4)


def test_epoch_batches_see_every_sample_once_with_less_padding(planted):
    _, s = planted
    _, hist, tgt = training_prefixes(s, 6)
    lens = (hist >= 0).sum(1)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(tgt.size, generator=gen).numpy()
    plain = epoch_batches(perm, lens, TigerConfig(**SMALL, length_buckets=0), gen)
    bucketed = epoch_batches(perm, lens, TigerConfig(**SMALL, length_buckets=4), gen)
    assert len(plain) == len(bucketed) == -(-tgt.size // SMALL["batch_size"])
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(tgt.size))
    assert sorted(b.size for b in bucketed) == sorted(b.size for b in plain)
    width = lambda bs: sum(lens[b].max() * b.size for b in bs)  # noqa: E731  encoder columns after trimming
    assert width(bucketed) < width(plain)
    with pytest.raises(ValueError, match="length_buckets"):
        TigerConfig(length_buckets=-1)


def test_fast_dropout_keeps_the_expectation():
    codec = SIDCodec(_codes(40))
    model = TigerModel(TigerConfig(**dict(SMALL, dropout=0.25)), codec.n_codes, codec.levels).train()
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = model._drop(x)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(0.75, abs=0.01)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.equal(model.eval()._drop(x), x)


def test_fast_training_stays_within_noise_of_the_reference(planted):
    """The fast path changes batch composition (length buckets) and the dropout draws, so the
    numbers move; on the planted task both paths must learn it, within a bounded gap."""
    d, s = planted
    sids = d.sids.filter(pl.col("method") == "hgit")
    kw = dict(SMALL, dropout=0.1, epochs=25, patience=4, seed=0)
    fast = train_and_evaluate_tiger(s, sids, TigerConfig(**kw))
    ref = train_and_evaluate_tiger(s, sids, TigerConfig(**kw, fast=False, length_buckets=0))
    assert fast.metrics["test_hit@10"] > 0.8 and ref.metrics["test_hit@10"] > 0.8
    assert abs(fast.metrics["test_hit@10"] - ref.metrics["test_hit@10"]) <= 0.1
    assert abs(fast.metrics["test_ndcg@10"] - ref.metrics["test_ndcg@10"]) <= 0.1


def test_unconstrained_search_marks_beams_that_leave_the_catalogue():
    codec = SIDCodec(_codes(60, seed=9))  # sparse: most code triples are no item
    fast, _ = _pair(SMALL, codec, seed=2)
    _, src = _random_src(codec, 10, 6, seed=3)
    ci, cs = beam_search(fast, codec, src, 12)
    ui, us = beam_search(fast, codec, src, 12, constrained=False)
    assert (ci >= 0).all()  # the trie keeps every beam a real item
    assert (ui < 0).any()  # without it some beams are no item
    assert (us[:, 0] >= cs[:, 0] - 1e-6).all()  # a superset of paths: the best score can only rise
    for r in range(10):  # an unconstrained beam that is an item has that item's constrained score
        for it, sc in zip(ui[r].tolist(), us[r].tolist()):
            if it >= 0 and it in ci[r].tolist():
                assert sc == pytest.approx(cs[r][ci[r].tolist().index(it)].item(), abs=1e-5)


def test_bf16_option_moves_scores_within_bounds_and_learns_the_same(planted):
    """TigerConfig.bf16 autocasts the matrix products: on the same weights the beams keep the
    float32 ranking almost everywhere, scores move by a bounded amount, and training with it
    learns the planted task as well as float32 does."""
    codec = SIDCodec(_codes(150, seed=4))
    fast, _ = _pair(SMALL, codec)
    bf = TigerModel(TigerConfig(**SMALL, bf16=True), codec.n_codes, codec.levels)
    bf.load_state_dict(fast.state_dict())
    _, src = _random_src(codec, 64, 6)
    items32, scores32 = beam_search(fast, codec, src, 12)
    items16, scores16 = beam_search(bf.eval(), codec, src, 12)
    assert scores16.dtype == torch.float32 and (items16 >= 0).all()  # valid items, float32 scores
    top32, top16 = items32[:, :10].numpy(), items16[:, :10].numpy()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32, top16)])
    assert overlap >= 0.9, overlap
    assert (items32[:, 0] == items16[:, 0]).float().mean() >= 0.9
    assert torch.allclose(scores16[:, 0], scores32[:, 0], atol=0.05, rtol=0.02)
    d, s = planted
    sids = d.sids.filter(pl.col("method") == "hgit")
    kw = dict(SMALL, dropout=0.1, epochs=25, patience=4, seed=0)
    res32 = train_and_evaluate_tiger(s, sids, TigerConfig(**kw))
    res16 = train_and_evaluate_tiger(s, sids, TigerConfig(**kw, bf16=True))
    assert res16.metrics["test_hit@10"] > 0.8
    assert abs(res16.metrics["test_hit@10"] - res32.metrics["test_hit@10"]) <= 0.1
    assert all(p.dtype == torch.float32 for p in res16.model.parameters())  # float32 weights and optimiser
