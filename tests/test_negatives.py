import numpy as np
import polars as pl
import pytest

from lgsid_pipeline.geo import GeoIndex, haversine_km
from lgsid_pipeline.alignment.city_lists import _unskipped
from lgsid_pipeline.alignment.negatives import dedupe_prompt_lists, distance_ranked_negatives, mismatched_prompts


def _city(n_dense=300, n_sparse=120, seed=0, key="metro", centre=(40.75, -73.98)):
    """A dense core (~1 km spread) and sparse suburbs (~15 km spread)."""
    rng = np.random.default_rng(seed)
    lat = np.r_[centre[0] + rng.normal(0, 0.01, n_dense), centre[0] + rng.normal(0, 0.15, n_sparse)]
    lon = np.r_[centre[1] + rng.normal(0, 0.012, n_dense), centre[1] + rng.normal(0, 0.18, n_sparse)]
    n = lat.size
    return pl.DataFrame(
        {
            "item_id": [f"{key}-{i:04d}" for i in range(n)],
            "name": [f"Shop {key} {i}" for i in range(n)],
            "cat1": ["Food"] * n,
            "province": ["NY"] * n,
            "city": [key] * n,
            "town": [f"town{i % 9}" for i in range(n)],
            "lat": lat,
            "lon": lon,
            "city_key": [key] * n,
            "zone": ["dense"] * n_dense + ["sparse"] * n_sparse,
        }
    )


def _check_invariants(res, items, k):
    lists = res.lists
    assert (lists["anchor_id"] != lists["negative_id"]).all()
    assert lists.select(pl.struct("anchor_id", "negative_id").is_duplicated().any()).item() is False
    for _, g in lists.group_by("anchor_id"):
        g = g.sort("rank")
        n_i = g.height
        assert n_i <= k
        assert g["rank"].to_list() == list(range(1, n_i + 1))
        # Eq. 3: p = K - rank + 1, nearest gets the largest label.
        assert g["label"].to_list() == [float(n_i - r + 1) for r in range(1, n_i + 1)]
        assert (g["distance_km"].diff().drop_nulls() >= 0).all()
    # distance_km is the haversine distance of the pair.
    pos = {i: j for j, i in enumerate(items["item_id"].to_list())}
    a = np.array([pos[x] for x in lists["anchor_id"]])
    b = np.array([pos[x] for x in lists["negative_id"]])
    lat, lon = items["lat"].to_numpy(), items["lon"].to_numpy()
    np.testing.assert_allclose(lists["distance_km"], haversine_km(lat[a], lon[a], lat[b], lon[b]))


@pytest.mark.parametrize("strategy", ["density", "plain"])
def test_lists_invariants(strategy):
    items = _city()
    res = distance_ranked_negatives(items, k=15, strategy=strategy, seed=1)
    assert res.lists["anchor_id"].n_unique() == items.height
    assert res.lists.height == 15 * items.height
    assert set(res.lists["strategy"]) == {strategy}
    assert res.lists.schema["rank"] == pl.Int32 and res.lists.schema["label"] == pl.Float64
    _check_invariants(res, items, 15)
    assert res.rank_quantiles["rank"].to_list() == list(range(1, 16))
    assert (res.rank_quantiles["p50_km"].diff().drop_nulls() >= 0).all()
    assert res.metrics["n_anchors"] == items.height and res.metrics["n_short_lists"] == 0


