"""City geography in a local km frame: town weights and spreads, compass-sector districts,
item placement around towns, and the split of items over cities."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lgsid_pipeline.world.config import WorldConfig
from lgsid_pipeline.world.gazetteer import city_spec, nearby_towns

_KM_PER_DEG = math.pi * 6371.0088 / 180.0

# Compass sectors (counter-clockwise from east, 45 degrees each).
_COMPASS = ("East", "Northeast", "North", "Northwest", "West", "Southwest", "South", "Southeast")


@dataclass(frozen=True)
class _CityGeo:
    key: str
    name: str
    state: str
    lat0: float
    lon0: float
    coslat: float
    town_names: np.ndarray  # object
    town_xy: np.ndarray  # (T, 2) km
    town_weight: np.ndarray  # (T,) sums to 1
    town_sigma: np.ndarray  # (T,) km
    core_km: float
    sector_district: tuple[str, ...]  # district label per compass sector

    def to_latlon(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lat = self.lat0 + xy[:, 1] / _KM_PER_DEG
        lon = self.lon0 + xy[:, 0] / (self.coslat * _KM_PER_DEG)
        return lat, lon



def _sector(xy: np.ndarray) -> np.ndarray:
    ang = np.arctan2(xy[:, 1], xy[:, 0])
    return (np.floor((ang + np.pi / 8) / (np.pi / 4)).astype(np.int64)) % 8


def _city_geo(key: str, cfg: WorldConfig) -> _CityGeo:
    spec = city_spec(key)
    towns = nearby_towns(key, float(cfg.town_radius_km), int(cfg.max_towns))
    coslat = math.cos(math.radians(spec.lat))
    lat = np.array([t.lat for t in towns])
    lon = np.array([t.lon for t in towns])
    pop = np.array([t.population for t in towns], dtype=np.float64)
    dist = np.array([t.distance_km for t in towns])
    xy = np.stack([(lon - spec.lon) * coslat * _KM_PER_DEG, (lat - spec.lat) * _KM_PER_DEG], 1)
    # Dense centre, sparse suburbs: weight falls with distance, spread grows with it.
    weight = pop**0.6 * np.exp(-dist / 12.0)
    sigma = 0.6 + 0.08 * dist + 0.25 * np.sqrt(pop / 1e4)
    sigma[0] = min(1.0 + 1.2 * math.sqrt(spec.population / 1e5), 7.0)
    core_km = max(2.0, 0.6 * sigma[0])
    sec = _sector(xy)
    labels = []
    for s in range(8):
        members = [i for i in range(1, len(towns)) if sec[i] == s]
        if members:
            best = max(members, key=lambda i: (pop[i], -i))
            labels.append(f"{towns[best].name} District")
        else:
            labels.append(f"{_COMPASS[s]} {spec.name}")
    return _CityGeo(
        key=key, name=spec.name, state=spec.state, lat0=spec.lat, lon0=spec.lon, coslat=coslat,
        town_names=np.array([t.name for t in towns], dtype=object), town_xy=xy,
        town_weight=weight / weight.sum(), town_sigma=sigma, core_km=core_km,
        sector_district=tuple(labels),
    )


def _place(geo: _CityGeo, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` item positions (km, city frame) clustered around the city's towns."""
    t = rng.choice(len(geo.town_weight), size=n, p=geo.town_weight)
    return geo.town_xy[t] + rng.standard_normal((n, 2)) * geo.town_sigma[t, None]


def _split_counts(total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder split of ``total`` by ``weights`` (every part >= 1 when possible)."""
    w = np.asarray(weights, dtype=np.float64)
    raw = total * w / w.sum()
    counts = np.floor(raw).astype(np.int64)
    rest = total - counts.sum()
    order = np.lexsort((np.arange(len(w)), -(raw - counts)))
    counts[order[:rest]] += 1
    if total >= len(w):
        while (counts == 0).any():
            counts[np.argmax(counts)] -= 1
            counts[np.flatnonzero(counts == 0)[0]] += 1
    return counts
