"""Tests of the item tokenizers (HGIT, Res-KMeans, RQ-VAE): interface, persistence, Eq. 9-16."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.tokenizers import (
    METHODS,
    HGITTokenizer,
    SemanticIdTokenizer,
    default_codebook_sizes,
    load_tokenizer,
    make_tokenizer,
)
from lgsid_pipeline.tokenizers.diagnostics import prefix_purity, usage_stats
from lgsid_pipeline.tokenizers.synthetic import clustered_catalog

torch.set_num_threads(1)

FAST = {
    "hgit": {"epochs": 10, "batch_size": 128},
    "res_kmeans": {},
    "hgit_geo_last": {},
    "geo_prefix": {},
    "random_id": {},
    "rqvae": {"epochs": 60, "batch_size": 64, "hidden_dims": [64, 32], "latent_dim": 16, "lr": 3e-3, "min_steps": 0},
}


def synthetic_catalog(n: int = 360, d: int = 32, seed: int = 0):
    """Items in 4 well-separated cities (3 towns each); embeddings are a Gaussian mixture over
    topics (= cat1) that carries no geography at all."""
    return clustered_catalog(n=n, d=d, seed=seed)


@pytest.fixture(scope="module")
def data():
    return synthetic_catalog()


@pytest.fixture(scope="module")
def fitted(data):
    X, items = data
    return {m: make_tokenizer(m, codebook_sizes=[8, 8, 8], seed=3, **FAST[m]).fit(X, items) for m in METHODS}


def test_default_codebook_sizes_rule():
    assert default_codebook_sizes(1_000, 3) == [125, 125, 125]  # about 8 items per code
    assert default_codebook_sizes(5_317, 3) == [256, 256, 256]  # TIGER / GRID from ~2k items on
    assert default_codebook_sizes(1_000_000, 3) == [256, 256, 256]
    assert default_codebook_sizes(10, 3) == [8, 8, 8]  # floor
    assert default_codebook_sizes(10**12, 2) == [256, 256]  # ceiling
    assert len(default_codebook_sizes(5000, 4)) == 4
    with pytest.raises(ValueError):
        default_codebook_sizes(0)


def test_rqvae_trains_at_least_min_steps(data):
    """A small catalogue's epoch is a few batches; the step floor adds epochs (6 batches of 64
    here: 2 epochs requested, 30 steps -> 5 epochs); a matched-error target still stops early."""
    X, items = data
    small = dict(codebook_sizes=[8, 8], levels=2, hidden_dims=[32], latent_dim=8, batch_size=64, seed=0)
    tok = make_tokenizer("rqvae", epochs=2, min_steps=30, **small).fit(X, items)
    assert len(tok.history_) == 5
    assert len(make_tokenizer("rqvae", epochs=2, min_steps=0, **small).fit(X, items).history_) == 2
    early = make_tokenizer("rqvae", epochs=2, min_steps=30, target_mse=1e9, **small).fit(X, items)
    assert len(early.history_) == 1
    with pytest.raises(ValueError, match="min_steps"):
        make_tokenizer("rqvae", min_steps=-1, **small).fit(X, items)


def test_make_tokenizer_rejects_unknown():
    with pytest.raises(ValueError, match="unknown tokenizer method"):
        make_tokenizer("vqgan")
    with pytest.raises(ValueError, match="bad parameters"):
        make_tokenizer("hgit", nonsense=1)


def test_init_does_nothing_but_store_params():
    tok = make_tokenizer("hgit", lambda_reg=0.5, seed=7)
    assert tok.get_params()["lambda_reg"] == 0.5 and tok.get_params()["seed"] == 7
    assert not hasattr(tok, "codebook_sizes_")
    with pytest.raises(ValueError, match="not fitted"):
        tok.transform(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("method", METHODS)
def test_fit_transform_shapes_and_fit_assignments(method, fitted, data):
    X, items = data
    tok = fitted[method]
    codes = tok.transform(X, items)
    assert codes.shape == (X.shape[0], 3) and codes.dtype == np.int32
    assert tok.codebook_sizes_ == [8, 8, 8]
    assert codes.min() >= 0 and (codes.max(0) < np.array(tok.codebook_sizes_)).all()
    np.testing.assert_array_equal(codes, tok.codes_)  # transform on the fitted data == fit assignments
    assert tok.reconstruct(codes).shape == X.shape


@pytest.mark.parametrize("method", METHODS)
def test_level_distances_rank_the_transform_codes_first(method, fitted, data):
    X, items = data
    tok = fitted[method]
    codes = tok.transform(X, items)
    for level in range(3):
        d = tok.level_distances(X, items, codes, level)
        assert d.shape == (len(X), tok.codebook_sizes_[level])
        np.testing.assert_array_equal(d.argmin(1), codes[:, level])


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_codes(method, data):
    X, items = data
    a = make_tokenizer(method, codebook_sizes=[6, 6], levels=2, seed=11, **FAST[method]).fit(X, items)
    b = make_tokenizer(method, codebook_sizes=[6, 6], levels=2, seed=11, **FAST[method]).fit(X, items)
    np.testing.assert_array_equal(a.transform(X, items), b.transform(X, items))
    for ca, cb in zip(a.state_dict()[0].values(), b.state_dict()[0].values()):
        np.testing.assert_array_equal(np.asarray(ca), np.asarray(cb))


@pytest.mark.parametrize("method", METHODS)
def test_reconstruction_well_below_variance(method, fitted, data):
    X, items = data
    tok = fitted[method]
    rec = tok.reconstruct(tok.transform(X, items))
    mse = ((X - rec) ** 2).sum(1).mean()
    total_var = ((X - X.mean(0)) ** 2).sum(1).mean()
    if method == "random_id":  # the control: its codes carry no structure, so almost nothing is explained
        assert mse > 0.8 * total_var, (method, mse / total_var)
    else:
        assert mse < 0.35 * total_var, (method, mse / total_var)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, fitted, data, tmp_path):
    X, items = data
    tok = fitted[method]
    tok.save(tmp_path / method)
    assert (tmp_path / method / "tokenizer.safetensors").is_file()
    cfg = json.loads((tmp_path / method / "tokenizer.json").read_text())
    assert cfg["method"] == method and cfg["params"]["seed"] == 3
    back = load_tokenizer(tmp_path / method)
    assert type(back) is type(tok)
    codes = tok.transform(X, items)
    np.testing.assert_array_equal(back.transform(X, items), codes)
    np.testing.assert_allclose(back.reconstruct(codes), tok.reconstruct(codes), rtol=0, atol=1e-6)


def test_corrupted_or_missing_files_give_clear_errors(fitted, tmp_path):
    d = tmp_path / "tok"
    fitted["hgit"].save(d)
    weights = d / "tokenizer.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(ValueError, match=r"tokenizer\.safetensors.*corrupted or truncated.*refit"):
        SemanticIdTokenizer.load(d)
    weights.write_bytes(raw)
    (d / "tokenizer.json").write_text('{"method": "hgit", "par')
    with pytest.raises(ValueError, match=r"tokenizer\.json.*corrupted or truncated.*refit"):
        SemanticIdTokenizer.load(d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"tokenizer\.json is missing.*refit"):
        SemanticIdTokenizer.load(d)


def test_hgit_layer1_is_geographically_pure(fitted, data):
    X, items = data
    hgit, rk = fitted["hgit"], fitted["res_kmeans"]
    h1 = hgit.transform(X, items)[:, :1]
    r1 = rk.transform(X)[:, :1]
    city_h, city_r = prefix_purity(h1, items["city"]), prefix_purity(r1, items["city"])
    assert city_h >= 0.97, city_h
    assert city_r < 0.6, city_r  # embeddings carry no geography
    assert prefix_purity(h1, items["town"]) > prefix_purity(r1, items["town"]) + 0.15
    # Layer-1 centres are the mean LLM embedding of each token's items (mu(1))
    z1 = hgit.codes_[:, 0]
    for k in np.unique(z1)[:3]:
        np.testing.assert_allclose(hgit.centres_[0][k], X[z1 == k].mean(0), rtol=1e-4, atol=1e-4)


def test_hgit_feature_blocks_follow_eq9(data):
    X, items = data
    tok = HGITTokenizer(codebook_sizes=[4, 4], levels=2, epochs=0, w_admin=0.0, w_cat=0.0, w_brand=0.0).fit(X, items)
    F = tok.clustering_features(items)
    D = tok.cat_embed_dim
    assert F.shape == (len(items), 3 + 3 * D)
    assert np.all(F[:, :D] == 0) and np.all(F[:, D + 3 :] == 0)  # zero-weighted blocks vanish
    geo = F[:, D : D + 3]
    np.testing.assert_allclose((geo**2).sum(1).mean(), 1.0, rtol=1e-4)  # standardised geography
    # hierarchical composite codes: same city closer than same province, closer than unrelated
    full = HGITTokenizer(codebook_sizes=[4, 4], levels=2, epochs=0,
                         admin_columns=["province", "city", "district"]).fit(X, items)
    A = full.clustering_features(items)[:, :D]
    city = items["city"].to_numpy()
    i = 0
    town = items["town"].to_numpy()
    same_city = np.flatnonzero((city == city[i]) & (town == town[i]))[1]  # same place: admin includes town
    other_town = np.flatnonzero((city == city[i]) & (town != town[i]))[0]
    same_prov = np.flatnonzero((items["province"].to_numpy() == items["province"][i]) & (city != city[i]))[0]
    other = np.flatnonzero(items["province"].to_numpy() != items["province"][i])[0]
    d = lambda j: np.linalg.norm(A[i] - A[j])  # noqa: E731
    assert d(same_city) < 1e-6 < d(same_prov) < d(other)
    assert d(other_town) < 1e-6  # without the town level, towns of one city are one place
    town_aware = HGITTokenizer(codebook_sizes=[4, 4], levels=2, epochs=0).fit(X, items)  # default: with town
    T = town_aware.clustering_features(items)[:, :D]
    assert np.linalg.norm(T[i] - T[same_city]) < 1e-6 < np.linalg.norm(T[i] - T[other_town])


def skewed_residual_data(n: int = 800, d: int = 8, seed: int = 0):
    """Heavy-tailed density (squared exponentials on two axes): k-means places centres by
    squared error, so the dense corner holds many items per code and usage is skewed."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.05, (n, d))
    X[:, 0] = rng.exponential(1.0, n) ** 2
    X[:, 1] = rng.exponential(1.0, n) ** 2
    items = pl.DataFrame({"lat": np.full(n, 10.0) + rng.normal(0, 1e-3, n), "lon": np.full(n, 20.0)})
    return X.astype(np.float32), items