def test_density_awareness():
    items = _city(seed=2)
    res = distance_ranked_negatives(items, k=15, strategy="density", seed=0)
    lists = res.lists.join(
        items.select(pl.col("item_id").alias("anchor_id"), "zone"), on="anchor_id"
    )
    first = lists.filter(pl.col("rank") == 1)
    med = first.group_by("zone").agg(
        pl.col("distance_km").median().alias("km"),
        (pl.col("distance_km") / pl.col("density_radius_km")).median().alias("rel"),
    )
    m = {z: (km, rel) for z, km, rel in med.iter_rows()}
    # In km, hard negatives in the dense core are much nearer than in the suburbs ...
    assert m["dense"][0] * 4 < m["sparse"][0]
    # ... while in units of the local scale r_k they are comparable.
    assert 0.5 < m["dense"][1] / m["sparse"][1] < 2.0
    # The local scale is the density_k-th neighbour distance.
    idx = GeoIndex(items["lat"], items["lon"])
    d, _ = idx.query(items["lat"], items["lon"], k=11)
    rk = dict(zip(items["item_id"], d[:, 10]))
    got = res.lists.group_by("anchor_id").agg(pl.col("density_radius_km").first())
    np.testing.assert_allclose(
        got["density_radius_km"], [rk[a] for a in got["anchor_id"]], rtol=1e-9, atol=1e-9
    )
    # Each list mixes hard negatives (within 2 r_k) and farther ones. In the core the rings
    # reach far beyond r_k; in the suburbs the city ends a few r_k away.
    rel = lists.with_columns((pl.col("distance_km") / pl.col("density_radius_km")).alias("rel"))
    per = rel.group_by("anchor_id", "zone").agg(
        (pl.col("rel") <= 2.0).sum().alias("near"),
        (pl.col("rel") > 4.0).sum().alias("far"),
        pl.col("rel").max().alias("max_rel"),
    )
    assert (per["near"] >= 5).all()
    dense = per.filter(pl.col("zone") == "dense")
    assert (dense["far"] >= 5).mean() > 0.9
    assert dense["max_rel"].median() > 30
    assert per.filter(pl.col("zone") == "sparse")["max_rel"].median() > 3


def test_plain_differs_from_density():
    items = _city(seed=3)
    dens = distance_ranked_negatives(items, strategy="density", seed=0)
    plain = distance_ranked_negatives(items, strategy="plain", seed=0)
    d1 = dens.rank_quantiles.filter(pl.col("rank") == 1)["p50_km"].item()
    p1 = plain.rank_quantiles.filter(pl.col("rank") == 1)["p50_km"].item()
    assert p1 > 1.5 * d1
    for zone in ("dense", "sparse"):
        ids = items.filter(pl.col("zone") == zone)["item_id"].implode()
        med = [
            r.lists.filter((pl.col("rank") == 1) & pl.col("anchor_id").is_in(ids))[
                "distance_km"].median()
            for r in (dens, plain)
        ]
        assert med[1] > 1.5 * med[0], zone
    assert plain.metrics["share_within_near_band"] < dens.metrics["share_within_near_band"]


@pytest.mark.parametrize("strategy", ["density", "plain"])
def test_determinism(strategy):
    items = _city(seed=4)
    a = distance_ranked_negatives(items, strategy=strategy, seed=7)
    b = distance_ranked_negatives(items, strategy=strategy, seed=7)
    c = distance_ranked_negatives(items, strategy=strategy, seed=8)
    assert a.lists.equals(b.lists)
    assert not a.lists.equals(c.lists)


@pytest.mark.parametrize("strategy", ["density", "plain", "distinct"])
def test_lists_do_not_depend_on_row_order(strategy):
    """A batch run reads the far pool from several Delta partitions in an order that varies
    between runs; the seeded lists must not follow it."""
    items = pl.concat([_city(n_dense=60, n_sparse=20, seed=2), _city(n_dense=30, n_sparse=5, key="b", seed=3)])
    far = pl.concat([_city(n_dense=25, n_sparse=5, key="x", centre=(34.0, -118.2)),
                     _city(n_dense=25, n_sparse=5, key="y", centre=(41.8, -87.6))])
    kw = dict(strategy=strategy, seed=3, far_share=0.2, max_anchors=30)
    a = distance_ranked_negatives(items, far_items=far, **kw)
    b = distance_ranked_negatives(items.sample(fraction=1.0, shuffle=True, seed=1),
                                  far_items=far.sample(fraction=1.0, shuffle=True, seed=2), **kw)
    key = ["anchor_id", "rank"]
    assert a.lists.height > 0 and a.lists.sort(key).equals(b.lists.sort(key))


