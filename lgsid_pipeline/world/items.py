"""Item generation: chains and their outlets, category leaves, prices, menus, popularity,
locations and admin labels, assembled into the ``ITEM_SCHEMA`` frame and the ``_ItemState``
the behaviour model reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy.spatial import cKDTree

from lgsid_pipeline import schema
from lgsid_pipeline.world.categories import LEAVES
from lgsid_pipeline.world.config import WorldConfig
from lgsid_pipeline.world.gazetteer import CITIES
from lgsid_pipeline.world.geography import _CityGeo, _city_geo, _place, _sector, _split_counts
from lgsid_pipeline.world.spatial import _GROUP_GAP_KM, _GridIndex
from lgsid_pipeline.world.vocab import _Tree, _brand_names, _item_names, _join_goods, _pick_goods, _tree, _utf8


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


@dataclass
class _Chains:
    """Per-brand attributes (index = brand id) and the brand of every item (-1: independent)."""

    item_brand: np.ndarray
    leaf: np.ndarray
    price: np.ndarray
    goods: np.ndarray
    top: np.ndarray
    names: np.ndarray
    boost: np.ndarray


@dataclass
class _Offers:
    """Per item: category leaf, price, menu (goods vocab indices and top-seller count),
    log-popularity and brand (-1 for independents); ``chains`` is None when there are none."""

    leaf: np.ndarray
    price: np.ndarray
    goods_idx: np.ndarray
    n_top: np.ndarray
    logpop: np.ndarray
    brand: np.ndarray
    n_brands: int
    chains: _Chains | None


def _assign_outlets(n_brands: int, city: np.ndarray, n_cities: int, is_chain: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """The brand of each chain item (-1 elsewhere): Zipf-sized brands, big ones national, the
    others concentrated on one or two home cities."""
    brand = np.full(len(city), -1, dtype=np.int64)
    b_size = 1.0 / np.arange(1, n_brands + 1) ** 0.8
    b_size = b_size[rng.permutation(n_brands)]
    # Big chains are national; the others concentrate on one or two home cities.
    national = b_size >= np.quantile(b_size, 0.8)
    affinity = np.full((n_brands, n_cities), 0.05)
    affinity[national] = 1.0
    homes = rng.integers(0, n_cities, size=(n_brands, 2))
    affinity[np.arange(n_brands), homes[:, 0]] = 1.0
    affinity[np.arange(n_brands), homes[:, 1]] = np.maximum(affinity[np.arange(n_brands), homes[:, 1]], 0.5)
    for c in range(n_cities):  # per-city loop
        rows = np.flatnonzero(is_chain & (city == c))
        p = b_size * affinity[:, c]
        brand[rows] = rng.choice(n_brands, size=len(rows), p=p / p.sum())
    return brand


def _draw_chains(n_brands: int, tree: _Tree, city: np.ndarray, n_cities: int, is_chain: np.ndarray,
                 rng: np.random.Generator) -> _Chains:
    """The chains: one leaf, price, menu, name and popularity boost each, and their outlets."""
    b_leaf = rng.choice(len(LEAVES), size=n_brands, p=tree.chain_weight)
    item_brand = _assign_outlets(n_brands, city, n_cities, is_chain, rng)
    b_price = tree.price[b_leaf] * np.exp(0.3 * rng.standard_normal(n_brands))
    b_goods, b_top = _pick_goods(b_leaf, tree, rng)
    b_names = _brand_names(n_brands, b_leaf, tree, rng)
    b_boost = 0.4 + 0.3 * rng.standard_normal(n_brands)
    return _Chains(item_brand, b_leaf, b_price, b_goods, b_top, b_names, b_boost)


def _draw_offers(cfg: WorldConfig, tree: _Tree, city: np.ndarray, n_cities: int) -> _Offers:
    """Leaves, prices, menus and popularity of all items; chain outlets share their chain's
    leaf, price level and menu (Zipf-sized brands, outlets across cities)."""
    n = cfg.n_items
    rng_b = np.random.default_rng([cfg.seed, 1])
    is_chain = rng_b.random(n) < cfg.chain_share
    n_chain = int(is_chain.sum())
    n_brands = max(1, int(round(n_chain / cfg.items_per_brand))) if n_chain else 0
    brand = np.full(n, -1, dtype=np.int64)
    leaf = rng_b.choice(len(LEAVES), size=n, p=tree.weight)
    price = tree.price[leaf] * np.exp(0.35 * rng_b.standard_normal(n))
    chains = None
    if n_brands:
        chains = _draw_chains(n_brands, tree, city, n_cities, is_chain, rng_b)
        brand = chains.item_brand
        chain_rows = np.flatnonzero(brand >= 0)
        leaf[chain_rows] = chains.leaf[brand[chain_rows]]
        price[chain_rows] = chains.price[brand[chain_rows]] * np.exp(0.05 * rng_b.standard_normal(len(chain_rows)))
    price = np.maximum(1.0, np.round(price * 2.0) / 2.0)
    goods_idx, n_top = _pick_goods(leaf, tree, rng_b)
    if chains is not None:
        goods_idx[chain_rows] = chains.goods[brand[chain_rows]]
        n_top[chain_rows] = chains.top[brand[chain_rows]]
    logpop = cfg.popularity_sigma * rng_b.standard_normal(n)
    if chains is not None:
        logpop[chain_rows] += chains.boost[brand[chain_rows]]
    return _Offers(leaf, price, goods_idx, n_top, logpop, brand, n_brands, chains)


def _locate_items(cfg: WorldConfig, geos: list[_CityGeo], city: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per city: item positions (km frame, lat, lon), nearest town and district label."""
    n = len(city)
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
    return xy, lat, lon, town, district