def test_usage_regulariser_raises_perplexity():
    """Eq. 14-16: with lambda_reg > 0 the level-2 codes are used more evenly than with 0."""
    X, items = skewed_residual_data()
    common = dict(codebook_sizes=[1, 16], levels=2, seed=0, epochs=60, batch_size=200, lr=0.02, usage_temperature=0.3,
                  max_steps=None)
    plain = HGITTokenizer(lambda_reg=0.0, **common).fit(X, items)
    reg = HGITTokenizer(lambda_reg=0.3, **common).fit(X, items)
    p0 = usage_stats(plain.codes_[:, 1], 16)["perplexity"]
    p1 = usage_stats(reg.codes_[:, 1], 16)["perplexity"]
    assert p1 > p0 * 1.3, (p0, p1)
    # the price is some reconstruction error, bounded
    assert reg.history_[-1]["recon_mse"] < 2.0 * plain.history_[-1]["recon_mse"]


def test_hgit_step_budget_caps_adam_steps_not_passes():
    """max_steps bounds the residual-centre training whatever the catalogue size; None runs
    every pass. The budget is counted across epochs and may stop inside one."""
    X, items = skewed_residual_data()  # 800 rows, batch 200 -> 4 steps per pass
    common = dict(codebook_sizes=[1, 16], levels=2, seed=0, epochs=5, batch_size=200)
    capped = HGITTokenizer(max_steps=6, **common).fit(X, items)
    assert [h["steps"] for h in capped.history_[1:]] == [4, 6]
    full = HGITTokenizer(max_steps=None, **common).fit(X, items)
    assert [h["steps"] for h in full.history_[1:]] == [4, 8, 12, 16, 20]
    again = HGITTokenizer(max_steps=6, **common).fit(X, items)
    assert np.array_equal(capped.codes_, again.codes_)  # seeded
    assert HGITTokenizer().get_params()["max_steps"] == 128