def test_tiny_cities_and_multiple_cities():
    big = _city(n_dense=40, n_sparse=10, key="big")
    small = _city(n_dense=5, n_sparse=0, key="small", centre=(34.0, -118.2))
    single = _city(n_dense=1, n_sparse=0, key="single", centre=(41.8, -87.6))
    items = pl.concat([big, small, single])
    for strategy in ("density", "plain"):
        res = distance_ranked_negatives(items, k=15, strategy=strategy, seed=0)
        lists = res.lists
        _check_invariants(res, items, 15)
        # Negatives never cross cities.
        city_of = dict(zip(items["item_id"], items["city_key"]))
        assert all(city_of[a] == city_of[b] for a, b in lists.select("anchor_id", "negative_id").iter_rows())
        lens = dict(lists.group_by("anchor_id").len().iter_rows())
        assert all(lens[i] == 15 for i in big["item_id"])
        assert all(lens[i] == 4 for i in small["item_id"])  # every other item of the city
        assert single["item_id"][0] not in lens  # a one-item city yields no list
        assert res.metrics["n_short_lists"] == 5
    # A frame with one item and no city column: no lists, no crash.
    res = distance_ranked_negatives(single.drop("city_key"))
    assert res.lists.height == 0 and res.rank_quantiles.height == 0


def test_far_items_and_max_anchors():
    items = _city(n_dense=80, n_sparse=20, seed=5)
    far = _city(n_dense=30, n_sparse=0, key="other", centre=(34.0, -118.2))
    res = distance_ranked_negatives(
        items, k=15, far_items=far, far_share=0.2, max_anchors=25, seed=0
    )
    lists = res.lists
    assert lists["anchor_id"].n_unique() == 25
    per = lists.group_by("anchor_id").agg(
        (pl.col("negative_city_key") == "other").sum().alias("n_far"),
        pl.col("rank").filter(pl.col("negative_city_key") == "other").min().alias("first_far"),
    )
    assert (per["n_far"] == 3).all()
    assert (per["first_far"] == 13).all()  # far negatives sort to the end
    assert res.metrics["share_other_city"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="far_items"):
        distance_ranked_negatives(items, far_share=0.2)


def test_far_draws_skip_the_citys_own_items_without_filtering_the_pool():
    rng = np.random.default_rng(0)
    for pool, n_skip in ((10, 0), (10, 3), (200, 50), (50, 49)):
        skip = np.sort(rng.choice(pool, n_skip, replace=False))
        kept = np.setdiff1d(np.arange(pool), skip)  # the filtered pool the old code built per city
        draw = rng.integers(0, kept.size, size=(7, 3))
        assert (_unskipped(draw, skip) == kept[draw]).all()
    # The whole pathway: the pool holds every city, some rows have no city key (those are
    # excluded by item id alone), and no far negative is ever one of the anchor's city.
    a = _city(n_dense=60, n_sparse=10, seed=1, key="a")
    b = _city(n_dense=40, n_sparse=0, seed=2, key="b", centre=(34.0, -118.2))
    c = _city(n_dense=40, n_sparse=0, seed=3, key="c", centre=(41.9, -87.6))
    pool = pl.concat([a, b, c]).with_columns(
        pl.when(pl.int_range(pl.len()) % 9 == 0).then(None).otherwise(pl.col("city_key")).alias("city_key"))
    res = distance_ranked_negatives(pl.concat([a, b]), k=10, far_items=pool, far_share=0.5, seed=4)
    lists = res.lists.join(pl.concat([a, b]).select(pl.col("item_id").alias("anchor_id"),
                                                     pl.col("city_key").alias("anchor_city")), on="anchor_id")
    far = lists.filter(pl.col("rank") > 5)
    own = pl.concat([a, b]).select(pl.col("item_id").alias("negative_id"), pl.col("city_key").alias("own_city"))
    far = far.join(own, on="negative_id", how="left")
    assert far.height == lists["anchor_id"].n_unique() * 5
    assert (far["own_city"].is_null() | (far["own_city"] != far["anchor_city"])).all()
    # negatives from the pool keep the pool's city key, null included
    assert far["negative_city_key"].null_count() > 0
    assert set(far.filter(pl.col("own_city").is_null())["negative_id"].str.slice(0, 1).to_list()) <= {"c"}
    # an empty far pool (a one-city dataset) or one holding only the city's own items: no far slots
    for pool in (a.clear(), a):
        lists = distance_ranked_negatives(a, k=10, far_items=pool, far_share=0.5, seed=4).lists
        assert lists.height > 0 and (lists["negative_city_key"] == "a").all()