def _item_ids(n: int) -> pl.Series:
    """``it000000``-style ids, zero-padded to the width of the largest."""
    width = max(6, len(str(n - 1)))
    item_ids = pl.Series("item_id", np.arange(n)).cast(pl.Utf8).str.zfill(width)
    return ("it" + item_ids).alias("item_id")


def _generate_items(cfg: WorldConfig) -> tuple[pl.DataFrame, _ItemState, list[_CityGeo]]:
    """The items frame, the behaviour model's view of it and the city geographies."""
    tree = _tree()
    geos = [_city_geo(k, cfg) for k in cfg.cities]
    n_cities = len(geos)
    pops = np.array([CITIES[k].population for k in cfg.cities], dtype=np.float64)
    counts = _split_counts(cfg.n_items, np.sqrt(pops))
    city = np.repeat(np.arange(n_cities), counts)

    offers = _draw_offers(cfg, tree, city, n_cities)
    leaf = offers.leaf
    xy, lat, lon, town, district = _locate_items(cfg, geos, city)
    names, brand_col = _item_names(cfg.seed, tree, leaf, town, offers.brand,
                                   offers.chains.names if offers.chains is not None else None)
    goods, top = _join_goods(offers.goods_idx, offers.n_top, tree.goods_vocab)

    item_ids = _item_ids(cfg.n_items)
    items = pl.DataFrame({
        "item_id": item_ids,
        "name": names,
        "cat1": _utf8(tree.cat1[leaf]),
        "cat2": _utf8(tree.cat2[leaf]),
        "cat3": _utf8(tree.cat3[leaf]),
        # Chain outlets name their chain; an independent shop is its own brand.
        "brand": brand_col,
        "price": offers.price,
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
        city=city, xy=xy, cat2=tree.leaf_cat2[leaf], brand=offers.brand, logpop=offers.logpop,
        n_cat2=len(tree.cat2_names), n_brands=offers.n_brands, cell_km=cfg.cell_km,
        browse_cell_km=cfg.browse_cell_km,
        city_items=[np.flatnonzero(city == c) for c in range(n_cities)], item_ids=item_ids,
    )
    return items, state, geos