def test_categorical_columns_entirely_null(data):
    X, items = data
    bare = items.with_columns(
        [pl.lit(None, dtype=pl.Utf8).alias(c) for c in ("province", "city", "district", "town", "cat1", "cat2", "brand")]
    )
    tok = HGITTokenizer(codebook_sizes=[8, 8], levels=2, epochs=2).fit(X, bare)
    assert tok.transform(X, bare).shape == (len(items), 2)
    no_cols = items.select("item_id", "lat", "lon")  # columns missing altogether
    assert HGITTokenizer(codebook_sizes=[8, 8], levels=2, epochs=1).fit(X, no_cols).codes_.shape == (len(items), 2)
    only_cat = items.with_columns(pl.lit(None, dtype=pl.Float64).alias("lat"), pl.lit(None, dtype=pl.Float64).alias("lon"))
    assert HGITTokenizer(codebook_sizes=[8, 8], levels=2, epochs=1).fit(X, only_cat).codes_.shape[0] == len(items)
    nothing = bare.with_columns(pl.lit(None, dtype=pl.Float64).alias("lat"), pl.lit(None, dtype=pl.Float64).alias("lon"))
    with pytest.raises(ValueError, match="every one of them is null"):
        HGITTokenizer(levels=2).fit(X, nothing)


