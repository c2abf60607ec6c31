"""The synthetic local-life world: determinism, schema, geography and behavioural signals."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from lgsid_pipeline import schema
from lgsid_pipeline.world.gazetteer import CITIES, CITY_CATALOG, CONFUSABLE_GROUPS, haversine_km, nearby_towns
from lgsid_pipeline.world.generator import (
    PRESETS,
    WorldConfig,
    generate_world,
    resolve_config,
    stream_world,
    world_statistics,
)
from lgsid_pipeline.world.categories import LEAVES


@pytest.fixture(scope="module")
def test_world():
    return generate_world("test")


@pytest.fixture(scope="module")
def demo_world():
    return generate_world("demo")


@pytest.fixture(scope="module")
def demo_stats(demo_world):
    return world_statistics(demo_world)


def _city_key_of(items: pl.DataFrame) -> np.ndarray:
    lookup = {(c.name, c.state): k for k, c in CITIES.items()}
    return np.array([lookup[(c, p)] for c, p in zip(items["city"].to_list(), items["province"].to_list())])


# ------------------------------------------------------------------ determinism and schema


def test_same_config_and_seed_give_identical_frames(test_world):
    again = generate_world("test")
    assert again.items.equals(test_world.items)
    assert again.interactions.equals(test_world.interactions)
    assert again.users.equals(test_world.users)


def test_different_seeds_give_different_worlds(test_world):
    other = generate_world("test", seed=1)
    assert other.config.seed == 1 and test_world.config.seed == 0
    assert not np.allclose(other.items["lat"].to_numpy(), test_world.items["lat"].to_numpy())
    assert not other.interactions.equals(test_world.interactions)


def test_items_follow_the_item_schema(test_world):
    items = test_world.items
    assert dict(items.schema) == schema.ITEM_SCHEMA
    for col in schema.ITEM_COLUMNS:
        if col != "district":
            assert items[col].null_count() == 0, col
            if items[col].dtype == pl.Utf8:
                assert (items[col].str.strip_chars() != "").all(), col
    assert 0 < items["district"].null_count() < 0.1 * items.height


def test_interactions_follow_the_interaction_schema(test_world):
    inter = test_world.interactions
    assert dict(inter.schema) == schema.INTERACTION_SCHEMA
    assert inter["split"].null_count() == inter.height
    assert inter.select(pl.col("user_id", "item_id", "timestamp", "seq_idx").null_count()).sum_horizontal().item() == 0
    assert set(inter["item_id"].unique()) <= set(test_world.items["item_id"])


def test_item_ids_are_unique_and_well_formed(test_world):
    ids = test_world.items["item_id"]
    assert ids.n_unique() == test_world.items.height
    assert ids.str.contains(r"^it\d{6,}$").all()


# ------------------------------------------------------------------ geography


def test_city_catalog_comes_from_the_gazetteer():
    for key in ("springfield-il", "springfield-ma", "springfield-mo", "portland-or", "portland-me",
                "kansas-city-mo", "kansas-city-ks", "new-york", "chicago", "los-angeles", "houston",
                "phoenix", "seattle"):
        name, state, lat, lon = CITY_CATALOG[key]
        assert -90 < lat < 90 and -180 < lon < 180
    assert CITY_CATALOG["springfield-il"][:2] == ("Springfield", "Illinois")
    assert CITY_CATALOG["portland-me"][:2] == ("Portland", "Maine")
    # GeoNames coordinates, not hand-typed: Springfield IL is at 39.80 N, 89.64 W.
    assert abs(CITY_CATALOG["springfield-il"][2] - 39.80) < 0.05
    assert abs(CITY_CATALOG["springfield-il"][3] + 89.64) < 0.05


def test_confusable_cities_share_a_name_but_not_a_state():
    for group in CONFUSABLE_GROUPS:
        names = {CITY_CATALOG[k][0] for k in group}
        states = {CITY_CATALOG[k][1] for k in group}
        assert len(names) == 1 and len(states) == len(group)
    il, ma = CITY_CATALOG["springfield-il"], CITY_CATALOG["springfield-ma"]
    assert haversine_km(il[2], il[3], ma[2], ma[3]) > 1000
    pdx, pwm = CITY_CATALOG["portland-or"], CITY_CATALOG["portland-me"]
    assert haversine_km(pdx[2], pdx[3], pwm[2], pwm[3]) > 4000


def test_confusable_cities_in_a_world_are_far_apart(test_world):
    spring = test_world.items.filter(pl.col("city") == "Springfield")
    assert set(spring["province"]) == {"Illinois", "Massachusetts"}
    centres = spring.group_by("province").agg(pl.col("lat").mean(), pl.col("lon").mean()).sort("province")
    d = haversine_km(centres["lat"][0], centres["lon"][0], centres["lat"][1], centres["lon"][1])
    assert d > 1000


def test_items_lie_near_their_city_and_town(test_world):
    items = test_world.items
    keys = _city_key_of(items)
    lat0 = np.array([CITY_CATALOG[k][2] for k in keys])
    lon0 = np.array([CITY_CATALOG[k][3] for k in keys])
    d = haversine_km(items["lat"].to_numpy(), items["lon"].to_numpy(), lat0, lon0)
    assert d.max() < 60
    for key, town in zip(keys, items["town"].to_list()):
        assert town in {t.name for t in nearby_towns(key)}


def test_largest_us_cities_are_real_populous_and_apart():
    from lgsid_pipeline.world.gazetteer import CITIES, LARGEST_CITIES_MIN_SEPARATION_KM, largest_us_cities

    keys = largest_us_cities(150)
    assert len(keys) == len(set(keys)) == 150
    # the named catalog keeps its keys; others are <name>-<state code>
    assert keys[:5] == ("new-york", "los-angeles", "chicago", "houston", "phoenix")
    assert "san-antonio-tx" in keys and CITIES["san-antonio-tx"].state == "Texas"
    pops = [CITIES[k].population for k in keys]
    assert pops == sorted(pops, reverse=True)
    # boroughs are parts of New York City, not cities of their own
    assert not {"brooklyn-ny", "queens-ny", "manhattan-ny", "the-bronx-ny"} & set(keys)
    assert "brooklyn-ny" in CITIES  # ...but they stay known places
    lat = np.array([CITIES[k].lat for k in keys])
    lon = np.array([CITIES[k].lon for k in keys])
    d = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    np.fill_diagonal(d, np.inf)
    assert d.min() >= LARGEST_CITIES_MIN_SEPARATION_KM
    assert largest_us_cities(3) == keys[:3]
    with pytest.raises(ValueError, match="largest_us_cities"):
        largest_us_cities(0)
    # an unknown key's error names the catalogue and the rule, not 3,000 keys
    with pytest.raises(ValueError, match="san-antonio-tx") as err:
        WorldConfig(n_items=10, n_users=5, mean_history=3.0, cities=("atlantis",))
    assert len(str(err.value)) < 600


def test_towns_are_real_places_within_the_radius():
    towns = nearby_towns("springfield-il")
    assert towns[0].name == "Springfield" and towns[0].distance_km == 0
    assert {"Chatham", "Rochester", "Sherman"} <= {t.name for t in towns}
    assert all(t.distance_km <= 35 for t in towns)


def test_centre_is_denser_than_the_suburbs():
    cfg = WorldConfig(n_items=3000, n_users=5, mean_history=3, cities=("springfield-ma",))
    items = generate_world(cfg).items
    _, _, lat0, lon0 = CITY_CATALOG["springfield-ma"]
    d = haversine_km(items["lat"].to_numpy(), items["lon"].to_numpy(), lat0, lon0)
    centre = (d < 3).sum() / (np.pi * 3**2)
    suburbs = ((d >= 15) & (d < 30)).sum() / (np.pi * (30**2 - 15**2))
    assert suburbs > 0  # the suburbs are sparse, not empty
    assert centre > 10 * suburbs


# ------------------------------------------------------------------ item content


def test_category_tree_goods_and_prices_are_consistent(test_world):
    leaves = {(lf.cat1, lf.cat2, lf.cat3): set(lf.goods) for lf in LEAVES}
    for row in test_world.items.iter_rows(named=True):
        allowed = leaves[(row["cat1"], row["cat2"], row["cat3"])]
        goods = row["goods"].split(", ")
        top = row["top_sellers"].split(", ")
        assert set(goods) <= allowed and len(goods) >= 5
        assert top == goods[: len(top)] and 2 <= len(top) <= 3
        assert row["price"] >= 1.0


def test_chains_span_cities_with_one_menu(demo_world, demo_stats):
    items = demo_world.items
    chain = items.filter(pl.col("brand") != pl.col("name"))
    assert 0.2 < chain.height / items.height < 0.4
    assert chain["name"].str.starts_with(chain["brand"]).all()
    per_brand = chain.group_by("brand").agg(
        pl.struct("city", "province").n_unique().alias("n_cities"),
        pl.col("cat3").n_unique().alias("n_cat3"),
        pl.col("goods").n_unique().alias("n_menus"),
    )
    assert (per_brand["n_cat3"] == 1).all() and (per_brand["n_menus"] == 1).all()
    assert demo_stats["brands_in_2plus_cities"] >= 0.5 * demo_stats["brands"]
    assert per_brand["n_cities"].max() == len(PRESETS["demo"].cities)


# ------------------------------------------------------------------ histories and behaviour


def test_histories_are_ordered_in_time(test_world):
    inter = test_world.interactions
    assert inter.equals(inter.sort(["user_id", "seq_idx"]))
    per_user = inter.group_by("user_id").agg(
        pl.len().alias("n"),
        (pl.col("seq_idx") == pl.int_range(pl.len())).all().alias("dense"),
        (pl.col("timestamp").diff().drop_nulls() > pl.duration(seconds=0)).all().alias("increasing"),
    )
    assert per_user["dense"].all() and per_user["increasing"].all()
    assert per_user["n"].min() >= PRESETS["test"].min_history
    assert per_user.height == PRESETS["test"].n_users


def test_streaming_blocks_concatenate_to_the_whole_world():
    cfg = dataclasses.replace(PRESETS["test"], user_block=30)
    stream = stream_world(cfg)
    chunks = list(stream.iter_interactions())
    assert len(chunks) == stream.n_blocks == 3
    whole = generate_world(cfg)
    assert pl.concat(chunks).equals(whole.interactions)
    assert stream.items.equals(whole.items)


def test_consecutive_clicks_are_nearer_than_random_pairs(demo_stats):
    assert demo_stats["next_median_km"] < 0.4 * demo_stats["random_same_city_pair_median_km"]
    assert demo_stats["next_within_3km"] > 0.4
    assert demo_stats["next_same_city"] > 0.98


def test_clicks_decay_with_distance_from_home(demo_world):
    inter = demo_world.interactions.join(demo_world.items.select("item_id", "lat", "lon"), on="item_id")
    inter = inter.join(demo_world.users.select("user_id", "home_lat", "home_lon", "trip_city"), on="user_id")
    home = inter.filter(pl.col("trip_city").is_null())
    d = haversine_km(home["lat"].to_numpy(), home["lon"].to_numpy(),
                     home["home_lat"].to_numpy(), home["home_lon"].to_numpy())
    shuffled = np.random.default_rng(0).permutation(len(home))
    d_random = haversine_km(home["lat"].to_numpy()[shuffled], home["lon"].to_numpy()[shuffled],
                            home["home_lat"].to_numpy(), home["home_lon"].to_numpy())
    assert np.median(d) < 0.5 * np.median(d_random[d_random < 100])


def test_consecutive_clicks_share_categories_more_than_chance(demo_stats):
    assert demo_stats["next_same_cat2"] > 2.0 * demo_stats["chance_same_cat2"]
    assert demo_stats["next_same_cat1"] > demo_stats["chance_same_cat1"] + 0.05


def test_user_taste_predicts_the_category_of_the_last_click(demo_world):
    seq = demo_world.interactions.join(demo_world.items.select("item_id", "cat2"), on="item_id")
    last = seq.filter(pl.col("seq_idx") == pl.col("seq_idx").max().over("user_id"))
    earlier = seq.filter(pl.col("seq_idx") < pl.col("seq_idx").max().over("user_id"))
    modal = earlier.group_by("user_id", "cat2").len().sort(["user_id", "len", "cat2"], descending=[False, True, False]) \
        .group_by("user_id", maintain_order=True).first().select("user_id", pl.col("cat2").alias("modal"))
    global_modal = earlier["cat2"].mode().sort()[0]
    joined = last.join(modal, on="user_id")
    personal = (joined["cat2"] == joined["modal"]).mean()
    overall = (joined["cat2"] == global_modal).mean()
    assert personal > overall + 0.05


def test_popularity_and_geography_beat_random(demo_world, demo_stats):
    chance = 10 / demo_world.items.height
    assert demo_stats["popularity_hit@10"] > 3 * chance
    assert demo_stats["geo_nearest_hit@10"] > 20 * chance
    assert demo_stats["immediate_repeat"] == 0.0


def test_some_users_travel_to_another_city(demo_world):
    users = demo_world.users
    travellers = users.filter(pl.col("trip_city").is_not_null())
    assert 0 < travellers.height < 0.15 * users.height
    visits = demo_world.interactions.join(travellers.select("user_id", "home_province", "home_city"), on="user_id") \
        .join(demo_world.items.select("item_id", "province", "city"), on="item_id")
    away = (visits["province"] != visits["home_province"]) | (visits["city"] != visits["home_city"])
    assert away.any()


# ------------------------------------------------------------------ config and presets


def test_presets_have_the_documented_sizes():
    demo = PRESETS["demo"]
    assert demo.n_items == 2000 and demo.cities == ("springfield-il", "springfield-ma", "portland-or", "portland-me")
    assert len({CITY_CATALOG[k][0] for k in PRESETS["test"].cities}) < len(PRESETS["test"].cities)
    for name, n in (("bench-100k", 100_000), ("bench-1m", 1_000_000), ("bench-2.3m", 2_300_000)):
        cfg = PRESETS[name]
        assert cfg.n_items == n and cfg.n_users * cfg.mean_history == pytest.approx(10 * n)
    many = PRESETS["cities-150"]
    assert many.n_items == 8000 and len(many.cities) == 150


def test_the_150_city_preset_spreads_items_over_every_city():
    w = generate_world(dataclasses.replace(PRESETS["cities-150"], n_users=300))
    per_city = w.items.group_by("province", "city").len()
    assert per_city.height == 150 and w.items.height == 8000
    # by population, yet every city holds enough items for its own partition's stages
    assert per_city["len"].min() >= 20 and per_city["len"].max() < 0.05 * 8000


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_items": 0}, "n_items"),
        ({"cities": ("atlantis",)}, "cities"),
        ({"cities": ()}, "cities"),
        ({"chain_share": 1.5}, "chain_share"),
        ({"mean_history": 1.0}, "mean_history"),
        ({"start": "yesterday"}, "start"),
    ],
)
def test_bad_config_raises_a_clear_error(kwargs, field):
    base = dict(n_items=10, n_users=5, mean_history=4.0, cities=("springfield-il",))
    with pytest.raises(ValueError, match=field):
        WorldConfig(**{**base, **kwargs})


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown world preset"):
        resolve_config("huge")


@pytest.mark.parametrize("seed", [1, 2, 3, 7])
def test_other_seeds_generate_valid_worlds(seed):
    world = generate_world("test", seed=seed)
    assert dict(world.items.schema) == schema.ITEM_SCHEMA
    assert world.items["item_id"].n_unique() == world.items.height
    assert world.interactions.height == world.users["n_interactions"].sum()
