"""Reward model (Eq. 2-4): list-wise reading learns nearness, the literal Eq. 4 does not."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, build_tiny_bert
from lgsid_pipeline.alignment.reward import (
    RewardModel,
    common_list_length,
    encode_prompt_lists,
    load_reward_model,
    ranking_metrics,
    reward_loss,
    save_reward_model,
    soft_labels,
    train_reward_model,
)

K = 7


def synthetic_lists(n_anchors: int = 240, k: int = K, d: int = 24, seed: int = 0):
    """Embeddings [content(anchor coords) | location(slot coords) | noise], randomly rotated.

    Slot 0 is the anchor's own location, slots 1..K the K nearest other anchors' locations.
    The nearness of slot j is a non-linear function of the embedding (a distance between two
    of its sub-vectors), which is exactly what an independent-per-slot MLP (Eq. 2) must learn.
    """
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 10, size=(n_anchors, 2))
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)  # tiny fixture: 240 x 240 is fine
    np.fill_diagonal(d2, np.inf)
    nn = np.argsort(d2, axis=1)[:, :k]
    loc = np.concatenate([xy[:, None, :], xy[nn]], axis=1)  # (A, K+1, 2) near -> far
    content = np.repeat(xy[:, None, :], k + 1, axis=1)
    feats = np.concatenate([content, loc, rng.normal(0, 0.3, size=(n_anchors, k + 1, d - 4))], -1)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    e = torch.tensor(feats @ q / 5.0, dtype=torch.float32)
    ranks = torch.arange(k + 1).expand(n_anchors, k + 1)
    return e, soft_labels(ranks, k)


def test_soft_labels_follow_eq3():
    ranks = torch.tensor([[0, 1, 2, 3]])
    assert soft_labels(ranks, 3).tolist() == [[4.0, 3.0, 2.0, 1.0]]


def test_listwise_reading_beats_untrained_on_heldout():
    torch.set_num_threads(1)
    e, labels = synthetic_lists()
    res = train_reward_model(e, labels, epochs=100, lr=1e-2, hidden=64, batch_size=32, seed=0)
    m = res.metrics
    assert len(res.history) == 100
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert m["heldout_spearman"] > 0.7
    assert m["heldout_spearman"] > m["untrained_spearman"] + 0.3
    assert m["heldout_ndcg"] > m["untrained_ndcg"] + 0.03


def test_literal_eq4_is_degenerate_while_listnet_learns_order():
    torch.set_num_threads(1)
    e, labels = synthetic_lists(seed=1)
    lit = train_reward_model(e, labels, loss="literal", epochs=100, lr=1e-2, hidden=64, seed=0)
    good = train_reward_model(e, labels, loss="listnet", epochs=100, lr=1e-2, hidden=64, seed=0)
    with torch.no_grad():
        s_lit = lit.model(e)
        s_good = good.model(e)
    # The literal loss only pushes every score up: scores grow without bound, its loss -> 0.
    assert s_lit.mean() > 5.0
    assert lit.history[-1]["loss"] < 0.05 * lit.history[0]["loss"]
    # ... and the ordering it learns is far worse than the list-wise reading's.
    assert good.metrics["heldout_spearman"] > lit.metrics["heldout_spearman"] + 0.2
    # With more steps the literal scores keep rising (diverge), the list-wise ones do not need to.
    assert float(reward_loss(s_good, labels, "literal")) > float(reward_loss(s_lit, labels, "literal"))


def test_soft_bce_reading_and_pointwise_learn_something():
    torch.set_num_threads(1)
    e, labels = synthetic_lists(seed=2)
    bce = train_reward_model(e, labels, loss="soft_bce", epochs=100, lr=1e-2, hidden=64, seed=0)
    assert bce.metrics["heldout_spearman"] > bce.metrics["untrained_spearman"] + 0.2
    pw = train_reward_model(e, labels, mode="pointwise", epochs=100, lr=1e-2, hidden=64, seed=0)
    assert pw.metrics["heldout_top1"] > pw.metrics["untrained_top1"]


def test_ranking_metrics_perfect_and_reversed():
    labels = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    perfect = ranking_metrics(labels.clone(), labels)
    assert perfect["spearman"] == pytest.approx(1.0)
    assert perfect["ndcg"] == pytest.approx(1.0)
    rev = ranking_metrics(-labels, labels)
    assert rev["spearman"] == pytest.approx(-1.0)
    assert rev["ndcg"] < 0.8


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    e, labels = synthetic_lists(n_anchors=80, seed=3)
    kw = dict(hidden=32, lr=3e-3, batch_size=16, seed=5)
    full = train_reward_model(e, labels, epochs=6, **kw)
    train_reward_model(e, labels, epochs=3, checkpoint_dir=tmp_path / "ck", **kw)  # "killed" after 3
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert state["epoch"] == 3
    resumed = train_reward_model(e, labels, epochs=6, checkpoint_dir=tmp_path / "ck", **kw)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="different data"):
        train_reward_model(e, labels, epochs=6, checkpoint_dir=tmp_path / "ck", **{**kw, "seed": 6})


def test_save_load_roundtrip_and_corruption(tmp_path):
    torch.manual_seed(0)
    m = RewardModel(12, 8)
    save_reward_model(m, tmp_path / "rm")
    back = load_reward_model(tmp_path / "rm")
    x = torch.randn(5, 12)
    torch.testing.assert_close(m(x), back(x))
    (tmp_path / "rm" / "reward_model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="safetensors"):
        load_reward_model(tmp_path / "rm")
    with pytest.raises(ValueError, match="does not exist"):
        load_reward_model(tmp_path / "nowhere")


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="E must be"):
        train_reward_model(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="labels shape"):
        train_reward_model(torch.zeros(3, 4, 2), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="dim"):
        RewardModel(4)(torch.zeros(2, 5))


def test_encode_prompt_lists_shapes_and_labels(tmp_path):
    enc = TextEncoder(EncoderConfig(model_path=str(build_tiny_bert(tmp_path / "bert")), device="cpu"))
    rows = []
    for a in ("a1", "a2", "a3"):
        for r in range(4):
            rows.append({"anchor_id": a, "rank": r, "label": 4 - r, "prompt": f"item {a} at place {r}"})
    rows = rows[:-1]  # a3 loses its farthest negative -> incomplete list, dropped
    df = pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=0)
    e, labels, anchors = encode_prompt_lists(enc, df)
    assert anchors == ["a1", "a2"]
    assert e.shape == (2, 4, enc.dim)
    assert labels.tolist() == [[4.0, 3.0, 2.0, 1.0]] * 2
    direct = enc.encode(["item a2 at place 2"])
    np.testing.assert_allclose(e[1, 2].numpy(), direct[0], atol=1e-5)
    with pytest.raises(ValueError, match="missing column"):
        encode_prompt_lists(enc, df.drop("prompt"))
    # k cuts every list to its k nearest negatives, so a3 (3 ranks) is kept; labels follow Eq. 3.
    e2, labels2, anchors2 = encode_prompt_lists(enc, df, k=2)
    assert anchors2 == ["a1", "a2", "a3"] and e2.shape == (3, 3, enc.dim)
    assert labels2.tolist() == [[3.0, 2.0, 1.0]] * 3


def test_common_list_length_keeps_most_anchors():
    lens = {"a": 5, "b": 5, "c": 4, "d": 4, "e": 4, "f": 4, "g": 4, "h": 4, "i": 4, "j": 1}
    df = pl.DataFrame([{"anchor_id": a, "rank": r} for a, n in lens.items() for r in range(n + 1)])
    assert common_list_length(df, keep_share=0.9) == 4  # 9 of 10 reach 4; one short list is left out
    assert common_list_length(df, keep_share=0.2) == 5
    assert common_list_length(df, keep_share=1.0) == 1
    with pytest.raises(ValueError, match="keep_share"):
        common_list_length(df, keep_share=0.0)


def test_torn_checkpoint_is_not_resumed(tmp_path):
    """A kill between writing new weights and state.json must not resume from a mixture."""
    from lgsid_pipeline.train_state import atomic_save_tensors, load_checkpoint

    torch.manual_seed(0)
    E = torch.randn(24, 4, 6)
    labels = (4 - torch.stack([torch.randperm(4) for _ in range(24)])).float()
    ckpt = tmp_path / "ckpt"
    train_reward_model(E, labels, epochs=2, hidden=8, batch_size=8, checkpoint_dir=ckpt)
    assert load_checkpoint(ckpt) is not None
    model_t, _, _ = load_checkpoint(ckpt)
    atomic_save_tensors({k: v + 1 for k, v in model_t.items()}, ckpt / "model.safetensors")  # "later" weights
    assert load_checkpoint(ckpt) is None
    res = train_reward_model(E, labels, epochs=3, hidden=8, batch_size=8, checkpoint_dir=ckpt)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
