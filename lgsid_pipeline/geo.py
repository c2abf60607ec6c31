"""Great-circle geometry and a KD-tree index over item coordinates.

Points are stored as 3-D unit vectors, so a plain Euclidean KD-tree (``scipy.spatial.cKDTree``)
answers great-circle nearest-neighbour queries exactly: the chord length ``c`` between two unit
vectors and the central angle ``theta`` are related by ``c = 2 sin(theta / 2)``, a monotone map,
so the k nearest by chord are the k nearest by haversine distance. ``GeoIndex`` converts the
chords back to kilometres, which equals the haversine distance up to float rounding.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), the usual constant for haversine distances."""
LAT_LIMIT, LON_LIMIT = 90.0, 180.0  # |lat| <= 90, |lon| <= 180 (degrees)


# The one coordinate-range rule. Each takes numpy arrays or polars expressions / Series alike
# (``abs`` and ``>`` mean the same on both), so the catalog's quarantine rules, the asset check,
# HGIT's features and validate_lat_lon below all use it. A NaN is not out of range for numpy and
# is for polars (NaN sorts above every number there); every caller tests finiteness itself.
def lat_out_of_range(lat):
    return abs(lat) > LAT_LIMIT


def lon_out_of_range(lon):
    return abs(lon) > LON_LIMIT


def out_of_range(lat, lon):
    """True where ``lat`` is outside [-90, 90] or ``lon`` outside [-180, 180]."""
    return lat_out_of_range(lat) | lon_out_of_range(lon)


def _as_float_array(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    return arr


def validate_lat_lon(lat: object, lon: object) -> tuple[np.ndarray, np.ndarray]:
    """Return ``lat``/``lon`` as float arrays; ``ValueError`` naming the first bad row."""
    lat_a = _as_float_array(lat, "lat")
    lon_a = _as_float_array(lon, "lon")
    if lat_a.shape != lon_a.shape:
        raise ValueError(f"lat has shape {lat_a.shape} but lon has shape {lon_a.shape}")
    bad = ~np.isfinite(lat_a) | lat_out_of_range(lat_a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"lat must be finite and within [-90, 90]; row {i} has lat={lat_a[i]!r}")
    bad = ~np.isfinite(lon_a) | lon_out_of_range(lon_a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"lon must be finite and within [-180, 180]; row {i} has lon={lon_a[i]!r}"
        )
    return lat_a, lon_a


def haversine_km(lat1: object, lon1: object, lat2: object, lon2: object) -> np.ndarray:
    """Great-circle distance in km between (lat1, lon1) and (lat2, lon2), in degrees.

    Broadcasts like numpy arithmetic.
    """
    p1 = np.radians(np.asarray(lat1, dtype=np.float64))
    p2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dp / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def unit_vectors(lat: object, lon: object) -> np.ndarray:
    """(N, 3) unit vectors on the sphere for latitudes / longitudes in degrees."""
    phi = np.radians(np.asarray(lat, dtype=np.float64)).reshape(-1)
    lam = np.radians(np.asarray(lon, dtype=np.float64)).reshape(-1)
    cos_phi = np.cos(phi)
    return np.stack([cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)], axis=1)


def chord_to_km(chord: object) -> np.ndarray:
    """Chord length between unit vectors -> great-circle distance in km."""
    c = np.clip(np.asarray(chord, dtype=np.float64), 0.0, 2.0)
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(c / 2.0)


def km_to_chord(km: object) -> np.ndarray:
    """Great-circle distance in km -> chord length between unit vectors."""
    theta = np.clip(np.asarray(km, dtype=np.float64) / EARTH_RADIUS_KM, 0.0, np.pi)
    return 2.0 * np.sin(theta / 2.0)


def tangent_basis(lat: object, lon: object) -> tuple[np.ndarray, np.ndarray]:
    """Local (east, north) unit vectors, each (N, 3), at the given points."""
    phi = np.radians(np.asarray(lat, dtype=np.float64)).reshape(-1)
    lam = np.radians(np.asarray(lon, dtype=np.float64)).reshape(-1)
    east = np.stack([-np.sin(lam), np.cos(lam), np.zeros_like(lam)], axis=1)
    north = np.stack(
        [-np.sin(phi) * np.cos(lam), -np.sin(phi) * np.sin(lam), np.cos(phi)], axis=1
    )
    return east, north