def test_bad_input():
    items = _city(n_dense=10, n_sparse=0)
    with pytest.raises(ValueError, match="strategy"):
        distance_ranked_negatives(items, strategy="nearest")
    with pytest.raises(ValueError, match="'lat' is null in row 3"):
        distance_ranked_negatives(items.with_columns(
            pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("lat")).alias("lat")))
    with pytest.raises(ValueError, match="duplicated"):
        distance_ranked_negatives(pl.concat([items, items.head(1)]))
    with pytest.raises(ValueError, match="lat must be finite"):
        distance_ranked_negatives(items.with_columns(pl.lit(123.0).alias("lat")))


def test_a_sorted_pool_names_the_same_duplicate_as_an_unsorted_one():
    from lgsid_pipeline.alignment.negatives import _check_items

    items = _city(n_dense=10, n_sparse=0)
    twice = pl.concat([items, items.slice(4, 1), items.slice(7, 1)]).sort("item_id", maintain_order=True)
    assert twice["item_id"].flags["SORTED_ASC"]
    unflagged = pl.DataFrame({c: twice[c].to_list() for c in twice.columns}, schema=twice.schema)
    assert not unflagged["item_id"].flags["SORTED_ASC"]  # the same rows, checked by hashing
    messages = []
    for frame in (twice, unflagged):
        with pytest.raises(ValueError, match="duplicated") as err:
            _check_items(frame, "far_items")
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "(row" in messages[0]
    ids, _, _ = _check_items(items.sort("item_id"), "far_items")  # a sorted pool without duplicates passes
    assert ids.len() == items.height


def test_mismatched_prompts_swap_only_the_location():
    # Unique towns except items 0 and 1, which share one (checked at the end).
    towns = [f"Town{i}" for i in range(40)]
    towns[1] = towns[0]
    items = _city(n_dense=30, n_sparse=10, seed=6).with_columns(pl.Series("town", towns))
    lists = distance_ranked_negatives(items, k=5, seed=0, max_anchors=6).lists
    out = mismatched_prompts(items, lists)
    assert out.columns[:4] == ["anchor_id", "rank", "label", "prompt"]
    assert out.height == lists.height + 6
    by_id = {r["item_id"]: r for r in items.to_dicts()}
    true_prompt = {r["anchor_id"]: r["prompt"] for r in out.filter(pl.col("rank") == 0).iter_rows(named=True)}
    for row in out.iter_rows(named=True):
        anchor = by_id[row["anchor_id"]]
        loc = by_id[row["location_item_id"]]
        lines = row["prompt"].split("\n")
        assert f"Item: {anchor['name']}" in lines  # content is the anchor's
        assert f"Location: NY, {loc['city']}, {loc['town']}" in lines  # location the negative's
        if row["rank"] == 0:
            assert row["location_item_id"] == row["anchor_id"] and row["label"] == 6.0
        else:
            assert row["location_item_id"] != row["anchor_id"]
            own_loc = f"Location: NY, {anchor['city']}, {anchor['town']}"
            assert (own_loc in lines) == (loc["town"] == anchor["town"])
            assert row["same_as_true_prompt"] == (row["prompt"] == true_prompt[row["anchor_id"]])
    neg = out.filter(pl.col("rank") > 0)
    joined = neg.join(lists, left_on=["anchor_id", "rank"], right_on=["anchor_id", "rank"])
    assert (joined["location_item_id"] == joined["negative_id"]).all()
    assert (joined["label"] == joined["label_right"]).all()
    with pytest.raises(ValueError, match="is not in items"):
        mismatched_prompts(items.head(5), lists)
    hand = pl.DataFrame({"anchor_id": ["metro-0000", "metro-0000"],
                         "negative_id": ["metro-0001", "metro-0002"],
                         "rank": [1, 2], "label": [2.0, 1.0]})
    # metro-0001 shares metro-0000's town; put it in the same building so its location renders
    # identically (coordinates are part of the location text).
    same_spot = items.with_columns(
        pl.when(pl.col("item_id") == "metro-0001").then(pl.lit(items["lat"][0])).otherwise(pl.col("lat")).alias("lat"),
        pl.when(pl.col("item_id") == "metro-0001").then(pl.lit(items["lon"][0])).otherwise(pl.col("lon")).alias("lon"))
    out = mismatched_prompts(same_spot, hand)
    assert out["same_as_true_prompt"].to_list() == [False, True, False]
    assert out["prompt"][0] == out["prompt"][1] != out["prompt"][2]


