"""Behavioural tests of the tokenizer variants and helpers: HGIT geo-last, geo_prefix,
random_id, GNPR features, dedup orders and collision figures, plus a planted TIGER case where
a geographic last level must beat id-order digits.

The generic suite of ``test_tokenizers.py`` covers shapes, save/load and determinism for every
method; the tests here check what each variant promises beyond that."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.recommenders.data import next_item_split
from lgsid_pipeline.recommenders.tiger import TigerConfig, train_and_evaluate_tiger
from lgsid_pipeline.tokenizers import (
    GeoPrefixTokenizer,
    HGITGeoLastTokenizer,
    HGITTokenizer,
    RandomIdTokenizer,
    SemanticIdTokenizer,
    default_codebook_sizes,
)
from lgsid_pipeline.tokenizers.dedup import (
    append_dedup_level,
    collision_figures,
    dedup_order_key,
    hilbert_index,
    unique_sids,
)
from lgsid_pipeline.tokenizers.features import gnpr_features, visit_hour_features
from lgsid_pipeline.tokenizers.geo_prefix import cell_centres, geohash_cells
from lgsid_pipeline.tokenizers.hgit import ADMIN_COLUMNS, LEGACY_ADMIN_COLUMNS, hierarchical_codes
from lgsid_pipeline.tokenizers.random_id import hashed_item_codes
from lgsid_pipeline.tokenizers.res_kmeans import ResKMeansTokenizer
from lgsid_pipeline.tokenizers.synthetic import clustered_catalog

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def catalog():
    """360 items in 4 cities x 3 towns; embeddings carry topics, no geography."""
    return clustered_catalog(n=360, d=32, seed=0)


@pytest.fixture(scope="module")
def geo_last(catalog):
    X, items = catalog
    return HGITGeoLastTokenizer(codebook_sizes=[8, 8, 12], levels=3, seed=3).fit(X, items)


def _haversine(lat1, lon1, lat2, lon2):
    la1, lo1, la2, lo2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


# --- hgit_geo_last ------------------------------------------------------------------------------
def test_geo_last_content_levels_equal_res_kmeans_with_same_seed(catalog, geo_last):
    """Levels 1..L-1 are Res-KMeans on X, seeded seed + level in both implementations."""
    X, items = catalog
    rk = ResKMeansTokenizer(codebook_sizes=[8, 8], levels=2, seed=3).fit(X)
    np.testing.assert_array_equal(geo_last.codes_[:, :2], rk.codes_)
    np.testing.assert_array_equal(geo_last.transform(X, items)[:, :2], rk.transform(X))
    for level in range(2):
        np.testing.assert_allclose(geo_last.centres_[level], rk.centres_[level], rtol=0, atol=0)
    # a different seed moves the content codes (the seed is really used)
    other = HGITGeoLastTokenizer(codebook_sizes=[8, 8, 12], levels=3, seed=4).fit(X, items)
    assert not np.array_equal(other.codes_[:, :2], geo_last.codes_[:, :2])


def test_geo_last_last_level_is_a_function_of_location_only(catalog, geo_last):
    X, items = catalog
    codes = geo_last.transform(X, items)
    rng = np.random.default_rng(1)
    # brand-new embeddings (different scale, different content codes): the last code stays
    X_new = rng.normal(0, 5.0, X.shape).astype(np.float32)
    new = geo_last.transform(X_new, items)
    assert (new[:, 0] != codes[:, 0]).mean() > 0.5  # content levels did change
    np.testing.assert_array_equal(new[:, -1], codes[:, -1])
    # category / brand changes do not move the geographic token either
    recat = items.with_columns(pl.lit("other").alias("cat1"), pl.lit("other/x").alias("cat2"), pl.lit(None, dtype=pl.Utf8).alias("brand"))
    np.testing.assert_array_equal(geo_last.transform(X, recat)[:, -1], codes[:, -1])
    # two items at the same place (lat/lon + admin) with unrelated embeddings share the code
    pair = pl.concat([items[[5]], items[[5]]])
    Xp = np.stack([X[0], -3 * X[200]]).astype(np.float32)
    got = geo_last.transform(Xp, pair)
    assert got[0, -1] == got[1, -1] == codes[5, -1]
    # and the fit-time assignment agrees with transform
    np.testing.assert_array_equal(geo_last.codes_, codes)


def test_geo_last_cells_are_places_and_prefixes_spread_over_them(catalog, geo_last):
    """With 12 geo codes on 12 towns, each geo code is one town; since embeddings carry no
    geography, every sizeable content prefix reaches several towns in several cities."""
    X, items = catalog
    codes = geo_last.codes_
    df = pl.DataFrame({"c0": codes[:, 0], "g": codes[:, -1], "town": items["town"], "city": items["city"]})
    per_cell = df.group_by("g").agg(pl.col("town").n_unique().alias("towns"))
    assert per_cell["towns"].max() == 1
    assert df["g"].n_unique() == 12
    per_prefix = df.group_by("c0").agg(pl.len().alias("n"), pl.col("g").n_unique().alias("cells"),
                                       pl.col("city").n_unique().alias("cities"))
    big = per_prefix.filter(pl.col("n") >= 20)
    assert big.height >= 4
    assert big["cells"].min() >= 6
    assert big["cities"].min() == 4


def test_geo_last_level_distances_rank_the_geo_code_first(catalog, geo_last):
    X, items = catalog
    codes = geo_last.transform(X, items)
    d = geo_last.level_distances(X, items, codes, 2)
    assert d.shape == (X.shape[0], 12)
    np.testing.assert_array_equal(d.argmin(1), codes[:, 2])


def test_geo_last_needs_geography(catalog):
    X, items = catalog
    bare = items.select("item_id", "cat1", "cat2", "brand")
    with pytest.raises(ValueError, match="geo last"):
        HGITGeoLastTokenizer(codebook_sizes=[8, 8], levels=2).fit(X, bare)
    with pytest.raises(ValueError, match="items"):
        HGITGeoLastTokenizer(codebook_sizes=[8, 8], levels=2).fit(X, None)


# --- HGIT admin columns ---------------------------------------------------------------------------
def test_hgit_admin_columns_default_custom_and_legacy_load(catalog, tmp_path):
    X, items = catalog
    tok = HGITTokenizer(codebook_sizes=[8, 8], levels=2, epochs=0, seed=0).fit(X, items)
    assert tok.admin_columns_ == list(ADMIN_COLUMNS) and "town" in tok.admin_columns_
    F = tok.clustering_features(items)
    D = tok.cat_embed_dim
    np.testing.assert_allclose(F[:, :D], hierarchical_codes(items, ADMIN_COLUMNS, D, 0), atol=1e-6)

    custom = HGITTokenizer(codebook_sizes=[8, 8], levels=2, epochs=0, admin_columns=["province", "city"]).fit(X, items)
    np.testing.assert_allclose(custom.clustering_features(items)[:, :D],
                               hierarchical_codes(items, ("province", "city"), D, 0), atol=1e-6)

    # a current save keeps town
    tok.save(tmp_path / "new")
    assert SemanticIdTokenizer.load(tmp_path / "new").admin_columns_ == list(ADMIN_COLUMNS)
    # a codebook saved before admin_columns_ existed loads with (province, city, district)
    tok.save(tmp_path / "old")
    cfg_path = tmp_path / "old" / "tokenizer.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["fitted"]["admin_columns_"]
    cfg["params"].pop("admin_columns", None)
    cfg_path.write_text(json.dumps(cfg))
    old = SemanticIdTokenizer.load(tmp_path / "old")
    assert old.admin_columns_ == list(LEGACY_ADMIN_COLUMNS)
    F_old = old.clustering_features(items)
    np.testing.assert_allclose(F_old[:, :D], hierarchical_codes(items, LEGACY_ADMIN_COLUMNS, D, 0), atol=1e-6)
    np.testing.assert_allclose(F_old[:, D:], F[:, D:], atol=1e-6)  # only the admin block changes
    assert not np.allclose(F_old[:, :D], F[:, :D])  # town really mattered in this catalogue
    assert old.transform(X, items).shape == (X.shape[0], 2)


def test_geo_last_saved_admin_columns_survive_load(catalog, tmp_path):
    X, items = catalog
    tok = HGITGeoLastTokenizer(codebook_sizes=[8, 12], levels=2, admin_columns=["province", "city"]).fit(X, items)
    tok.save(tmp_path / "g")
    back = SemanticIdTokenizer.load(tmp_path / "g")
    assert isinstance(back, HGITGeoLastTokenizer)
    assert back.admin_columns_ == ["province", "city"]
    np.testing.assert_array_equal(back.transform(X, items), tok.transform(X, items))


# --- geo_prefix --------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 3, 8, 17, 26])
def test_geohash_cells_and_centres_round_trip(bits):
    rng = np.random.default_rng(bits)
    lat = rng.uniform(-90, 90, 500)
    lon = rng.uniform(-180, 180, 500)
    cells = geohash_cells(lat, lon, bits)
    assert cells.min() >= 0 and cells.max() < 4**bits
    c_lat, c_lon = cell_centres(cells, bits)
    np.testing.assert_array_equal(geohash_cells(c_lat, c_lon, bits), cells)
    # the centre is within half a cell of the point on each axis
    assert (np.abs(c_lat - lat) <= 90.0 / (1 << bits) + 1e-9).all()
    assert (np.abs(c_lon - lon) <= 180.0 / (1 << bits) + 1e-9).all()
    # every cell id maps to its own centre and back (a bijection on small grids)
    if bits <= 8:
        ids = np.arange(4**bits, dtype=np.int64) if bits <= 3 else rng.integers(0, 4**bits, 1000)
        np.testing.assert_array_equal(geohash_cells(*cell_centres(ids, bits), bits), ids)


def test_geohash_bit_order_and_bad_bits():
    # bits=1: longitude bit first, then latitude: (lat<0, lon<0)=0, (lat>0, lon<0)=1, (lat<0, lon>0)=2, ...
    got = geohash_cells(np.array([-45.0, 45.0, -45.0, 45.0]), np.array([-90.0, -90.0, 90.0, 90.0]), 1)
    np.testing.assert_array_equal(got, [0, 1, 2, 3])
    # edges stay inside the grid
    assert geohash_cells(np.array([90.0]), np.array([180.0]), 4)[0] == 4**4 - 1
    for bad in (0, 27):
        with pytest.raises(ValueError, match="bits"):
            geohash_cells(np.zeros(1), np.zeros(1), bad)


@pytest.mark.parametrize("k", [4, 8, 16])
def test_geo_prefix_precision_is_finest_that_fits(catalog, k):
    X, items = catalog
    tok = GeoPrefixTokenizer(codebook_sizes=[k, 8], levels=2).fit(X, items)
    lat, lon = items["lat"].to_numpy(), items["lon"].to_numpy()
    occupied = np.unique(geohash_cells(lat, lon, tok.bits_))
    assert occupied.size <= k
    assert np.unique(geohash_cells(lat, lon, tok.bits_ + 1)).size > k
    np.testing.assert_array_equal(tok.cells_, occupied)
    assert tok.codebook_sizes_[0] == occupied.size
    # level 1 is the item's own cell, in cell (Morton) order
    np.testing.assert_array_equal(tok.codes_[:, 0], np.searchsorted(occupied, geohash_cells(lat, lon, tok.bits_)))
    np.testing.assert_array_equal(tok.transform(X, items)[:, 0], tok.codes_[:, 0])


def test_geo_prefix_unseen_location_takes_nearest_occupied_cell(catalog):
    X, items = catalog
    tok = GeoPrefixTokenizer(codebook_sizes=[4, 8], levels=2).fit(X, items)  # one cell per city
    city0 = tok.codes_[items["city"].to_numpy() == "C0", 0]
    assert np.unique(city0).size == 1
    # 0.8 degrees north of city 0 (cities sit 2 degrees apart): an unoccupied cell, nearest to C0's
    probe = items[[0]].with_columns(pl.lit(30.8).alias("lat"), pl.lit(100.02).alias("lon"))
    assert geohash_cells(np.array([30.8]), np.array([100.02]), tok.bits_)[0] not in set(tok.cells_.tolist())
    assert tok.transform(X[:1], probe)[0, 0] == city0[0]
    # far away points: nearest occupied cell centre by great-circle distance (from the point's cell centre)
    far_lat, far_lon = np.array([-40.0, 60.0, 31.0, 36.9]), np.array([-70.0, 10.0, 140.0, 100.0])
    far = pl.concat([items[[0]]] * 4).with_columns(pl.Series("lat", far_lat), pl.Series("lon", far_lon))
    p_lat, p_lon = cell_centres(geohash_cells(far_lat, far_lon, tok.bits_), tok.bits_)
    c_lat, c_lon = cell_centres(tok.cells_, tok.bits_)
    want = _haversine(p_lat[:, None], p_lon[:, None], c_lat[None], c_lon[None]).argmin(1)
    got = tok.transform(np.repeat(X[:1], 4, 0), far)[:, 0]
    np.testing.assert_array_equal(got, want)
    assert got[3] == tok.codes_[items["city"].to_numpy() == "C3", 0][0]  # just north of the last city


def test_geo_prefix_null_coordinates_get_a_valid_code(catalog):
    X, items = catalog
    tok = GeoPrefixTokenizer(codebook_sizes=[4, 8], levels=2).fit(X, items)
    nulls = items[:3].with_columns(pl.lit(None, dtype=pl.Float64).alias("lat"), pl.lit(None, dtype=pl.Float64).alias("lon"))
    codes = tok.transform(X[:3], nulls)
    assert ((codes >= 0) & (codes < np.array(tok.codebook_sizes_))).all()
    # the cell nearest the catalogue's centre (mean of the occupied cells' unit vectors)
    c_lat, c_lon = np.radians(cell_centres(tok.cells_, tok.bits_))
    u = np.stack([np.cos(c_lat) * np.cos(c_lon), np.cos(c_lat) * np.sin(c_lon), np.sin(c_lat)], 1)
    dist = ((u - u.mean(0)) ** 2).sum(1)
    assert np.allclose(dist[codes[:, 0]], dist.min(), rtol=1e-4, atol=1e-7)  # ties (symmetric cities) allowed
    assert dist.max() > 2 * dist.min()  # so the check is not trivially true
    d = tok.level_distances(X[:3], nulls, codes, 0)
    assert np.isfinite(d).all()
    np.testing.assert_array_equal(d.argmin(1), codes[:, 0])
    # fitting on a catalogue with some null coordinates works too; only located items define cells
    some = items.with_columns(pl.when(pl.int_range(pl.len()) % 10 == 0).then(None).otherwise(pl.col("lat")).alias("lat"))
    tok2 = GeoPrefixTokenizer(codebook_sizes=[4, 8], levels=2).fit(X, some)
    assert tok2.cells_.size == 4
    with pytest.raises(ValueError, match="coordinates"):
        GeoPrefixTokenizer(codebook_sizes=[4, 8], levels=2).fit(X, items.with_columns(pl.lit(None, dtype=pl.Float64).alias("lat")))


# --- random_id ---------------------------------------------------------------------------------
def test_random_id_codes_depend_only_on_item_id_and_seed(catalog):
    X, items = catalog
    tok = RandomIdTokenizer(codebook_sizes=[8, 8, 8], seed=5).fit(X, items)
    codes = tok.transform(X, items)
    np.testing.assert_array_equal(codes, tok.codes_)
    np.testing.assert_array_equal(codes, hashed_item_codes(items["item_id"], [8, 8, 8], 5))
    perm = np.random.default_rng(0).permutation(X.shape[0])
    np.testing.assert_array_equal(tok.transform(X[perm], items[perm]), codes[perm])
    # new embeddings, other columns changed: same codes
    X_new = np.random.default_rng(2).normal(size=X.shape).astype(np.float32)
    moved = items.with_columns(pl.lit(0.0).alias("lat"), pl.lit("zzz").alias("cat1"))
    np.testing.assert_array_equal(tok.transform(X_new, moved), codes)
    # a tokenizer fitted on other embeddings / row order gives the same codes
    other = RandomIdTokenizer(codebook_sizes=[8, 8, 8], seed=5).fit(X_new[perm], items[perm])
    np.testing.assert_array_equal(other.transform(X, items), codes)
    # another seed gives other codes
    assert (RandomIdTokenizer(codebook_sizes=[8, 8, 8], seed=6).fit(X, items).codes_ != codes).mean() > 0.5
    # a level's code does not repeat the level above (levels hash independently)
    assert (codes[:, 0] != codes[:, 1]).mean() > 0.7
    with pytest.raises(ValueError, match="null item_id"):
        hashed_item_codes(pl.Series(["a", None]), [8], 0)
    with pytest.raises(ValueError, match="item_id"):
        RandomIdTokenizer(codebook_sizes=[8], levels=1).fit(X, items.drop("item_id"))


def test_random_id_usage_is_roughly_uniform():
    n, k = 4000, 8
    items = pl.DataFrame({"item_id": [f"poi-{j}" for j in range(n)]})
    codes = hashed_item_codes(items["item_id"], [k, k, 16], 0)
    for level, size in enumerate([k, k, 16]):
        counts = np.bincount(codes[:, level], minlength=size)
        expected = n / size
        assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 3 * size  # df = size - 1; a bias would blow this up
    # pairs of levels are close to independent too: (level 0, level 1) fills all 64 cells
    pairs = np.bincount(codes[:, 0] * k + codes[:, 1], minlength=k * k)
    assert pairs.min() > 0.5 * n / (k * k)


# --- dedup orders ------------------------------------------------------------------------------
def _grid_points(bits: int):
    n = 1 << bits
    x, y = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    x, y = x.ravel(), y.ravel()
    lon = (x + 0.5) / n * 360.0 - 180.0
    lat = (y + 0.5) / n * 180.0 - 90.0
    return x, y, lat, lon


def test_hilbert_index_is_a_bijection_with_neighbour_steps():
    x, y, lat, lon = _grid_points(3)
    d = hilbert_index(lat, lon, bits=3)
    assert d.dtype == np.int64
    assert sorted(d.tolist()) == list(range(64))
    order = np.argsort(d)
    steps = np.abs(np.diff(x[order])) + np.abs(np.diff(y[order]))
    assert (steps == 1).all()  # consecutive curve positions are grid neighbours
    # the default resolution keeps that locality on the map: a fine grid over one city
    x4, y4, lat4, lon4 = _grid_points(4)
    d4 = hilbert_index(lat4, lon4, bits=4)
    assert np.unique(d4).size == 256
    o = np.argsort(d4)
    assert ((np.abs(np.diff(x4[o])) + np.abs(np.diff(y4[o]))) == 1).all()


def test_spatial_order_gives_digit_zero_to_first_along_the_curve():
    rng = np.random.default_rng(0)
    n = 120
    codes = rng.integers(0, 4, (n, 2))
    lat = rng.uniform(30, 31, n)
    lon = rng.uniform(100, 101, n)
    lat[7] = np.nan  # no coordinates: sorts last in its bucket
    items = pl.DataFrame({"item_id": [f"i{j}" for j in range(n)], "lat": lat, "lon": lon})
    key = dedup_order_key(items, "spatial")
    h = hilbert_index(np.nan_to_num(lat), lon)
    assert np.isinf(key[7])
    sids = append_dedup_level(codes, key)
    assert np.unique(sids, axis=0).shape[0] == n
    buckets = codes[:, 0] * 4 + codes[:, 1]
    for b in np.unique(buckets):
        rows = np.flatnonzero(buckets == b)
        located = rows[np.isfinite(lat[rows])]
        want = located[np.argsort(h[located], kind="stable")]
        np.testing.assert_array_equal(sids[want, -1], np.arange(want.size))
        if 7 in rows:
            assert sids[7, -1] == rows.size - 1
    # unique_sids threads the key through, same digits
    u, info = unique_sids(codes, order_key=key)
    np.testing.assert_array_equal(u, sids)
    assert info["max_digit"] == int(sids[:, -1].max())


def test_popularity_order_gives_digit_zero_to_most_visited():
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [0, 0]])
    pop = np.array([3, 10, 3, 0, 7, 1])
    items = pl.DataFrame({"item_id": list("abcdef")})
    key = dedup_order_key(items, "popularity", popularity=pop)
    sids = append_dedup_level(codes, key)
    # bucket (0,0): rows 0,1,2,5 with visits 3,10,3,1 -> digits 1,0,2,3 (ties keep row order)
    np.testing.assert_array_equal(sids[:, -1], [1, 0, 2, 1, 0, 3])
    assert dedup_order_key(items, "item_id") is None
    np.testing.assert_array_equal(append_dedup_level(codes)[:, -1], [0, 1, 2, 0, 1, 3])


def test_popularity_digit_zero_is_bucket_head_on_random_data():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 5, (300, 2))
    pop = rng.permutation(300).astype(float)  # distinct visit counts
    sids, _ = unique_sids(codes, order_key=dedup_order_key(None, "popularity", popularity=pop))
    assert np.unique(sids, axis=0).shape[0] == 300
    df = pl.DataFrame({"a": codes[:, 0], "b": codes[:, 1], "pop": pop, "d": sids[:, -1]})
    heads = df.group_by("a", "b").agg(pl.col("d").sort_by("pop", descending=True).alias("ds"))
    for ds in heads["ds"].to_list():
        assert ds == list(range(len(ds)))


def test_dedup_order_errors_are_clear():
    items = pl.DataFrame({"item_id": ["a", "b"], "lat": [1.0, 2.0], "lon": [3.0, 4.0]})
    with pytest.raises(ValueError, match="unknown dedup order 'geo'"):
        dedup_order_key(items, "geo")
    with pytest.raises(ValueError, match="needs per-item visit counts"):
        dedup_order_key(items, "popularity")
    with pytest.raises(ValueError, match="popularity has 3 entries but items has 2 rows"):
        dedup_order_key(items, "popularity", popularity=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="needs the items' lat and lon"):
        dedup_order_key(items.drop("lon"), "spatial")
    with pytest.raises(ValueError, match="needs the items' lat and lon"):
        dedup_order_key(None, "spatial")
    with pytest.raises(ValueError, match="order_key must have one entry per row"):
        append_dedup_level(np.zeros((2, 2), dtype=int), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="order_key must have one entry per row"):
        unique_sids(np.zeros((2, 2), dtype=int), order_key=np.zeros((2, 1)))


# --- collision figures -------------------------------------------------------------------------
def test_collision_figures_hand_built():
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [2, 0]])
    sids = append_dedup_level(codes)
    prompts = ["a", "a", "b", "c", "c", "d"]
    f = collision_figures(codes, sids, prompts)
    assert f["collision_rate_before"] == pytest.approx(5 / 6)
    assert f["buckets"] == 3
    # per-item bucket sizes [3, 3, 3, 2, 2, 1]
    assert f["bucket_size_q50"] == pytest.approx(2.5)
    assert f["bucket_size_q90"] == pytest.approx(3.0)
    assert f["bucket_size_q99"] == pytest.approx(3.0)
    assert f["bucket_size_max"] == 3
    assert f["max_digit"] == 2
    assert f["identical_prompt_share"] == pytest.approx(4 / 6)
    # without sids / prompts those keys are absent; unique codes collide nowhere
    g = collision_figures(np.arange(5)[:, None])
    assert "max_digit" not in g and "identical_prompt_share" not in g
    assert g["collision_rate_before"] == 0.0 and g["bucket_size_max"] == 1 and g["buckets"] == 5
    with pytest.raises(ValueError, match="prompts has 2 entries but codes has 6 rows"):
        collision_figures(codes, prompts=["a", "b"])


# --- GNPR features -----------------------------------------------------------------------------
def _ts(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2021, 3, 1 + hour % 5, hour, minute)


def test_visit_hour_features_values():
    items = pl.DataFrame({"item_id": ["a", "b", "c"]})
    inter = pl.DataFrame({
        "user_id": ["u1", "u2", "u3", "u1", "u2"],
        "item_id": ["a", "a", "a", "c", "c"],
        "timestamp": pl.Series([_ts(6), _ts(6), _ts(6), _ts(0), _ts(12)]).dt.replace_time_zone("UTC"),
    })
    f = visit_hour_features(items, inter, harmonics=2)
    assert f.shape == (3, 4) and f.dtype == np.float32
    a = 2 * np.pi * 6 / 24
    np.testing.assert_allclose(f[0], [np.sin(a), np.cos(a), np.sin(2 * a), np.cos(2 * a)], atol=1e-6)
    np.testing.assert_array_equal(f[1], 0.0)  # never visited
    # c: visits at 00:00 and 12:00 -> the first harmonic cancels, the second is cos(0)=cos(2pi)=1
    np.testing.assert_allclose(f[2], [0.0, 0.0, 0.0, 1.0], atol=1e-6)
    # minutes count: 06:30 is h = 6.5
    half = pl.DataFrame({"item_id": ["b"], "timestamp": [dt.datetime(2021, 3, 1, 6, 30)]})
    np.testing.assert_allclose(visit_hour_features(items, half, 1)[1],
                               [np.sin(2 * np.pi * 6.5 / 24), np.cos(2 * np.pi * 6.5 / 24)], atol=1e-6)
    # no timestamps at all -> zeros
    np.testing.assert_array_equal(visit_hour_features(items, inter.drop("timestamp")), 0.0)
    np.testing.assert_array_equal(visit_hour_features(items, None), 0.0)


def test_gnpr_features_shape_and_no_nans(catalog):
    X, items = catalog
    n = items.height
    inter = pl.DataFrame({"item_id": items["item_id"][:50],
                          "timestamp": [dt.datetime(2021, 1, 1, 6)] * 50})
    f = gnpr_features(items, inter, cat_dim=8, hour_harmonics=2)
    assert f.shape == (n, 8 + 3 + 4) and f.dtype == np.float32
    assert np.isfinite(f).all()
    # each block has unit mean square (over items)
    for block in (f[:, :8], f[:, 8:11], f[:, 11:]):
        assert float((block.astype(np.float64) ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-4)
    # the hour block of an item visited only at 06:00 is proportional to the sin/cos of 2 pi 6/24
    a = 2 * np.pi * 6 / 24
    raw = np.array([np.sin(a), np.cos(a), np.sin(2 * a), np.cos(2 * a)])
    np.testing.assert_allclose(f[0, 11:] / np.linalg.norm(f[0, 11:]), raw / np.linalg.norm(raw), atol=1e-5)
    np.testing.assert_array_equal(f[60, 11:], 0.0)  # unvisited
    # without timestamps, categories or coordinates: still finite, the empty blocks are zeros
    bare = items.select("item_id", pl.lit(None, dtype=pl.Float64).alias("lat"), pl.lit(None, dtype=pl.Float64).alias("lon"))
    g = gnpr_features(bare, None, cat_dim=4, hour_harmonics=3)
    assert g.shape == (n, 4 + 3 + 6)
    assert np.isfinite(g).all() and not g.any()
    h = gnpr_features(items.drop("cat1", "cat2"), inter.drop("timestamp"))
    assert np.isfinite(h).all() and not h[:, :8].any() and not h[:, 11:].any() and h[:, 8:11].any()
    with pytest.raises(ValueError, match="empty"):
        gnpr_features(items[:0])


# --- default codebook sizes ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 8, 63, 64, 65, 72, 100, 1000, 2040, 2041, 2048, 2049, 5317, 10**7])
@pytest.mark.parametrize("levels", [1, 3])
def test_default_codebook_sizes_follow_clip_ceil_rule(n, levels):
    want = int(np.clip(math.ceil(n / 8), 8, 256))
    assert default_codebook_sizes(n, levels) == [want] * levels


def test_default_codebook_sizes_boundaries_and_errors():
    assert default_codebook_sizes(64)[0] == 8 and default_codebook_sizes(65)[0] == 9
    assert default_codebook_sizes(2040)[0] == 255 and default_codebook_sizes(2041)[0] == 256
    with pytest.raises(ValueError, match="levels"):
        default_codebook_sizes(100, 0)
    with pytest.raises(ValueError, match="n_items"):
        default_codebook_sizes(-3)


# --- planted case: a geographic last level beats id-order digits ----------------------------------
N_AREAS, PER_AREA = 8, 30


def _planted_world(seed: int, n_users: int = 300, seq_len: int = 8, d: int = 16):
    """240 items in 8 well-separated areas, rows in random area order; embeddings independent
    of location; each user walks inside one area (each step a random other item of it)."""
    rng = np.random.default_rng(seed)
    n = N_AREAS * PER_AREA
    area = rng.permutation(np.repeat(np.arange(N_AREAS), PER_AREA))
    items = pl.DataFrame({
        "item_id": [f"i{j:03d}" for j in range(n)],
        "province": [f"P{a // 4}" for a in area],
        "city": [f"A{a}" for a in area],
        "lat": 30 + 2.0 * (area % 4) + rng.normal(0, 0.01, n),
        "lon": 100 + 2.0 * (area // 4) + rng.normal(0, 0.01, n),
    })
    X = rng.normal(0, 1, (n, d)).astype(np.float32)
    members = [np.flatnonzero(area == a) for a in range(N_AREAS)]
    ids = items["item_id"].to_list()
    rows = []
    for u in range(n_users):
        m = members[rng.integers(N_AREAS)]
        cur = int(rng.choice(m))
        for t in range(seq_len):
            rows.append((f"u{u:03d}", ids[cur], t))
            cur = int(rng.choice(m[m != cur]))
    inter = pl.DataFrame(rows, schema=["user_id", "item_id", "seq_idx"], orient="row")
    return X, items, area, inter


def _rank_within(prefix: np.ndarray) -> np.ndarray:
    return pl.DataFrame({"p": prefix}).select(pl.int_range(pl.len()).over("p").alias("r"))["r"].to_numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_geo_last_level_beats_id_order_digits(seed):
    X, items, area, inter = _planted_world(seed)
    tok = HGITGeoLastTokenizer(codebook_sizes=[4, N_AREAS], levels=2, seed=0).fit(X, items)
    codes = tok.transform(X, items)
    # the geographic level recovers the areas exactly (one code per area)
    pairs = pl.DataFrame({"g": codes[:, 1], "a": area})
    assert pairs.n_unique() == N_AREAS and pairs["g"].n_unique() == N_AREAS
    # the content level carries no geography: every content prefix mixes many areas
    assert min(np.unique(area[codes[:, 0] == c]).size for c in range(4)) >= 6

    # (a) content code, area, dedup digit
    sids_geo = append_dedup_level(codes)
    # (b) same content code, then an id-order group of 8 and a dedup digit: same length, same
    #     bucket scale, but the middle token is an arbitrary rank instead of a place
    id_mid = _rank_within(codes[:, 0]) // 8
    sids_id = append_dedup_level(np.stack([codes[:, 0], id_mid], 1))
    assert sids_geo.shape == sids_id.shape == (X.shape[0], 3)
    for s in (sids_geo, sids_id):
        assert np.unique(s, axis=0).shape[0] == X.shape[0]

    split = next_item_split(inter, min_core=0)
    assert split.n_items == X.shape[0]
    ids = items["item_id"].to_list()
    cfg = TigerConfig(d_model=32, ff_dim=64, enc_layers=1, dec_layers=1, heads=2, beams=11, k=10, max_steps=150,
                      epochs=1000, patience=1000, batch_size=64, seed=0, max_history=8, dropout=0.0, lr=3e-3)
    hit = {}
    for name, sids in (("geo", sids_geo), ("id", sids_id)):
        res = train_and_evaluate_tiger(split, dict(zip(ids, sids.tolist())), cfg)
        hit[name] = res.metrics["valid_hit@10"]
    # chance is about 10 / 239; staying in the area is worth about 10 / 29
    assert hit["geo"] > 0.2, hit
    assert hit["geo"] - hit["id"] > 0.12, hit