def destination_vectors(
    origin: np.ndarray, east: np.ndarray, north: np.ndarray, bearing: np.ndarray, km: np.ndarray
) -> np.ndarray:
    """Unit vectors at great-circle distance ``km`` from ``origin`` along ``bearing`` (radians,
    clockwise from north). All inputs broadcast row-wise; returns (N, 3)."""
    delta = (np.asarray(km, dtype=np.float64) / EARTH_RADIUS_KM)[:, None]
    b = np.asarray(bearing, dtype=np.float64)[:, None]
    direction = np.cos(b) * north + np.sin(b) * east
    return np.cos(delta) * origin + np.sin(delta) * direction


class GeoIndex:
    """Exact great-circle nearest-neighbour search over a fixed set of points.

    ``GeoIndex(lat, lon).query(qlat, qlon, k)`` returns ``(dist_km, idx)``, both ``(M, k')`` with
    ``k' = min(k, n_points)``, rows sorted by distance. Indices refer to the order of the
    ``lat``/``lon`` arrays given at construction.
    """

    def __init__(self, lat: object, lon: object, *, leafsize: int = 32) -> None:
        self.lat, self.lon = validate_lat_lon(lat, lon)
        self.vectors = unit_vectors(self.lat, self.lon)
        self.n = int(self.vectors.shape[0])
        self.tree = cKDTree(self.vectors, leafsize=leafsize, balanced_tree=False)

    def __len__(self) -> int:
        return self.n

    def query_vectors(
        self, vectors: np.ndarray, k: int, *, workers: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest points to arbitrary unit vectors (M, 3); see :meth:`query`."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
        k_eff = min(int(k), self.n)
        if k_eff == 0 or vectors.shape[0] == 0:
            return np.zeros((vectors.shape[0], 0)), np.zeros((vectors.shape[0], 0), np.int64)
        chord, idx = self.tree.query(vectors, k=k_eff, workers=workers)
        chord = np.asarray(chord).reshape(vectors.shape[0], k_eff)
        idx = np.asarray(idx, dtype=np.int64).reshape(vectors.shape[0], k_eff)
        return chord_to_km(chord), idx

    def query(
        self, lat: object, lon: object, k: int, *, workers: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed points to each query point (great-circle km, index)."""
        qlat, qlon = validate_lat_lon(lat, lon)
        return self.query_vectors(unit_vectors(qlat, qlon), k, workers=workers)

    def query_radius(
        self, lat: object, lon: object, r_km: object, *, workers: int = -1
    ) -> list[np.ndarray]:
        """Indices of indexed points within ``r_km`` (scalar or per query) of each query point.

        Each list entry is sorted by index. Cost grows with the number of points returned, so
        keep radii local.
        """
        qlat, qlon = validate_lat_lon(lat, lon)
        r = np.broadcast_to(km_to_chord(r_km), qlat.shape)
        # A hair of slack so points exactly on the radius are kept despite float rounding.
        hits = self.tree.query_ball_point(
            unit_vectors(qlat, qlon), r * (1 + 1e-12) + 1e-15, workers=workers
        )
        return [np.asarray(sorted(h), dtype=np.int64) for h in hits]


def plot_item_map(lat: np.ndarray, lon: np.ndarray, groups: list | None, path, title: str = "items",
                  max_groups: int = 8):
    """A small scatter map of items (equirectangular, scaled by cos(lat) so distances look
    right), coloured by ``groups`` (e.g. cat1; the ``max_groups`` most common, the rest grey).
    matplotlib Agg; returns ``path``."""
    from lgsid_pipeline.plotting import pyplot, save

    plt = pyplot()

    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=90)
    if groups is None:
        ax.scatter(lon, lat, s=6, alpha=0.7)
    else:
        labels = np.asarray(["(none)" if g is None else str(g) for g in groups], dtype=object)
        names, counts = np.unique(labels, return_counts=True)
        top = names[np.argsort(-counts, kind="stable")][:max_groups]
        rest = ~np.isin(labels, top)
        if rest.any():
            ax.scatter(lon[rest], lat[rest], s=5, c="lightgrey", label="other")
        for name in top:
            m = labels == name
            ax.scatter(lon[m], lat[m], s=6, alpha=0.8, label=f"{name} ({int(m.sum())})")
        # a fixed corner: loc="best" searches every placement and costs more than the plot
        ax.legend(fontsize=6, loc="upper left", markerscale=1.5, framealpha=0.7)
    if lat.size:
        ax.set_aspect(1.0 / max(np.cos(np.radians(np.nanmedian(lat))), 0.1))
    ax.set_xlabel("lon")
    ax.set_ylabel("lat")
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.11, top=0.93)  # fixed margins (tight_layout is slow)
    save(fig, path, tight=False)
    return path
