"""G-DPO (Eq. 6-8): pair construction, loss values, LoRA-only training, resume, adapter I/O."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, build_tiny_bert
from lgsid_pipeline.alignment.gdpo import (
    GDPOConfig,
    build_preference_pairs,
    gdpo_align_loss,
    gdpo_loss,
    load_aligned_encoder,
    geography_score,
    plot_geography,
    plot_losses,
    select_step,
    similarity_loss,
    train_gdpo,
)
from lgsid_pipeline.alignment.reward import RewardModel

CITIES = {"new york": ["brooklyn", "queens"], "phoenix": ["central", "north"], "madison": ["east", "west"]}
KINDS = ["pizza", "coffee", "sushi", "burger", "tea", "bakery"]


def make_items(n_per_town: int = 5, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for ci, (city, towns) in enumerate(CITIES.items()):
        for ti, town in enumerate(towns):
            for k in range(n_per_town):
                kind = KINDS[int(rng.integers(len(KINDS)))]
                rows.append({"item_id": f"i{len(rows)}", "name": f"{town} {kind} shop", "cat1": "food",
                             "cat2": kind, "cat3": None, "brand": None, "price": float(k),
                             "province": "state", "city": city, "district": None, "town": town,
                             "lat": 40.0 + 3 * ci + 0.1 * ti + 0.01 * k, "lon": -70.0 - 3 * ci,
                             "goods": None, "top_sellers": None})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"), seed=0)


@pytest.fixture(scope="module")
def encoder(bert_dir):
    torch.set_num_threads(1)
    return TextEncoder(EncoderConfig(model_path=str(bert_dir), device="cpu", max_length=64))


@pytest.fixture(scope="module")
def setup(encoder):
    items = make_items()
    ids = items["item_id"].to_list()
    cooc = pl.DataFrame({"item_a": ids[0:10:2], "item_b": ids[1:10:2], "score": [3] * 5})
    pairs = build_preference_pairs(items, cooc, seed=0)
    torch.manual_seed(0)
    return items, pairs, RewardModel(encoder.dim, 16)


def test_build_preference_pairs(setup):
    items, pairs, _ = setup
    loc = dict(zip(items["item_id"], items["town"]))
    assert set(pairs["source"]) == {"gc", "dc"}
    gc = pairs.filter(pl.col("source") == "gc")
    dc = pairs.filter(pl.col("source") == "dc")
    assert gc.height == items.height and (gc["target_id"] == gc["near_id"]).all()
    assert dc.height == 10  # both directions of 5 co-occurrence pairs
    assert all(loc[t] != loc[f] for t, f in zip(pairs["target_id"], pairs["far_id"]))
    again = build_preference_pairs(items, pairs.select(pl.col("target_id").alias("item_a"),
                                                       pl.col("near_id").alias("item_b")), seed=0)
    assert again.height >= gc.height
    assert build_preference_pairs(items, None, seed=3).equals(build_preference_pairs(items, None, seed=3))
    assert build_preference_pairs(items, None, seed=3, max_pairs=7).height == 7
    assert build_preference_pairs(items, None, use_gc=False).height == 0
    city = build_preference_pairs(items, None, seed=1, outside="city")
    cities = dict(zip(items["item_id"], items["city"]))
    assert all(cities[t] != cities[f] for t, f in zip(city["target_id"], city["far_id"]))
    with pytest.raises(ValueError, match="item_b"):
        build_preference_pairs(items, pl.DataFrame({"item_a": ["i0"]}))


def test_eq6_matches_hand_computation():
    rp, rn = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    qp, qn = torch.tensor([0.3, 0.0]), torch.tensor([0.1, 0.2])
    beta = 0.9
    x1 = beta * (2.0 - 1.0 - 0.3 + 0.1)
    x2 = beta * (0.5 - 1.5 - 0.0 + 0.2)
    expected = -(np.log(1 / (1 + np.exp(-x1))) + np.log(1 / (1 + np.exp(-x2)))) / 2
    assert float(gdpo_align_loss(rp, rn, qp, qn, beta)) == pytest.approx(expected, rel=1e-6)
    assert float(gdpo_loss(torch.tensor(1.0), torch.tensor(-0.5), 2.0)) == pytest.approx(0.0)


def test_eq7_matches_hand_computation_and_is_bounded():
    pi = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ref = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    b = 3
    total = 0.0
    for i in range(b):
        own = float(((pi[i] - ref[i]) ** 2).sum())
        others = sum(float(((pi[i] - ref[j]) ** 2).sum()) for j in range(b) if j != i) / (b - 1)
        total += own - others
    assert float(similarity_loss(pi, ref)) == pytest.approx(total / b, rel=1e-6)
    # Scale does not matter (normalised), so the push term cannot run away: bounded in [-4, 4].
    g = torch.Generator().manual_seed(0)
    big = torch.randn(16, 8, generator=g) * 1e3
    val = float(similarity_loss(big, torch.randn(16, 8, generator=g)))
    assert -4.0 <= val <= 4.0
    assert float(similarity_loss(big, big)) < 0  # identical to own reference -> below zero
    assert float(similarity_loss(pi * 7.0, ref)) == pytest.approx(total / b, rel=1e-5)


def _train(encoder, setup, tmp_path, name, **kw):
    items, pairs, rm = setup
    kw.setdefault("lam", 1.0)
    cfg = GDPOConfig(lr=2e-2, batch_size=8, epochs=2, seed=0, checkpoint_every=2, eval_pairs=64, **kw)
    return train_gdpo(encoder, rm, items, pairs, cfg, checkpoint_dir=tmp_path / name)


def test_training_changes_only_lora_and_raises_margin(encoder, setup, tmp_path, bert_dir):
    items, pairs, _ = setup
    base_before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    probe = items["name"].to_list()[:6]
    ref_before = encoder.encode(probe)
    res = _train(encoder, setup, tmp_path, "run")
    assert res.metrics["steps"] == 2 * (-(-pairs.height // 8))
    for h in res.history:
        assert np.isfinite([h["align"], h["sim"], h["total"]]).all()
    # The caller's encoder (= the reference) is untouched.
    for k, v in encoder.model.state_dict().items():
        torch.testing.assert_close(v, base_before[k])
    np.testing.assert_allclose(encoder.encode(probe), ref_before, atol=1e-6)
    # The adapter holds only LoRA factors of the key and value projections.
    keys = load_file(str(res.adapter_path / "adapter_model.safetensors")).keys()
    assert keys and all(("lora_A" in k or "lora_B" in k) and (".key." in k or ".value." in k) for k in keys)
    # Merged: only key/value weights differ from the base.
    aligned = load_aligned_encoder(encoder.config, res.adapter_path)
    changed = [k for k, v in aligned.model.state_dict().items() if not torch.equal(v, base_before[k])]
    assert changed and all(k.endswith(("key.weight", "value.weight")) for k in changed)
    # G-DPO widened the reward margin of the policy over the reference on the training pairs.
    assert res.metrics["policy_margin"] > res.metrics["reference_margin"]
    assert np.mean([h["margin"] for h in res.history[-3:]]) > res.history[0]["margin"]
    assert aligned.version != encoder.version
    assert not np.allclose(aligned.encode(probe), ref_before, atol=1e-4)
    assert plot_losses(res.history, tmp_path / "loss.png").stat().st_size > 0


def test_resume_matches_uninterrupted(encoder, setup, tmp_path):
    full = _train(encoder, setup, tmp_path, "full")
    n = full.metrics["steps"]
    part = _train(encoder, setup, tmp_path, "crash", max_steps=4)  # stops ("crashes") after 4 steps
    assert json.loads((tmp_path / "crash" / "state.json").read_text())["step"] == 4
    assert part.metrics["steps"] == 4
    resumed = _train(encoder, setup, tmp_path, "crash")
    assert resumed.metrics["steps"] == n and resumed.metrics["steps_this_run"] == n - 4
    assert [h["step"] for h in resumed.history] == list(range(1, n + 1))
    a = load_file(str(full.adapter_path / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_path / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose([h["total"] for h in full.history], [h["total"] for h in resumed.history],
                               atol=1e-5)


def test_adapter_roundtrip_and_errors(encoder, setup, tmp_path):
    from peft import PeftModel

    res = _train(encoder, setup, tmp_path, "rt", max_steps=3)
    aligned = load_aligned_encoder(encoder.config, res.adapter_path)
    unmerged = PeftModel.from_pretrained(encoder.clone_model(), str(res.adapter_path)).eval()
    texts = ["brooklyn pizza shop", "phoenix coffee"]
    want = encoder.encode(texts, model=unmerged)  # explicit models run the exact path
    np.testing.assert_allclose(aligned.encode(texts, model=aligned.model), want, atol=1e-5)
    got = aligned.encode(texts)  # bfloat16 where dtype="auto" enabled it, else exact
    assert ((got * want).sum(1) >= 0.999).all()
    assert aligned.identity["adapter_sha256"]
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        load_aligned_encoder(encoder.config, tmp_path / "missing")
    items, pairs, rm = setup
    with pytest.raises(ValueError, match="not in items"):
        train_gdpo(encoder, rm, items, pairs.with_columns(pl.lit("zzz").alias("far_id")), GDPOConfig(),
                   adapter_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="empty"):
        train_gdpo(encoder, rm, items, pairs.head(0), GDPOConfig(), adapter_dir=tmp_path / "x")


def test_damaged_adapter_is_refused(encoder, setup, tmp_path):
    res = _train(encoder, setup, tmp_path, "flip", max_steps=1)
    weights = res.adapter_path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # inside the tensor data: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_aligned_encoder(encoder.config, res.adapter_path)


def test_eq7_pull_reading_is_own_reference_only():
    pi = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ref = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    own = [float(((pi[i] - ref[i]) ** 2).sum()) for i in range(3)]
    assert float(similarity_loss(pi, ref, "pull")) == pytest.approx(sum(own) / 3, rel=1e-6)
    # Unlike the printed reading, pull never rewards moving away from other items' references:
    # two same-town items already at their references cost 0, however close they are.
    close = torch.tensor([[1.0, 0.0], [0.999, 0.0447]])
    assert float(similarity_loss(close, close, "pull")) == pytest.approx(0.0, abs=1e-6)
    assert float(similarity_loss(close, close, "printed")) < 0
    with pytest.raises(ValueError, match="Eq. 7 reading"):
        similarity_loss(pi, ref, "push")
    with pytest.raises(ValueError, match="sim_reading"):
        GDPOConfig(sim_reading="push")


def test_selection_rule_keeps_best_geography_within_top_loss():
    base = {"step": 0, "c@5": 0.5, "t@5": 0.2, "top@5": 0.8}
    base["score"] = geography_score(base, base)
    good = {"step": 10, "c@5": 0.6, "t@5": 0.36, "top@5": 0.78}  # closes 20% / 20% of headroom
    good["score"] = geography_score(good, base)
    assert good["score"] == pytest.approx(0.2)
    greedy = {"step": 20, "c@5": 0.9, "t@5": 0.9, "top@5": 0.70}  # -12.5% Top@5: not eligible
    greedy["score"] = geography_score(greedy, base)
    worse = {"step": 30, "c@5": 0.4, "t@5": 0.1, "top@5": 0.8}
    worse["score"] = geography_score(worse, base)
    assert select_step([base, good, greedy, worse], 0.05)["step"] == 10
    assert select_step([base, greedy], 0.20)["step"] == 20
    assert select_step([base, worse], 0.05)["step"] == 0  # only hurts: keep the unchanged encoder


def test_heldout_eval_keeps_the_selected_adapter_and_stops(encoder, setup, tmp_path):
    items, pairs, rm = setup
    cfg = GDPOConfig(lr=5e-2, batch_size=8, epochs=6, seed=0, eval_every=2, eval_items=12, patience=2,
                     lam=0.0, max_top_loss=0.05)
    res = train_gdpo(encoder, rm, items, pairs, cfg, checkpoint_dir=tmp_path / "sel")
    evals = res.evals
    assert evals[0]["step"] == 0 and evals[0]["score"] == 0.0
    assert [e["step"] for e in evals[1:]] == list(range(2, 2 * len(evals) - 1, 2))
    best = select_step(evals, 0.05)
    assert res.metrics["best_step"] == best["step"]
    later = [e for e in evals if e["step"] > best["step"]]
    total = 6 * (-(-pairs.height // 8))
    # On this planted data G-DPO raises C@5, then plateaus: a later step is kept, and training
    # stops after `patience` evaluations without a better one, before the step budget.
    assert best["step"] > 0 and best["c@5"] > evals[0]["c@5"]
    assert res.metrics["stopped_early"] and len(later) == 2 and res.metrics["steps"] < total
    # The saved adapter is the kept step's: its held-out geography equals the recorded one.
    aligned = load_aligned_encoder(encoder.config, res.adapter_path)
    from lgsid_pipeline.alignment.metrics import geography_at_k
    from lgsid_pipeline.alignment.prompts import build_prompts

    held = items.filter(~pl.col("item_id").is_in(pairs["target_id"].implode()))
    held = (held if held.height >= 12 else items).sample(n=12, seed=0).sort("item_id")
    texts = build_prompts(held)
    g = geography_at_k(aligned.encode(texts), encoder.encode(texts), held, 5)
    for k in ("c@5", "t@5", "top@5"):
        assert g[k] == pytest.approx(best[k], abs=1e-4)
    meta = json.loads((res.adapter_path / "gdpo.json").read_text())
    assert meta["selection"]["best_step"] == best["step"] and len(meta["evals"]) == len(evals)
    assert plot_geography(evals, best["step"], tmp_path / "geo.png").stat().st_size > 0
    # Called again on the same checkpoint, a run that stopped early stays stopped.
    again = train_gdpo(encoder, rm, items, pairs, cfg, checkpoint_dir=tmp_path / "sel",
                       adapter_dir=tmp_path / "again")
    assert again.metrics["steps"] == res.metrics["steps"] and again.metrics["steps_this_run"] == 0
    assert again.metrics["best_step"] == best["step"] and again.metrics["stopped_early"]
    first = load_file(str(res.adapter_path / "adapter_model.safetensors"))
    second = load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
