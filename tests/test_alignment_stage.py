"""The alignment stage (lgsid_pipeline/alignment/stage.py): one code path for the assets and the ladder,
the pair budget across cities, and the distance oracle for R."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.alignment import stage as alignment, ladder, reward
from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, build_tiny_bert
from lgsid_pipeline.alignment.gdpo import GDPOConfig, build_preference_pairs
from tests.test_gdpo import make_items


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch.set_num_threads(1)
    bert = build_tiny_bert(tmp_path_factory.mktemp("bert"), seed=0)
    return TextEncoder(EncoderConfig(model_path=str(bert), device="cpu", max_length=64))


def _catalog(n_per_town: int = 6) -> pl.DataFrame:
    items = make_items(n_per_town)
    return items.with_columns(pl.col("city").alias("city_key"))


def test_oracle_preferences_order_by_distance():
    assert reward.oracle_preferences(np.array([0.0, 5.0, 2.0]), np.array([3.0, 1.0, 2.0])).tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="finite"):
        reward.oracle_preferences(np.array([np.nan]), np.array([1.0]))


def test_oracle_reward_learns_the_distance_order_and_reports_its_ceiling():
    # The nearer location always lies +w from the farther one. In 10% of the pairs the stated i+
    # is the farther one (a D_dc pair whose co-visited item is farther than the "far" item): the
    # oracle must follow the distance, so it scores those 10% against their stated order.
    g = torch.Generator().manual_seed(0)
    n, d = 400, 8
    base = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    near, far = base + 0.5 * w, base - 0.5 * w
    prefer = np.ones(n, dtype=np.int8)
    prefer[:40] = -1
    e_pos, e_neg = near.clone(), far.clone()
    e_pos[:40], e_neg[:40] = far[:40], near[:40]
    res = reward.train_oracle_reward(e_pos, e_neg, prefer, hidden=16, epochs=40, seed=0)
    m = res.metrics
    assert m["distance_flips_stated_order"] == pytest.approx(0.1)
    assert m["pair_acc"] > 0.85 and m["heldout_pair_acc"] > 0.8
    # R(i+) > R(i-) on about 90% of the stated pairs: the 10% the oracle reverses are scored the other way
    assert 0.8 < m["stated_pair_acc"] < 0.95
    with pytest.raises(ValueError, match="at least 2 pairs"):
        reward.train_oracle_reward(e_pos[:3], e_neg[:3], np.zeros(3, dtype=np.int8))


def test_pair_distances_and_oracle_on_real_pairs(encoder):
    items = _catalog()
    pairs = build_preference_pairs(items, None, seed=0)
    d_pos, d_neg = alignment.pair_distances_km(items, pairs)
    assert (d_pos == 0).all() and (d_neg > 0).all()  # D_gc: i+ is the target's own location
    res = alignment.fit_oracle(items, pairs, encoder, template=alignment.DEFAULT_TEMPLATE, hidden=16, seed=0)
    assert res.metrics["ties_left_out"] == 0 and res.metrics["pair_acc"] > 0.5
    bad = pairs.with_columns(pl.lit("nope").alias("far_id"))
    with pytest.raises(ValueError, match="lat/lon"):
        alignment.pair_distances_km(items, bad)


def test_pair_budget_is_allocated_across_cities_with_a_floor():
    items = _catalog(10)
    small = items.filter(pl.col("city_key") == "madison").head(3)
    items = pl.concat([items.filter(pl.col("city_key") != "madison"), small])
    settings = alignment.PairSettings(use_dc=False, max_steps=2, pairs_floor=3)
    pairs, alloc = alignment.preference_pairs(items, None, settings, batch_size=8)
    assert pairs.height == 16 == sum(alloc.values())
    assert alloc["madison"] == 3  # the small city keeps its floor
    got = dict(pairs.group_by("city_key").len().iter_rows())
    assert got == {k: v for k, v in alloc.items() if v}
    again, _ = alignment.preference_pairs(items, None, settings, batch_size=8)
    assert again.equals(pairs)  # seeded
    everything, alloc_all = alignment.preference_pairs(items, None, alignment.PairSettings(use_dc=False, max_steps=None),
                                                       batch_size=8)
    assert everything.height == items.height and alloc_all["madison"] == 3


def test_settings_reject_unknown_switches():
    with pytest.raises(ValueError, match="reward mode"):
        alignment.RewardSettings(mode="pairwise")
    with pytest.raises(ValueError, match="negatives"):
        alignment.RewardSettings(negatives="random")


def test_ladder_runs_the_pipeline_path_and_the_oracle_row(encoder, tmp_path, monkeypatch):
    items = _catalog(8)
    ids = items["item_id"].to_list()
    rng = np.random.default_rng(0)
    inter = pl.DataFrame({"user_id": [f"u{i % 12}" for i in range(300)],
                          "item_id": [ids[int(j)] for j in rng.integers(0, len(ids), 300)],
                          "ts": np.arange(300)})
    calls = {"reward": 0, "gdpo": []}
    real_reward, real_gdpo = alignment.fit_reward, alignment.fit_gdpo

    def spy_reward(*a, **k):
        calls["reward"] += 1
        return real_reward(*a, **k)

    def spy_gdpo(*a, **k):
        calls["gdpo"].append(k["reward_source"])
        return real_gdpo(*a, **k)

    monkeypatch.setattr(ladder, "fit_reward", spy_reward)
    monkeypatch.setattr(ladder, "fit_gdpo", spy_gdpo)
    monkeypatch.setattr(ladder, "TextEncoder", lambda cfg: encoder)
    monkeypatch.setattr(ladder, "load_aligned_encoder", lambda cfg, path: encoder)
    rows = [r for r in ladder.ladder_rows(0.1, oracle=True) if r.name in ("Origin", "G-DPO", "G-DPO oracle-R")]
    table, diag = ladder.run_ladder(
        items, inter, rows=rows, workdir=tmp_path,
        gdpo_config=GDPOConfig(batch_size=4, eval_every=1, eval_items=12, patience=1, eval_pairs=8),
        reward_settings=alignment.RewardSettings(anchors_total=24, anchors_floor=4, hidden=16, epochs=2),
        pair_settings=alignment.PairSettings(max_steps=2, pairs_floor=1))
    assert calls == {"reward": 1, "gdpo": ["learned", "oracle"]}  # one R, shared; the oracle row swaps it
    assert table["variant"].to_list() == ["Origin", "G-DPO", "G-DPO oracle-R"]
    oracle = diag["rows"]["G-DPO oracle-R"]
    assert oracle["reward_source"] == "oracle" and 0.0 <= oracle["oracle"]["pair_acc"] <= 1.0
    assert diag["rows"]["G-DPO"]["oracle"] == {}
    assert diag["rows"]["G-DPO"]["pairs"] == 8  # max_steps x batch_size, as in the asset
    assert diag["rows"]["G-DPO"]["gdpo"]["steps"] <= 2
    # the anchors were allocated across the 3 cities as the reward_model asset does
    assert diag["prompt_dedupe"]["density"]["anchors"] <= 24
    assert table.filter(pl.col("variant") == "Origin")["heldout_score"].item() is None
    assert table.filter(pl.col("variant") == "G-DPO")["heldout_score"].item() is not None


def test_a_refitted_reward_model_never_reuses_the_old_adapter(encoder, tmp_path):
    items = _catalog(4)
    cfg = GDPOConfig(batch_size=4, eval_pairs=4)
    settings = alignment.PairSettings(use_dc=False, max_steps=1, pairs_floor=1)
    torch.manual_seed(0)
    r1, r2 = reward.RewardModel(encoder.dim, 8), reward.RewardModel(encoder.dim, 8)
    a = alignment.fit_gdpo(items, None, encoder, r1, cfg, settings, workdir=tmp_path)
    b = alignment.fit_gdpo(items, None, encoder, r2, cfg, settings, workdir=tmp_path)
    again = alignment.fit_gdpo(items, None, encoder, r1, cfg, settings, workdir=tmp_path)
    assert a.run_key != b.run_key and again.run_key == a.run_key
    assert again.result.metrics["steps_this_run"] == 0  # the same inputs resume the finished run
    assert alignment.weights_hash(r1) != alignment.weights_hash(r2)
