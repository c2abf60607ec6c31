"""SID lookup: neighbours in SID and embedding space, items behind a prefix, clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from lgsid_pipeline.serving.lookup import SIDLookupError, item_report, parse_prefix, prefix_report, sid_neighbours


@pytest.fixture
def tables():
    ids = [f"i{n}" for n in range(6)]
    codes = [[1, 2, 0], [1, 2, 1], [1, 3, 0], [1, 9, 0], [4, 2, 0], [1, 2, 5]]
    sids = pl.DataFrame({"item_id": ids * 2, "method": ["lgsid"] * 6 + ["rqvae"] * 6,
                         "sid": codes + [[c[2], c[1], c[0]] for c in codes], "codebook_version": "v1"},
                        schema_overrides={"sid": pl.List(pl.Int32)})
    items = pl.DataFrame({"item_id": ids, "name": [f"shop {n}" for n in range(6)], "city": "Portland",
                          "city_key": ["portland"] * 5 + ["tacoma"], "lat": [45.5, 45.5, 45.6, 45.9, 47.0, 47.2],
                          "lon": [-122.6, -122.61, -122.6, -122.6, -122.4, -122.4]})
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 8)).astype(np.float32)
    X[1] = X[0] + 0.01  # i1 is i0's twin in embedding space
    emb = pl.DataFrame({"item_id": ids, "variant": "aligned", "embedding": X.tolist()})
    return sids, items, emb


def test_sid_neighbours_rank_by_shared_prefix_then_digit_gap():
    codes = np.array([[1, 2, 0], [1, 2, 1], [1, 3, 0], [1, 9, 0], [4, 2, 0], [1, 2, 5]])
    got = sid_neighbours(codes, [f"i{n}" for n in range(6)], 0, 5)
    assert [(j, s) for j, s, _ in got] == [(1, 2), (5, 2), (2, 1), (3, 1), (4, 0)]


def test_item_report_names_sids_neighbours_and_km(tables):
    sids, items, emb = tables
    rep = item_report("i0", sids, items, emb, {"lgsid": {"embedding_variant": "aligned"}}, k=3)
    lg = rep["methods"]["lgsid"]
    assert lg["sid"] == [1, 2, 0] and lg["codebook_version"] == "v1"
    assert [n["item_id"] for n in lg["sid_neighbours"]] == ["i1", "i5", "i2"]
    assert lg["sid_neighbours"][0]["km"] == pytest.approx(0.78, abs=0.05)
    assert lg["embedding_neighbours"][0]["item_id"] == "i1" and lg["embedding_neighbours"][0]["cosine"] > 0.99
    assert "embedding_neighbours" not in rep["methods"]["rqvae"]  # no variant recorded for it
    assert set(item_report("i0", sids, items, None, {}, method="rqvae")["methods"]) == {"rqvae"}
    with pytest.raises(SIDLookupError, match="not in the item catalogue"):
        item_report("nope", sids, items, emb, {})
    with pytest.raises(SIDLookupError, match="unknown method 'zz'"):
        item_report("i0", sids, items, emb, {}, method="zz")


def test_prefix_report_lists_items_with_their_cities(tables):
    sids, items, _ = tables
    rep = prefix_report([1, 2], sids, items, method="lgsid")["methods"]["lgsid"]
    assert rep["items"] == 3 and rep["cities"] == {"portland": 2, "tacoma": 1}
    assert [r["item_id"] for r in rep["shown"]] == ["i0", "i1", "i5"]
    assert prefix_report([7], sids, items, method="lgsid")["methods"]["lgsid"]["items"] == 0
    with pytest.raises(SIDLookupError, match="3-code SIDs"):
        prefix_report([1, 2, 0, 0], sids, items, method="lgsid")
    assert parse_prefix("12/7") == [12, 7] and parse_prefix("12,7") == [12, 7]
    for bad in ("a/b", "", "-1"):
        with pytest.raises(SIDLookupError, match="prefix"):
            parse_prefix(bad)