def test_small_near_scale_and_duplicate_locations():
    items = _city(n_dense=60, n_sparse=0, seed=9)
    # Ten shops in one building: zero distances must not break the local scale or the labels.
    items = items.with_columns(
        pl.when(pl.int_range(pl.len()) < 10).then(40.75).otherwise(pl.col("lat")).alias("lat"),
        pl.when(pl.int_range(pl.len()) < 10).then(-73.98).otherwise(pl.col("lon")).alias("lon"),
    )
    res = distance_ranked_negatives(items, k=8, near_scale=0.5, seed=0)
    _check_invariants(res, items, 8)
    assert res.lists["density_radius_km"].is_finite().all()
    assert (res.lists["density_radius_km"] > 0).all()
    assert res.lists.group_by("anchor_id").len()["len"].to_list() == [8] * items.height


def test_empty_items():
    items = _city(n_dense=3, n_sparse=0).head(0)
    for strategy in ("density", "plain"):
        res = distance_ranked_negatives(items, strategy=strategy)
        assert res.lists.height == 0 and res.metrics["n_anchors"] == 0
        assert res.lists.columns[:6] == ["anchor_id", "negative_id", "rank", "distance_km", "label", "strategy"]


def test_same_town_duplicates_are_left_out_and_counted():
    """Under the paper's template a same-town negative renders the anchor's own prompt: the
    sampler leaves it (and any repeat of an earlier negative) out, relabels by Eq. 3 on the kept
    list and reports the count."""
    items = _city(n_dense=60, n_sparse=20, seed=3)  # 9 towns, so most lists repeat a town
    lists = distance_ranked_negatives(items, k=8, seed=0, max_anchors=12).lists
    raw = mismatched_prompts(items, lists)
    out, stats = dedupe_prompt_lists(raw)
    assert out.columns == raw.columns
    n_dups = raw.height - raw.unique(["anchor_id", "prompt"]).height
    assert n_dups > 0 and stats["duplicate_prompts_dropped"] == n_dups
    assert stats["duplicate_share"] == pytest.approx(n_dups / lists.height)
    town = dict(zip(items["item_id"], items["town"]))
    for (anchor,), g in out.sort("rank").group_by(["anchor_id"], maintain_order=True):
        assert g["prompt"].n_unique() == g.height  # every text once per list
        assert g["rank"].to_list() == list(range(g.height))  # renumbered 1..n'
        n = g.height - 1
        assert g["label"].to_list() == [float(n + 1 - r) for r in range(g.height)]  # Eq. 3 on n'
        towns = [town[i] for i in g["location_item_id"].to_list()[1:]]
        assert town[anchor] not in towns and len(set(towns)) == len(towns)
        # the kept negatives are the nearest of each distinct town, in distance order
        first = raw.filter(pl.col("anchor_id") == anchor).sort("rank").unique("prompt", keep="first",
                                                                             maintain_order=True)
        assert g["location_item_id"].to_list() == first["location_item_id"].to_list()
    assert not out["same_as_true_prompt"].any()
    assert stats["kept_list_len_min"] >= 1 and stats["anchors"] == raw["anchor_id"].n_unique()
    # The coordinates template makes every location distinct: nothing to leave out.
    from lgsid_pipeline.alignment.prompts import prompt_template

    coords = mismatched_prompts(items, lists, prompt_template("coordinates"))
    assert dedupe_prompt_lists(coords)[1]["duplicate_prompts_dropped"] == 0


