"""Appendix A prompts and Eq. 1 prompt mismatching."""

import math

import polars as pl

import pytest

from lgsid_pipeline.alignment.prompts import (DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE, PromptTemplate, build_prompt,
                                    build_prompts, prompt_template)

COORDS = prompt_template("coordinates")

SHOP = {"item_id": "a", "name": "Golden Dragon Hot Pot", "province": "Oregon", "city": "Portland",
        "district": None, "town": "Gresham", "lat": 45.498, "lon": -122.431, "cat1": "Food",
        "cat2": "Chinese", "cat3": "Hot Pot", "brand": "Golden Dragon", "price": 3.0,
        "goods": "beef slices, tofu", "top_sellers": "spicy broth", "city_key": "portland"}
FAR = {"item_id": "b", "name": "Bagel Co", "province": "Maine", "city": "Portland", "district": "Old Port",
       "town": "South Portland", "lat": 43.641, "lon": -70.241, "cat1": "Food", "cat2": "Bakery",
       "cat3": None, "brand": None, "price": None, "goods": None, "top_sellers": None}


def test_every_field_of_figure_6_is_rendered():
    text = build_prompt(SHOP)
    assert text.splitlines()[0] == "Item: Golden Dragon Hot Pot"  # no instruction line by default
    for expected in ("Item: Golden Dragon Hot Pot", "Location: Oregon, Portland, Gresham",
                     "Category hierarchy: Food > Chinese > Hot Pot",
                     "Brand: Golden Dragon", "Price: 3", "Full goods list: beef slices, tofu",
                     "Top-selling items: spicy broth"):
        assert expected in text


def test_default_is_the_papers_template_without_coordinates():
    text = build_prompt(SHOP)
    assert "Coordinates" not in text and "45.498" not in text and "122.431" not in text
    assert DEFAULT_TEMPLATE == prompt_template("paper", instruction=False)


def test_coordinates_and_instruction_are_options():
    text = build_prompt(SHOP, template=prompt_template("coordinates", instruction=True))
    lines = text.splitlines()
    assert lines[0] == DEFAULT_INSTRUCTION
    assert lines[2:4] == ["Location: Oregon, Portland, Gresham", "Coordinates: 45.498, -122.431"]
    assert build_prompt(SHOP, template=COORDS).splitlines()[0] == "Item: Golden Dragon Hot Pot"
    with pytest.raises(ValueError, match="unknown prompt template 'geohash'"):
        prompt_template("geohash")


def test_missing_fields_are_left_out_cleanly():
    text = build_prompt({**FAR, "lat": math.nan, "lon": None}, template=COORDS)
    assert "None" not in text and "nan" not in text.lower()
    assert "Brand" not in text and "Price" not in text and "Coordinates" not in text
    assert "Category hierarchy: Food > Bakery" in text
    assert ", ," not in text and "> >" not in text


def test_mismatched_prompt_takes_content_of_a_and_location_of_b():
    text = build_prompt(SHOP, FAR, template=COORDS)  # Eq. 1: P_i^j = [P_content(a), P_location(b)]
    assert "Item: Golden Dragon Hot Pot" in text and "Brand: Golden Dragon" in text
    assert "Location: Maine, Portland, Old Port, South Portland" in text
    assert "Coordinates: 43.641, -70.241" in text
    assert "Oregon" not in text and "Gresham" not in text


def test_same_town_neighbours_get_distinct_prompts_only_with_coordinates():
    near = {**SHOP, "lat": SHOP["lat"] + 0.004}
    assert build_prompt(SHOP, near, template=COORDS) != build_prompt(SHOP, template=COORDS)
    # Under the paper's template they render alike: the sampler leaves such duplicates out
    # (tests/test_negatives.py).
    assert build_prompt(SHOP, near) == build_prompt(SHOP)


def test_template_is_configurable_and_vectorised():
    template = PromptTemplate(instruction="", lines=(("content", "{name}"), ("location", "in {town}")))
    frame = pl.DataFrame([SHOP, {**FAR, "city_key": "portland-me"}])
    out = build_prompts(frame, frame.reverse(), template=template)
    assert out == ["Golden Dragon Hot Pot\nin South Portland", "Bagel Co\nin Gresham"]
    assert template.fields() == {"name", "town"}
