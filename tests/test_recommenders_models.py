"""TIGER beam search and training, DIN, and the evaluate_all report on planted data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.recommenders.din import DINConfig, train_and_evaluate_din
from lgsid_pipeline.recommenders.evaluate import evaluate_all, plot_results, user_topk
from lgsid_pipeline.recommenders.heuristics import run_heuristic
from lgsid_pipeline.recommenders.tiger import (
    SIDCodec,
    TigerConfig,
    TigerModel,
    Tokens,
    beam_search,
    load_tiger,
    save_tiger,
    sid_codes_for,
    train_and_evaluate_tiger,
    training_prefixes,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = dict(d_model=32, ff_dim=64, heads=2, batch_size=64, lr=3e-3, dropout=0.0, max_history=4, beams=12)


def test_codec_rejects_collisions_and_ragged_sids(planted):
    d, s = planted
    with pytest.raises(ValueError, match="collision"):
        SIDCodec(np.array([[0, 1], [0, 1], [1, 0]]))
    sid = {it: (1, 2) for it in s.item_ids}
    sid[s.item_ids[0]] = (1, 2, 3)
    with pytest.raises(ValueError, match="length"):
        sid_codes_for(s, sid)
    with pytest.raises(ValueError, match="no SID"):
        sid_codes_for(s, {s.item_ids[0]: (0, 0)})
    with pytest.raises(ValueError, match="several methods"):
        sid_codes_for(s, d.sids)
    with pytest.raises(ValueError, match="beams"):
        TigerConfig(beams=5, k=10)


def test_beam_search_emits_valid_distinct_items_untrained(planted):
    d, s = planted
    torch.manual_seed(0)
    cfg = TigerConfig(**SMALL)
    codec = SIDCodec(sid_codes_for(s, d.sids.filter(pl.col("method") == "hgit")))
    model = TigerModel(cfg, codec.n_codes, codec.levels)
    tk = Tokens(codec, cfg, s)
    hist = np.array([h[-4:] for h in s.train_seqs[:16]])
    items, scores = beam_search(model, codec, tk.encoder_input(hist, np.arange(16)), beams=12)
    assert items.shape == (16, 12)
    items, scores = items.numpy(), scores.numpy()
    assert (items >= 0).all() and (items < s.n_items).all()  # every beam is a real catalogue SID
    assert all(len(set(r)) == 12 for r in items.tolist())
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # the beam scores are the model's summed level log-probs of that exact SID (teacher forcing)
    src = tk.encoder_input(hist[:1], np.arange(1))
    mem, pad = model.encode(src)
    tgt = torch.from_numpy(codec.tokens[items[0, :1]])
    tgt_in = torch.cat([torch.ones(1, 1, dtype=torch.long), tgt[:, :-1]], 1)
    logits = model.decode(tgt_in, mem, pad)[0]
    lp = 0.0
    for lvl in range(codec.levels):
        o, n = int(codec.offsets[lvl]), int(codec.sizes[lvl])
        lp += torch.log_softmax(logits[lvl, o : o + n], -1)[codec.codes[items[0, 0], lvl]].item()
    assert lp == pytest.approx(scores[0, 0], abs=1e-4)


def test_tiny_catalogue_leaves_dead_beams_marked():
    codec = SIDCodec(np.array([[0, 0], [0, 1], [1, 0]]))
    cfg = TigerConfig(d_model=16, ff_dim=16, heads=2, beams=11, k=10, max_history=2)
    model = TigerModel(cfg, codec.n_codes, codec.levels)
    src = torch.from_numpy(codec.tokens[[[0, 1]]])  # (1, 2 items, 2 levels)
    items, scores = beam_search(model, codec, src, beams=11)
    got = items[0][items[0] >= 0].tolist()
    assert sorted(got) == [0, 1, 2]
    assert torch.isinf(scores[0][items[0] < 0]).all()


@pytest.mark.parametrize("history_tokens", ["item", "flat"])
def test_tiger_learns_planted_pattern_and_beats_popularity(planted, history_tokens):
    d, s = planted
    cfg = TigerConfig(**SMALL, epochs=25, patience=4, history_tokens=history_tokens, seed=0)
    res = train_and_evaluate_tiger(s, d.sids.filter(pl.col("method") == "hgit"), cfg)
    pop = run_heuristic("popularity", s)
    assert res.metrics["test_hit@10"] > 0.8
    assert pop.metrics["test_hit@10"] < 0.35
    assert res.topk.columns == ["user_id", "rank", "item_id", "score"]
    assert res.topk.group_by("user_id").agg(pl.col("item_id").n_unique())["item_id"].min() == 10
    # the masked last history item is never recommended
    last = dict(zip(s.user_ids, np.asarray(s.item_ids)[s.last_item("test")]))
    assert not any(last[u] == i for u, i in res.topk.select("user_id", "item_id").iter_rows())


def test_tiger_is_deterministic_and_round_trips_safetensors(planted, tmp_path):
    d, s = planted
    sids = d.sids.filter(pl.col("method") == "rqvae")
    cfg = TigerConfig(**SMALL, epochs=2, seed=7)
    a = train_and_evaluate_tiger(s, sids, cfg)
    b = train_and_evaluate_tiger(s, sids, cfg)
    assert a.metrics == b.metrics
    assert a.topk.equals(b.topk)
    save_tiger(a, tmp_path / "m")
    model, codec = load_tiger(tmp_path / "m")
    assert (codec.codes == a.codec.codes).all()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    assert not list(tmp_path.glob("m/*.pt")) and not list(tmp_path.glob("m/*.pkl"))


def test_tiger_step_budget_counts_steps_across_epochs_and_reproduces(planted):
    d, s = planted
    sids = d.sids.filter(pl.col("method") == "hgit")
    per_epoch = -(-training_prefixes(s, SMALL["max_history"])[2].size // SMALL["batch_size"])
    budget = per_epoch + 2  # one full epoch, then two steps into the second
    cfg = TigerConfig(**SMALL, epochs=50, patience=50, max_steps=budget, seed=3)
    a = train_and_evaluate_tiger(s, sids, cfg)
    assert [(h["steps"], h["partial_epoch"]) for h in a.history] == [(per_epoch, False), (budget, True)]
    b = train_and_evaluate_tiger(s, sids, cfg)
    assert a.metrics == b.metrics
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    with pytest.raises(ValueError, match="max_steps"):
        TigerConfig(max_steps=0)


def test_din_beats_random_on_learnable_signal_and_is_seeded(planted):
    d, s = planted
    cfg = DINConfig(epochs=4, batch_size=256, lr=1e-2, seed=0)
    sid = train_and_evaluate_din(s, d.sids.filter(pl.col("method") == "hgit"), cfg)
    assert sid.metrics["auc"] > 0.65 and sid.metrics["gauc"] > 0.65
    again = train_and_evaluate_din(s, d.sids.filter(pl.col("method") == "hgit"), cfg)
    assert again.metrics == sid.metrics
    origin = train_and_evaluate_din(s, None, cfg)
    # identical evaluation impressions for every variant
    assert origin.test_scores.select("user_id", "item_id", "label").equals(sid.test_scores.select("user_id", "item_id", "label"))
    per_user = sid.test_scores.group_by("user_id").agg(pl.col("label").sum().alias("p"), pl.len().alias("n"))
    assert (per_user["p"] == 1).all() and (per_user["n"] == 5).all()


def test_din_fast_forward_is_the_printed_din_in_value_and_gradient():
    """The fast forward (one item table, the first attention layer split by input block) is the
    printed DIN (PrintedDIN) in value and in every parameter's gradient."""
    from lgsid_pipeline.recommenders.din import DIN, PrintedDIN

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 7, size=(50, 3))
    model = DIN(50, codes, DINConfig())
    for p in model.parameters():  # non-zero everywhere, padding rows included, to catch any mix-up
        torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        model.item_emb.weight[0] = 0
        for emb in model.sid_emb:
            emb.weight[0] = 0
    hist = torch.from_numpy(rng.integers(0, 51, size=(64, 6)))  # 0 = padding
    hist[:5, :3] = 0
    target = torch.from_numpy(rng.integers(1, 51, size=64))
    fast = model(hist, target)
    grads_fast = torch.autograd.grad(fast.sum(), list(model.parameters()))
    printed = PrintedDIN(50, codes, DINConfig())
    printed.load_state_dict(model.state_dict())
    ref = printed(hist, target)
    grads_ref = torch.autograd.grad(ref.sum(), list(printed.parameters()))
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5)
    for gf, gr in zip(grads_fast, grads_ref):
        assert torch.allclose(gf, gr, atol=1e-4, rtol=1e-4)
    assert float(ref.detach().std()) > 0.1  # not a degenerate comparison
    # the ID-only model (Origin) too
    origin = DIN(50, None, DINConfig())
    h = origin.represent(hist)
    assert torch.equal(h, origin.item_emb(hist))