def _towns(n_towns=12, per_town=15, seed=0, city="metro", lat0=40.7, n_cities=1):
    """Items on a grid of towns ~2 km apart; the first half of the towns in city A, the rest in B."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_towns):
        c = f"{city}{t * n_cities // n_towns}"
        for j in range(per_town):
            rows.append({"item_id": f"{c}-t{t}-{j}", "name": f"shop {j}", "province": "NY", "city": c,
                         "town": f"town{t}", "city_key": c,
                         "lat": lat0 + 0.018 * (t % 4) + rng.normal(0, 0.001),
                         "lon": -74.0 + 0.024 * (t // 4) + rng.normal(0, 0.001)})
    return pl.DataFrame(rows)


def test_distinct_lists_hold_distinct_locations_nearest_first():
    items = _towns()
    res = distance_ranked_negatives(items, k=8, strategy="distinct", seed=0)
    lists = res.lists.join(items.select(pl.col("item_id").alias("negative_id"), pl.col("town").alias("neg_town")),
                           on="negative_id")
    lists = lists.join(items.select(pl.col("item_id").alias("anchor_id"), pl.col("town").alias("own_town")),
                       on="anchor_id")
    assert lists.group_by("anchor_id").len()["len"].unique().to_list() == [8]  # full lists
    assert (lists["neg_town"] != lists["own_town"]).all()  # never the anchor's own location
    assert lists.group_by("anchor_id").agg(pl.col("neg_town").n_unique())["neg_town"].unique().to_list() == [8]
    # Eq. 3 order: distances non-decreasing along rank; labels n - rank + 1
    d = lists.sort("anchor_id", "rank").group_by("anchor_id", maintain_order=True).agg("distance_km")
    assert all(np.all(np.diff(x) >= 0) for x in d["distance_km"].to_list())
    assert (lists["label"] == 8 - lists["rank"] + 1).all()
    # with no far slots the 8 locations are the 8 nearest town representatives
    rep_town_dist = (lists.filter(pl.col("anchor_id") == items["item_id"][0]).sort("rank")["distance_km"].to_numpy())
    other = items.filter(pl.col("town") != items["town"][0])
    nearest = other.group_by("town").agg(pl.col("lat").mean(), pl.col("lon").mean())
    dk = np.sort(haversine_km(items["lat"][0], items["lon"][0], nearest["lat"].to_numpy(), nearest["lon"].to_numpy()))
    assert np.allclose(rep_town_dist, dk[:8], atol=0.5)  # representatives lie near their town's centroid
    # the prompts of a list are all different under the paper template: nothing to dedupe
    _, stats = dedupe_prompt_lists(mismatched_prompts(items, res.lists))
    assert stats["duplicate_prompts_dropped"] == 0


def test_distinct_crosses_city_borders_and_draws_far_slots():
    items = _towns(n_towns=12, n_cities=2)
    a = items.filter(pl.col("city_key") == "metro0")
    b = items.filter(pl.col("city_key") == "metro1")
    res = distance_ranked_negatives(a, k=10, strategy="distinct", seed=3, far_items=b, far_share=0.2)
    assert res.metrics["n_locations"] == 12
    lens = res.lists.group_by("anchor_id").len()["len"].unique().to_list()
    assert lens == [10]  # metro0 has only 6 towns: the rest come from metro1
    assert res.metrics["share_other_city"] > 0.4
    again = distance_ranked_negatives(a, k=10, strategy="distinct", seed=3, far_items=b, far_share=0.2)
    assert again.lists.equals(res.lists)
    capped = distance_ranked_negatives(a, k=10, strategy="distinct", seed=3, far_items=b, far_share=0.2,
                                       max_anchors=5)
    assert capped.lists["anchor_id"].n_unique() == 5
    with pytest.raises(ValueError, match="location column"):
        distance_ranked_negatives(a.drop("province", "city", "town"), k=3, strategy="distinct")
