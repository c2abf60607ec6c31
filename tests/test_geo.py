import numpy as np
import pytest

from lgsid_pipeline.geo import (
    EARTH_RADIUS_KM,
    GeoIndex,
    chord_to_km,
    haversine_km,
    km_to_chord,
    unit_vectors,
)


def _points(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[40.7, -74.0], [34.05, -118.25], [51.5, -0.1]])
    c = centres[rng.integers(0, 3, n)]
    return c[:, 0] + rng.normal(0, 0.2, n), c[:, 1] + rng.normal(0, 0.2, n)


def test_haversine_known_values():
    # One degree of latitude is R * pi / 180 km.
    assert haversine_km(0, 0, 1, 0) == pytest.approx(EARTH_RADIUS_KM * np.pi / 180)
    # Antipodes: half the circumference.
    assert haversine_km(0, 0, 0, 180) == pytest.approx(EARTH_RADIUS_KM * np.pi)
    # NYC - LA is about 3940 km.
    assert 3900 < float(haversine_km(40.7128, -74.006, 34.0522, -118.2437)) < 3990
    # Broadcasting and symmetry.
    lat, lon = _points(50)
    d = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    assert d.shape == (50, 50)
    np.testing.assert_allclose(d, d.T, atol=1e-9)
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-9)


def test_unit_vectors_and_chord_roundtrip():
    lat, lon = _points(200)
    v = unit_vectors(lat, lon)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    km = haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:])
    chord = np.linalg.norm(v[:-1] - v[1:], axis=1)
    np.testing.assert_allclose(chord_to_km(chord), km, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(km_to_chord(km), chord, rtol=1e-9, atol=1e-12)


def test_geo_index_matches_brute_force():
    lat, lon = _points(300, seed=1)
    qlat, qlon = _points(40, seed=2)
    index = GeoIndex(lat, lon)
    dist, idx = index.query(qlat, qlon, k=7)
    assert dist.shape == (40, 7) and idx.shape == (40, 7)
    brute = haversine_km(qlat[:, None], qlon[:, None], lat[None, :], lon[None, :])
    order = np.argsort(brute, axis=1)[:, :7]
    np.testing.assert_allclose(dist, np.take_along_axis(brute, order, 1), rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(brute, idx, 1), dist, rtol=1e-7, atol=1e-6)
    assert (np.diff(dist, axis=1) >= -1e-9).all()


def test_geo_index_k_larger_than_n_and_radius():
    lat, lon = _points(5)
    index = GeoIndex(lat, lon)
    dist, idx = index.query(lat[:2], lon[:2], k=10)
    assert dist.shape == (2, 5)
    assert sorted(idx[0].tolist()) == list(range(5))
    big_lat, big_lon = _points(200, seed=3)
    index = GeoIndex(big_lat, big_lon)
    hits = index.query_radius(big_lat[:10], big_lon[:10], 15.0)
    brute = haversine_km(big_lat[:10, None], big_lon[:10, None], big_lat, big_lon)
    for i in range(10):
        assert hits[i].tolist() == np.flatnonzero(brute[i] <= 15.0).tolist()


@pytest.mark.parametrize(
    "lat,lon,msg",
    [([10.0, 95.0], [0.0, 0.0], "row 1"), ([10.0, np.nan], [0, 0], "lat"),
     ([0.0], [181.0], "lon")],
)
def test_bad_coordinates_raise(lat, lon, msg):
    with pytest.raises(ValueError, match=msg):
        GeoIndex(lat, lon)


def test_the_coordinate_range_rule_is_the_same_on_numpy_and_polars():
    import polars as pl

    from lgsid_pipeline.geo import lat_out_of_range, out_of_range

    lat = [0.0, 90.0, -90.0, 90.0001, -91.0, 45.0, 45.0]
    lon = [0.0, 180.0, -180.0, 0.0, 0.0, 180.5, -200.0]
    want = [False, False, False, True, True, True, True]
    assert out_of_range(np.array(lat), np.array(lon)).tolist() == want
    df = pl.DataFrame({"lat": lat, "lon": lon})
    assert df.select(out_of_range(pl.col("lat"), pl.col("lon")))["lat"].to_list() == want
    assert lat_out_of_range(df["lat"]).to_list() == [False, False, False, True, True, False, False]
