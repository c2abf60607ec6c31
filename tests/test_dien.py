"""DIEN: the AUGRU cell, padding invariance, learning on planted data, and evaluate_all's DIEN rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.recommenders.dien import DIEN, AUGRUCell, DIENConfig, train_and_evaluate_dien
from lgsid_pipeline.recommenders.din import DINConfig, train_and_evaluate_din
from lgsid_pipeline.recommenders.evaluate import evaluate_all, plot_results


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_augru_attention_zero_keeps_state_and_one_is_a_gru_step():
    torch.manual_seed(0)
    cell = AUGRUCell(6, 5)
    gru = torch.nn.GRUCell(6, 5)
    gru.load_state_dict(cell.state_dict())
    x, h = torch.randn(4, 6), torch.randn(4, 5)
    with torch.no_grad():
        assert torch.equal(cell(x, h, torch.zeros(4)), h)  # a_t = 0: the state never changes
        torch.testing.assert_close(cell(x, h, torch.ones(4)), gru(x, h), rtol=1e-6, atol=1e-6)
        # a_t in (0, 1): the step moves part of the way from h to the GRU update, per unit
        half = cell(x, h, torch.full((4,), 0.5))
        full = gru(x, h)
        assert ((half - h).abs() <= (full - h).abs() + 1e-6).all()
        # mixed per-row scores act row by row
        mixed = cell(x, h, torch.tensor([0.0, 1.0, 0.0, 1.0]))
        torch.testing.assert_close(mixed[[0, 2]], h[[0, 2]], rtol=0, atol=0)
        torch.testing.assert_close(mixed[[1, 3]], full[[1, 3]], rtol=1e-6, atol=1e-6)


def test_dien_left_padding_does_not_change_output_or_aux_loss():
    torch.manual_seed(0)
    codes = np.random.default_rng(0).integers(0, 4, size=(30, 2))
    model = DIEN(30, codes, DIENConfig()).eval()
    items = torch.tensor([[3, 7, 9, 2], [0, 0, 5, 11], [0, 0, 0, 4]])  # right-aligned, 0 = pad
    neg = torch.tensor([[1, 2, 3, 4], [0, 0, 6, 7], [0, 0, 0, 8]])
    target = torch.tensor([4, 12, 6])
    wide = torch.cat([torch.zeros(3, 5, dtype=torch.long), items], 1)  # five more left pads
    wide_neg = torch.cat([torch.zeros(3, 5, dtype=torch.long), neg], 1)
    with torch.no_grad():
        a_logit, a_aux = model._run(items, target, neg)
        b_logit, b_aux = model._run(wide, target, wide_neg)
        torch.testing.assert_close(a_logit, b_logit, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a_aux, b_aux, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model(items, target), a_logit)
        # the pad is really a no-op: a history of one item equals that item alone
        one = model(torch.tensor([[4]]), torch.tensor([6]))
        torch.testing.assert_close(one, a_logit[2:], rtol=1e-6, atol=1e-6)
        # an empty history is finite (zero interest), not NaN
        assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long), torch.tensor([3]))).all()
    # the training loss (L_target + alpha * L_aux) has finite gradients, also with an empty history
    model.train()
    hist = torch.cat([items, torch.zeros(1, 4, dtype=torch.long)])
    loss = model.training_loss(hist, torch.tensor([4, 12, 6, 3]), torch.tensor([1.0, 0.0, 1.0, 0.0]),
                               torch.cat([neg, torch.zeros(1, 4, dtype=torch.long)]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_dien_beats_random_is_seeded_and_scores_dins_impressions(planted):
    d, s = planted
    hgit = d.sids.filter(pl.col("method") == "hgit")
    cfg = DIENConfig(epochs=4, batch_size=256, lr=1e-2, seed=0)
    res = train_and_evaluate_dien(s, hgit, cfg)
    assert res.metrics["auc"] > 0.6 and res.metrics["gauc"] > 0.6
    again = train_and_evaluate_dien(s, hgit, cfg)
    assert again.metrics == res.metrics and again.history == res.history
    din = train_and_evaluate_din(s, hgit, DINConfig(epochs=1, batch_size=256, seed=5))
    # the same evaluation impressions as DIN (eval_seed is independent of model and seed)
    assert din.test_scores.select("user_id", "item_id", "label").equals(res.test_scores.select("user_id", "item_id", "label"))
    # aux_weight=0 disables L_aux: a different (smaller) training loss from the same start
    no_aux = train_and_evaluate_dien(s, hgit, DIENConfig(epochs=1, batch_size=256, lr=1e-2, seed=0, aux_weight=0.0))
    assert no_aux.history[0]["loss"] < res.history[0]["loss"]
    with pytest.raises(ValueError, match="aux_weight"):
        DIENConfig(aux_weight=-1.0)


def test_evaluate_all_reports_dien_beside_din(planted, tmp_path):
    d, _ = planted
    res = evaluate_all(
        d.interactions,
        d.items,
        d.sids,
        seeds=(0, 1),
        din_config=DINConfig(epochs=1, batch_size=256),
        disc_models=("DIN", "DIEN"),
        run_tiger=False,
        heuristics=(),
        split_kwargs={"min_core": 0},
    )
    t1 = res.table1
    assert t1.columns[:2] == ["model", "variant"]
    assert t1.select("model", "variant").rows() == [
        (m, v) for m in ("DIN", "DIEN") for v in ("Origin", "hgit", "rqvae")
    ]
    assert t1.filter(pl.col("variant") == "Origin")["delta_auc"].to_list() == [0.0, 0.0]
    dien = t1.filter(pl.col("model") == "DIEN")
    origin_auc = dien.filter(pl.col("variant") == "Origin")["auc"][0]
    assert dien["delta_auc"].to_list() == pytest.approx([a - origin_auc for a in dien["auc"].to_list()])
    n = res.runs.filter(pl.col("metric") == "test_samples")
    assert n.height == 2 * 3 * 2 and n["value"].n_unique() == 1  # same impressions: every model, variant, seed
    assert n["value"][0] == 5 * res.split.n_users
    st = res.seed_stats.filter((pl.col("model") == "DIEN") & (pl.col("metric") == "auc"))
    assert set(st["variant"]) == {"Origin", "hgit", "rqvae"} and (st["n"] == 2).all()
    assert st.filter(pl.col("variant") == "hgit")["baseline"][0] == "Origin"
    city = res.per_city.filter(pl.col("metric") == "auc")
    assert set(city["model"]) == {"DIN", "DIEN"}
    assert city.filter(pl.col("model") == "DIEN").select("variant", "city", "users").sort(pl.all()).equals(
        city.filter(pl.col("model") == "DIN").select("variant", "city", "users").sort(pl.all())
    )
    md = res.markdown()
    assert "Discriminative (DIN, DIEN)" in md and "Table 1" in md
    assert plot_results(res, tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="unknown disc_models"):
        evaluate_all(d.interactions, d.items, d.sids, disc_models=("DINN",), split_kwargs={"min_core": 0})


def test_asset_config_validates_disc_models():
    from pydantic import ValidationError

    from assets.evaluation import EvaluationConfig

    assert EvaluationConfig().disc_models == ["DIN"]  # the demo's time budget is unchanged
    assert EvaluationConfig(disc_models=["DIN", "DIEN"]).disc_models == ["DIN", "DIEN"]
    for bad in (["DIN", "GRU4Rec"], ["DIEN", "DIEN"]):
        with pytest.raises(ValidationError, match="disc_models"):
            EvaluationConfig(disc_models=bad)
    with pytest.raises(ValidationError):
        EvaluationConfig(dien_aux_weight=-0.5)
