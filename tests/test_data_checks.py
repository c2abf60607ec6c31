"""The data checks' verdicts on small hand-made frames (the Dagster checks wrap these)."""

import polars as pl

from lgsid_pipeline import schema
from lgsid_pipeline.data.checks import catalog_problems, quarantine_rates, quarantine_verdict
from lgsid_pipeline.partitions import UNASSIGNED


def _catalog(rows: list[dict]) -> pl.DataFrame:
    base = {c: None for c in schema.CATALOG_SCHEMA}
    return schema.conform(pl.DataFrame([{**base, **r} for r in rows],
                                       schema=schema.CATALOG_SCHEMA), schema.CATALOG_SCHEMA)


def test_catalog_problems_names_ids_and_each_bad_coordinate():
    good = [{"item_id": "a", "lat": 40.7, "lon": -74.0, "city_key": "nyc"},
            {"item_id": "b", "lat": -90.0, "lon": 180.0, "city_key": "nyc"}]  # the limits are valid
    assert catalog_problems(_catalog(good)) == []
    bad = good + [{"item_id": "a", "lat": 91.0, "lon": 0.0, "city_key": "nyc"},     # dup id, lat > 90
                  {"item_id": "c", "lat": 10.0, "lon": -180.5, "city_key": "nyc"},  # lon < -180
                  {"item_id": "d", "lat": None, "lon": 1.0, "city_key": "nyc"},     # missing
                  {"item_id": "e", "lat": float("nan"), "lon": 1.0, "city_key": "nyc"}]  # NaN
    assert catalog_problems(_catalog(bad)) == ["duplicated item_id", "4 rows with invalid coordinates"]


def test_catalog_problems_stop_at_the_schema():
    frame = _catalog([{"item_id": "a", "lat": 1.0, "lon": 1.0}]).drop("city_key").with_columns(
        pl.col("lat").cast(pl.Utf8))
    assert catalog_problems(frame) == ["lat has dtype String, expected Float64", "missing column city_key"]


def _quarantine(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame({"city_key": [c for c, _ in rows], "source": [s for _, s in rows]},
                        schema={"city_key": pl.Utf8, "source": pl.Utf8})


def test_quarantine_rates_and_verdict_by_hand():
    # nyc: 3 items kept, 1 rejected -> 1/4 = 25% (> 20%); 4 interactions kept, 1 rejected -> 20% (not >).
    # sf: 9 kept, 1 rejected -> 10%. unassigned: 0 kept, 5 rejected -> 100%, but exempt.
    catalog = pl.DataFrame({"city_key": ["nyc"] * 3 + ["sf"] * 9})
    interactions = pl.DataFrame({"city_key": ["nyc"] * 4})
    quarantine = _quarantine([("nyc", "demo.items"), ("nyc", "demo.interactions"), ("sf", "demo.items")]
                             + [(UNASSIGNED, "demo.items")] * 5)
    per = quarantine_rates(catalog, interactions, quarantine, ["nyc", "sf", UNASSIGNED])
    rates = {r["city_key"]: (r["rate"], r["rate_inter"], r["exempt"]) for r in per.iter_rows(named=True)}
    assert rates == {"nyc": (0.25, 0.2, False), "sf": (0.1, 0.0, False), UNASSIGNED: (1.0, 0.0, True)}
    failing, figures = quarantine_verdict(per)
    assert failing == ["nyc: item quarantine rate 25.0% exceeds 20%"]
    assert figures["worst_city"] == "nyc" and figures["cities_checked"] == 3
    assert (figures["rejected_items"], figures["items_in"], figures["exempt_partition"]) == (1, 4, False)
    assert (figures["rejected_interactions"], figures["interactions_in"]) == (1, 5)


def test_one_city_verdict_drops_the_prefix_and_an_empty_city_passes():
    per = quarantine_rates(pl.DataFrame({"city_key": ["x"]}), pl.DataFrame({"city_key": []}, schema={"city_key": pl.Utf8}),
                           _quarantine([("x", "s.interactions")]), ["x"])
    failing, figures = quarantine_verdict(per)
    assert failing == ["interaction quarantine rate 100.0% exceeds 20%"] and "worst_city" not in figures
    empty = quarantine_rates(pl.DataFrame({"city_key": []}, schema={"city_key": pl.Utf8}),
                             pl.DataFrame({"city_key": []}, schema={"city_key": pl.Utf8}), _quarantine([]), ["y"])
    failing, figures = quarantine_verdict(empty)
    assert failing == [] and (figures["item_quarantine_rate"], figures["items_in"]) == (0.0, 0)