@pytest.mark.parametrize("method", METHODS)
def test_small_catalogue_shrinks_codebooks(method, data):
    X, items = data
    Xs, its = X[:5], items[:5]
    tok = make_tokenizer(method, codebook_sizes=[16, 16], levels=2, **FAST[method]).fit(Xs, its)
    assert tok.codebook_sizes_ == [5, 5]
    codes = tok.transform(Xs, its)
    assert codes.shape == (5, 2) and (codes < 5).all()


def test_bad_inputs_raise_value_errors(data, fitted):
    X, items = data
    Xbad = X.copy()
    Xbad[7, 3] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        make_tokenizer("res_kmeans").fit(Xbad)
    with pytest.raises(ValueError, match="needs the items frame"):
        make_tokenizer("hgit").fit(X)
    with pytest.raises(ValueError, match="aligned row by row"):
        make_tokenizer("hgit").fit(X, items[:10])
    with pytest.raises(ValueError, match="dimension"):
        fitted["res_kmeans"].transform(X[:, :5])
    bad_geo = items.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(95.0).otherwise(pl.col("lat")).alias("lat"))
    with pytest.raises(ValueError, match="items row 4"):
        make_tokenizer("hgit", levels=2).fit(X, bad_geo)
    with pytest.raises(ValueError, match="outside"):
        fitted["hgit"].reconstruct(np.full((2, 3), 99))


def test_hgit_transform_new_items_with_unseen_ids(fitted, data):
    X, items = data
    new = items[:20].with_columns(pl.lit("never-seen-brand").alias("brand"), pl.lit("NewCity").alias("city"))
    codes = fitted["hgit"].transform(X[:20], new)
    assert codes.shape == (20, 3)


@pytest.mark.parametrize("method", ["rqvae", "hgit"])
def test_trained_tokenizers_repeat_exactly_on_several_threads(method):
    """The codebook gradients go through embedding(), whose CPU backward adds in a fixed order;
    the index_put behind ``cb[idx]`` added them in thread order, so two fits on two threads gave
    different centres (and RQ-VAE different codes)."""
    import hashlib

    import torch

    from lgsid_pipeline.tokenizers.synthetic import clustered_catalog

    cat = clustered_catalog(n=1500, d=32, seed=3)
    X, items = (cat[0], cat[1]) if isinstance(cat, tuple) else (cat.X, cat.items)
    before = torch.get_num_threads()
    digests = []
    try:
        for threads in (2, 2, 1):
            torch.set_num_threads(threads)
            params = {"min_steps": 150} if method == "rqvae" else {"lambda_reg": 0.1}
            tok = make_tokenizer(method, codebook_sizes=[16, 16, 16], levels=3, seed=0, **params)
            codes = tok.fit(X, items).transform(X, items)
            centres = [tok._quant_centres(lv).numpy() if method == "rqvae" else tok.centres_[lv] for lv in range(3)]
            digests.append(hashlib.sha1(codes.tobytes() + b"".join(c.tobytes() for c in centres)).hexdigest())
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1] == digests[2]