def test_din_fast_training_stays_within_float_noise_of_the_printed_form(planted):
    from lgsid_pipeline.recommenders.din import PrintedDIN

    d, s = planted
    sids = d.sids.filter(pl.col("method") == "hgit")
    cfg = DINConfig(epochs=2, batch_size=256, lr=1e-2, seed=0)
    fast = train_and_evaluate_din(s, sids, cfg)
    ref = train_and_evaluate_din(s, sids, cfg, model_cls=PrintedDIN)
    for key in ("valid_auc", "auc", "gauc"):
        assert abs(fast.metrics[key] - ref.metrics[key]) < 0.01, key
    assert fast.metrics["auc"] > 0.65


def test_evaluate_all_in_worker_processes_matches_inline(planted):
    """jobs=2 trains the runs in two spawned workers (one torch thread each) and gathers them in
    order: every number equals the inline run with one thread."""
    d, _ = planted
    kw = dict(seeds=(0, 1), tiger_config=TigerConfig(**SMALL, epochs=2, max_steps=5, threads=1),
              din_config=DINConfig(epochs=1, batch_size=256, threads=1), disc_models=("DIN", "DIEN"),
              split_kwargs={"min_core": 0})
    inline = evaluate_all(d.interactions, d.items, d.sids, jobs=1, **kw)
    logged = []
    pooled = evaluate_all(d.interactions, d.items, d.sids, jobs=2, log=logged.append, **kw)
    timing = pl.col("metric") != "cpu_seconds"
    assert inline.runs.height == pooled.runs.height > 0
    assert inline.runs.filter(timing).equals(pooled.runs.filter(timing))
    assert inline.table1.equals(pooled.table1) and inline.table2.equals(pooled.table2)
    assert inline.user_scores.equals(pooled.user_scores)
    for m in ("hgit", "rqvae"):
        np.testing.assert_array_equal(inline.tiger_results[m].topk_idx["test"], pooled.tiger_results[m].topk_idx["test"])
    finished = [(r["model"], r["variant"], r["seed"]) for r in logged if "epoch" not in r and r["model"] != "heuristic"]
    assert len(finished) == 2 * (2 + 2 * 3)  # per seed: 2 TIGER runs, DIN and DIEN on Origin + 2 methods
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        evaluate_all(d.interactions, d.items, d.sids, jobs=0, **kw)


