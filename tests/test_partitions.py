import polars as pl
import pytest

from lgsid_pipeline.partitions import (UNASSIGNED, city_key_table, confine, is_valid_city_key,
                                       sanitize_city_key, validate_city_key)


@pytest.mark.parametrize("name,key", [
    ("São Paulo", "sao-paulo"),
    ("St. John's", "st-john-s"),
    ("../../etc", "etc"),
    ("/etc/passwd", "etc-passwd"),
    ("New York City", "new-york-city"),
    ("", UNASSIGNED),
    (None, UNASSIGNED),
])
def test_sanitize_known_names(name, key):
    assert sanitize_city_key(name) == key


@pytest.mark.parametrize("name", ["../../etc", "a\x00b", "x" * 500, "東京", "..", "/", "C:\\Windows",
                                  "-leading-dash-", "St. John's", "São Paulo", "a/../../b"])
def test_sanitized_keys_are_safe_path_components(name, tmp_path):
    key = sanitize_city_key(name)
    assert is_valid_city_key(key)
    assert len(key) <= 64
    assert "/" not in key and "\\" not in key and "\x00" not in key and ".." not in key
    assert confine(tmp_path, key).parent == tmp_path.resolve()


def test_keys_are_stable_and_distinct_for_different_long_names():
    a, b = "y" * 300 + "a", "y" * 300 + "b"
    assert sanitize_city_key(a) == sanitize_city_key(a)
    assert sanitize_city_key(a) != sanitize_city_key(b)


def test_same_name_cities_are_disambiguated_by_province():
    df = pl.DataFrame({"province": ["Illinois", "Massachusetts", "Oregon", None],
                       "city": ["Springfield", "Springfield", "Portland", None]})
    table = {(r["province"], r["city"]): r["city_key"] for r in city_key_table(df).iter_rows(named=True)}
    assert table[("Illinois", "Springfield")] == "springfield-illinois"
    assert table[("Massachusetts", "Springfield")] == "springfield-massachusetts"
    assert table[("Oregon", "Portland")] == "portland"
    assert table[(None, None)] == UNASSIGNED


def test_colliding_slugs_in_one_province_get_distinct_keys():
    df = pl.DataFrame({"province": ["X", "X"], "city": ["../../etc", "etc"]})
    keys = city_key_table(df)["city_key"].to_list()
    assert len(set(keys)) == 2 and all(is_valid_city_key(k) for k in keys)


@pytest.mark.parametrize("bad", ["../etc", "/abs", "a\x00", "", "A-Upper", "x" * 65, "-x", "a..b"])
def test_validate_city_key_rejects_unsafe(bad):
    with pytest.raises(ValueError, match="invalid city partition key"):
        validate_city_key(bad)


@pytest.mark.parametrize("parts", [("..", "x"), ("/etc",), ("a\x00b",), ("a", "..", "..", "b")])
def test_confine_refuses_escapes(tmp_path, parts):
    with pytest.raises(ValueError):
        confine(tmp_path / "root", *parts)


@pytest.mark.parametrize("name", ["Unassigned", "UNASSIGNED", " unassigned! "])
def test_real_city_never_gets_the_unassigned_key(name):
    key = sanitize_city_key(name)
    assert key != UNASSIGNED and key.startswith("unassigned-") and is_valid_city_key(key)
    assert sanitize_city_key(name) == key  # stable
    table = city_key_table(pl.DataFrame({"province": [None, "A", "B"], "city": [None, name, name]}))
    keys = {(r["province"], r["city"]): r["city_key"] for r in table.iter_rows(named=True)}
    assert keys[(None, None)] == UNASSIGNED
    assert UNASSIGNED not in (keys[("A", name)], keys[("B", name)])
    assert keys[("A", name)] != keys[("B", name)]