def test_evaluate_all_tables_and_cache(planted, tmp_path):
    d, _ = planted
    res = evaluate_all(
        d.interactions,
        d.items,
        d.sids,
        seeds=(0, 1),
        tiger_config=TigerConfig(**SMALL, epochs=1),
        din_config=DINConfig(epochs=1, batch_size=256),
        split_kwargs={"min_core": 0},
    )
    assert res.ours == "hgit"
    assert set(res.table1["variant"]) == {"Origin", "hgit", "rqvae"}
    assert res.table1.filter(pl.col("variant") == "Origin")["delta_auc"][0] == 0.0
    assert set(res.table2.filter(pl.col("kind") == "TIGER")["variant"]) == {"hgit", "rqvae"}
    assert set(res.table2.filter(pl.col("kind") == "heuristic")["variant"]) == {"popularity", "transitions", "geo_nearest"}
    t2 = res.table2.filter(pl.col("kind") == "TIGER")
    best_other = t2.filter(pl.col("variant") == "rqvae")["ndcg@10"][0]
    mine = t2.filter(pl.col("variant") == "hgit")["ndcg@10"][0]
    if best_other > 0:
        assert res.imp["ndcg@10"] == pytest.approx(mine / best_other - 1)
    st = res.seed_stats.filter((pl.col("model") == "DIN") & (pl.col("variant") == "hgit") & (pl.col("metric") == "auc"))
    assert st["n"][0] == 2 and st["baseline"][0] == "Origin" and not st["can_reach_significance"][0]
    assert set(res.per_city["city"]) <= set(d.items["city_key"])
    assert res.per_city.filter(pl.col("model") == "TIGER")["users"].unique().sum() <= 80
    assert res.reachability.height == 6 and res.reachability["share"].is_between(0, 1).all()
    # the reference row: the test targets' own reachability, as strata.target_reachability
    ref = res.reachability.filter(pl.col("model") == "targets")["share"][0]
    from lgsid_pipeline.recommenders.data import item_attribute
    from lgsid_pipeline.recommenders.strata import target_reachability
    lat, lon = (item_attribute(res.split, d.items, c).astype(float) for c in ("lat", "lon"))
    assert ref == pytest.approx(target_reachability(res.split, lat, lon))
    # ours (hgit) against the other tokenizer and each heuristic, over the same test users
    up = res.user_paired
    assert set(zip(up["baseline_model"], up["baseline"])) == {("TIGER", "rqvae"), ("heuristic", "popularity"),
                                                              ("heuristic", "transitions"), ("heuristic", "geo_nearest")}
    assert (up["variant"] == "hgit").all() and (up["users"] == res.split.n_users).all()
    vs_rq = up.filter((pl.col("baseline") == "rqvae") & (pl.col("metric") == "test_ndcg@10"))
    assert vs_rq["mean_variant"][0] == pytest.approx(mine) and vs_rq["mean_baseline"][0] == pytest.approx(best_other)
    assert up["p"].is_between(0, 1).all() and (up["significant"] == (up["p"] < 0.05)).all()
    us = res.user_scores  # the per-user scores behind the comparison, seeds averaged
    assert us.height == res.split.n_users * 5 and set(us["runs"]) == {1, 2}  # 3 heuristics once, 2 TIGER methods per seed
    hg = us.filter((pl.col("model") == "TIGER") & (pl.col("variant") == "hgit"))
    assert hg["ndcg@10"].mean() == pytest.approx(mine) and hg["user_id"].n_unique() == res.split.n_users
    md = res.markdown()
    assert "Table 1" in md and "Table 2" in md and "wilcoxon_p" in md and "Per city" in md and "over test users" in md
    p = plot_results(res, tmp_path / "r.png")
    assert p.exists() and p.stat().st_size > 1000
    cache = user_topk(res.tiger_results["hgit"], res.split, k=5)
    assert cache.columns == ["user_id", "rank", "item_id", "sid", "score"]
    assert cache.height == 5 * res.split.n_users
    sid_of = dict(zip(d.sids.filter(pl.col("method") == "hgit")["item_id"], d.sids.filter(pl.col("method") == "hgit")["sid"].to_list()))
    assert all(sid_of[i] == list(sd) for i, sd in cache.select("item_id", "sid").iter_rows())
    with pytest.raises(ValueError, match="not in the SID frame"):
        evaluate_all(d.interactions, d.items, d.sids, methods=["nope"], split_kwargs={"min_core": 0})
