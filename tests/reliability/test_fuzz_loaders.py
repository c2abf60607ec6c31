"""Fuzzed bad input: nothing is lost, nothing bad is let in, errors are clear.

Every generated table either loads with each bad row quarantined with a reason
(``valid + quarantined == rows written``), or fails with a ``DataValidationError`` naming the
file (and the field or line) -- never a raw polars / arrow traceback.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lgsid_pipeline import schema
from lgsid_pipeline.data.catalog import DataValidationError, validate_interactions, validate_items
from lgsid_pipeline.partitions import is_valid_city_key
from lgsid_pipeline.data.sources import SourceSpec, load_source

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CITIES = {"New York": (40.7, -74.0), "Tokyo": (35.7, 139.7), "São Paulo": (-23.5, -46.6)}
HOSTILE_CITIES = ["", "   ", None, "../../etc", "/etc/passwd", "a\x00b", "x" * 300, "..", "日本"]
BAD_TEXT = ["", "   ", "x" * (schema.MAX_TEXT_CHARS + 500), "nul\x00byte", "bell\x07", "bad \ufffd utf8",
            "quote \" inside", "comma, inside", "new\nline", "tab\tinside"]


@st.composite
def coordinate_pair(draw, city):
    base = CITIES.get(city, (10.0, 10.0))
    kind = draw(st.sampled_from(["ok", "ok", "ok", "nan", "inf", "range", "swap", "null", "zero", "text",
                                 "far"]))
    lat = base[0] + draw(st.floats(-0.2, 0.2))
    lon = base[1] + draw(st.floats(-0.2, 0.2))
    if kind == "nan":
        return (math.nan, lon) if draw(st.booleans()) else (lat, math.nan)
    if kind == "inf":
        return (draw(st.sampled_from([math.inf, -math.inf])), lon)
    if kind == "range":
        return (draw(st.sampled_from([91.0, -95.5, 1e9])), draw(st.sampled_from([lon, 181.0, -1e12])))
    if kind == "swap":
        return (lon, lat)
    if kind == "null":
        return (None, lon)
    if kind == "zero":
        return (0.0, 0.0)
    if kind == "text":
        return (draw(st.sampled_from(["abc", "40,7", "", "1e999x"])), lon)
    if kind == "far":
        return (-base[0], lon)
    return (lat, lon)


@st.composite
def item_rows(draw, min_size=0, max_size=25):
    n = draw(st.integers(min_size, max_size))
    rows = []
    for _ in range(n):
        city = draw(st.one_of(st.sampled_from(sorted(CITIES)), st.sampled_from(HOSTILE_CITIES)))
        lat, lon = draw(coordinate_pair(city))
        rows.append({
            "item_id": draw(st.one_of(st.sampled_from(["a", "b", "c", " a ", "", None]),
                                      st.text(min_size=1, max_size=6), st.integers(0, 50).map(str))),
            "name": draw(st.one_of(st.text(max_size=12), st.sampled_from(BAD_TEXT), st.none())),
            "cat1": draw(st.one_of(st.none(), st.sampled_from(["food", "bar", *BAD_TEXT[:3]]))),
            "price": draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                                    st.sampled_from(["cheap", "12.5"]))),
            "province": draw(st.sampled_from([None, "NY", "Tokyo", "SP", "../.."])),
            "city": city,
            "lat": lat,
            "lon": lon,
        })
    return rows


def frame_from_rows(rows: list[dict], columns=None) -> pl.DataFrame:
    """Column-wise frame: a column with mixed Python types becomes text (wrong types)."""
    columns = columns or (list(rows[0]) if rows else ["item_id", "name", "city", "lat", "lon"])
    data = {}
    for col in columns:
        vals = [r.get(col) for r in rows]
        kinds = {type(v) for v in vals if v is not None}
        if kinds <= {float, int}:
            data[col] = pl.Series(col, [None if v is None else float(v) for v in vals], dtype=pl.Float64)
        else:
            data[col] = pl.Series(col, [None if v is None else str(v) for v in vals], dtype=pl.Utf8)
    return pl.DataFrame(data)


def check_items_result(res, n_in: int) -> None:
    valid, q = res.valid, res.quarantine
    assert valid.height + q.height == n_in, "rows lost or invented"
    assert q["reason"].null_count() == 0 and q["field"].null_count() == 0 and q["detail"].null_count() == 0
    assert q["row_index"].n_unique() == q.height
    if q.height:
        assert q["row_index"].min() >= 0 and q["row_index"].max() < n_in
    assert list(valid.schema.items()) == list(schema.CATALOG_SCHEMA.items())
    if valid.height:
        lat, lon = valid["lat"].to_numpy(), valid["lon"].to_numpy()
        assert np.isfinite(lat).all() and np.isfinite(lon).all()
        assert (np.abs(lat) <= 90).all() and (np.abs(lon) <= 180).all()
        assert valid["item_id"].null_count() == 0 and valid["item_id"].is_duplicated().sum() == 0
        assert (valid["item_id"].str.len_chars() > 0).all()
        assert all(is_valid_city_key(k) for k in valid["city_key"].unique().to_list())
        for col in ("name", "city", "item_id"):
            assert (valid[col].str.len_chars().fill_null(0) <= schema.MAX_TEXT_CHARS).all()
            assert not valid[col].str.contains("\x00", literal=True).fill_null(False).any()


@given(rows=item_rows(), drop=st.sampled_from([None, None, None, "lat", "city", "item_id"]))
@SETTINGS
def test_validate_items_frames(rows, drop, figures):
    frame = frame_from_rows(rows)
    figures.add("bad inputs tried")
    figures.add("bad rows in", frame.height)
    if drop is not None:
        frame = frame.drop(drop)
        with pytest.raises(DataValidationError, match=rf"fuzz/items.*'{drop}'"):
            validate_items(frame, source="fuzz/items")
        figures.add("files refused with DataValidationError")
        return
    res = validate_items(frame, source="fuzz/items")
    check_items_result(res, frame.height)
    figures.add("rows quarantined", res.quarantine.height)


@st.composite
def interaction_rows(draw, ids):
    n = draw(st.integers(0, 30))
    pool = [*ids, "unknown", "", None, " a "]
    return [{
        "user_id": draw(st.one_of(st.sampled_from(["u1", "u2", "", None, "u\x00"]), st.text(max_size=4))),
        "item_id": draw(st.sampled_from(pool)),
        "timestamp": draw(st.sampled_from([None, "2024-01-01T10:00:00", "2024-13-45", "yesterday",
                                           "2024-01-01 10:00:00+02:00"])),
        "seq_idx": draw(st.one_of(st.none(), st.integers(-3, 5), st.sampled_from(["two", "1.5"]))),
    } for _ in range(n)]


@given(data=st.data())
@SETTINGS
def test_validate_interactions_frames(data, figures):
    items = validate_items(frame_from_rows(data.draw(item_rows(min_size=1))), source="fuzz/items")
    ids = items.valid["item_id"].to_list()
    rows = data.draw(interaction_rows(ids))
    frame = frame_from_rows(rows, ["user_id", "item_id", "timestamp", "seq_idx"])
    figures.add("bad inputs tried")
    figures.add("bad rows in", frame.height)
    res = validate_interactions(frame, items.valid, source="fuzz/interactions")
    assert res.valid.height + res.quarantine.height == frame.height
    assert res.quarantine["reason"].null_count() == 0
    assert set(res.valid["item_id"].to_list()) <= set(ids)
    assert res.valid["user_id"].null_count() == 0 and (res.valid["user_id"].str.len_chars() > 0).all()
    assert not res.valid.select(pl.all().exclude("city_key")).is_duplicated().any()
    figures.add("rows quarantined", res.quarantine.height)


# -- files through load_source ------------------------------------------------------------------
def _cell(v) -> str:
    return "" if v is None else str(v)


def _write_csv(path: Path, rows: list[dict], sep: str, raw_bytes: bool) -> None:
    cols = ["item_id", "name", "cat1", "price", "province", "city", "lat", "lon"]
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(r[c]) for c in cols])
    data = buf.getvalue().encode("utf-8", "surrogatepass")
    if raw_bytes and rows:  # invalid UTF-8 inside a name
        data = data.replace(b"\n", b"\n", 1)
        head, _, rest = data.partition(b"\n")
        data = head + b"\n" + rest.replace(b",", b",\xff\xfe", 1)
    path.write_bytes(data)


def _json_number(v, strict: bool):
    if strict and isinstance(v, float) and not math.isfinite(v):
        return str(v)  # a sloppy exporter writes "nan" / "inf" strings; NaN tokens are not JSON
    return v


def _write_yelp(folder: Path, rows: list[dict], raw_bytes: bool, strict: bool) -> None:
    lines = []
    for r in rows:
        rec = {"business_id": r["item_id"], "name": r["name"], "categories": r["cat1"], "state": r["province"],
               "city": r["city"], "latitude": _json_number(r["lat"], strict),
               "longitude": _json_number(r["lon"], strict)}
        lines.append(json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if raw_bytes and lines:
        lines[len(lines) // 2] = lines[len(lines) // 2].replace(b'"name"', b'"na\xffme"')
    (folder / "business.json").write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))


def _write_foursquare(path: Path, rows: list[dict], raw_bytes: bool) -> int:
    """TSMC2014 lines (no header, no quoting); returns the number of check-in lines."""
    out = []
    for i, r in enumerate(rows):
        clean = {k: _cell(v).replace("\t", " ").replace("\n", " ").replace("\r", " ") for k, v in r.items()}
        out.append("\t".join([f"u{i % 4}", clean["item_id"] or "", "cat", clean["cat1"] or "Bar", clean["lat"],
                              clean["lon"], "-240", "Tue Apr 03 18:00:09 +0000 2012"]).encode("utf-8", "surrogatepass"))
    if raw_bytes and out:
        out[0] = out[0].replace(b"\tcat\t", b"\tc\xffat\t")
    path.write_bytes(b"\n".join(out) + (b"\n" if out else b""))
    return len(out)


@given(rows=item_rows(), fmt=st.sampled_from(["parquet", "csv", "yelp", "foursquare"]),
       raw_bytes=st.booleans(), with_interactions=st.booleans())
@SETTINGS
def test_file_loaders(rows, fmt, raw_bytes, with_interactions, figures):
    figures.add("bad inputs tried")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_inter_rows = None
        if fmt == "parquet":
            frame_from_rows(rows).write_parquet(folder / "items.parquet")
            spec, bad_file = SourceSpec(kind="folder", path=str(folder)), folder / "items.parquet"
        elif fmt == "csv":
            _write_csv(folder / "items.csv", rows, ",", raw_bytes)
            spec, bad_file = SourceSpec(kind="folder", path=str(folder)), folder / "items.csv"
        elif fmt == "yelp":
            _write_yelp(folder, rows, raw_bytes, strict=with_interactions)
            spec, bad_file = SourceSpec(kind="yelp", path=str(folder)), folder / "business.json"
        else:
            bad_file = folder / "dataset_TSMC2014_NYC.txt"
            n_inter_rows = _write_foursquare(bad_file, rows, raw_bytes)
            spec = SourceSpec(kind="foursquare", path=str(bad_file))
        if fmt in ("parquet", "csv"):
            inter = [{"user_id": f"u{i % 3}", "item_id": r["item_id"]} for i, r in enumerate(rows)]
            if not with_interactions:
                inter = []
            frame_from_rows(inter, ["user_id", "item_id"]).write_parquet(folder / "interactions.parquet")
            n_inter_rows = len(inter)
        figures.add("bad rows in", len(rows))
        try:
            ds = load_source(spec)
            items = validate_items(ds.items, source=f"{ds.name}/items")
            inter = validate_interactions(ds.interactions, items.valid, source=f"{ds.name}/interactions")
        except DataValidationError as exc:
            assert bad_file.name in str(exc), f"error does not name the file: {exc}"
            figures.add("files refused with DataValidationError")
            figures.add(f"files refused: {fmt}")
            if fmt == "yelp":  # a JSON-lines refusal names the first bad line
                assert re.search(r"line \d+|empty", str(exc)), str(exc)
            return
        except Exception:
            figures.add("raw tracebacks")
            raise
        expected_items = len(rows)
        if fmt == "foursquare":  # items are the distinct venues of the check-ins
            expected_items = ds.items.height
            assert expected_items == len({_cell(r["item_id"]).replace("\t", " ").replace("\n", " ")
                                          .replace("\r", " ") or None for r in rows})
        if fmt != "foursquare" or rows:
            check_items_result(items, expected_items)
        lost = expected_items - items.valid.height - items.quarantine.height
        figures.add("rows lost", max(lost, 0))
        figures.add("rows quarantined", items.quarantine.height + inter.quarantine.height)
        if n_inter_rows is not None:
            assert inter.valid.height + inter.quarantine.height == n_inter_rows
        if raw_bytes and rows and fmt in ("csv", "foursquare"):
            assert items.quarantine.height + inter.quarantine.height > 0 or ds.items.height == 0


# -- deterministic edge cases ----------------------------------------------------------------------
def _folder(tmp_path: Path, items: bytes | pl.DataFrame, inter: bytes | pl.DataFrame, ext: str = "csv") -> Path:
    for stem, content in (("items", items), ("interactions", inter)):
        path = tmp_path / f"{stem}.{ext}"
        if isinstance(content, pl.DataFrame):
            content.write_parquet(path) if ext == "parquet" else content.write_csv(path)
        else:
            path.write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("case,items,match", [
    ("empty csv", b"", r"items\.csv.*empty"),
    ("missing lat column", b"item_id,city,lon\n1,NYC,-74\n", r"items\.csv.*'lat'"),
    ("not a csv", b"\x00\x01\x02\xff\xfe" * 50, r"items\.csv"),
    ("unclosed quote", b'item_id,name,city,lat,lon\n1,"abc,NYC,40.7,-74\n2,b,NYC,40.7,-74\n', r"items\.csv"),
])
def test_refused_files_name_file_and_field(tmp_path, case, items, match, figures):
    _folder(tmp_path, items, b"user_id,item_id\nu,1\n")
    figures.add("bad inputs tried")
    with pytest.raises(DataValidationError, match=match):
        load_source(SourceSpec(kind="folder", path=str(tmp_path)))
    figures.add("files refused with DataValidationError")


def test_bad_json_line_is_named(tmp_path, figures):
    good = json.dumps({"business_id": "a", "latitude": 40.7, "longitude": -74.0, "city": "NYC"})
    (tmp_path / "business.json").write_bytes((good + "\n" + good + "\n").encode() + b"{not json}\n")
    figures.add("bad inputs tried")
    with pytest.raises(DataValidationError, match=r"business\.json.*line 3"):
        load_source(SourceSpec(kind="yelp", path=str(tmp_path)))
    (tmp_path / "business.json").write_bytes(good.encode() + b"\n" + good.replace("NYC", "N\xffYC").encode("latin-1"))
    with pytest.raises(DataValidationError, match=r"business\.json.*line 2.*UTF-8"):
        load_source(SourceSpec(kind="yelp", path=str(tmp_path)))
    figures.add("files refused with DataValidationError", 2)


def test_header_only_and_zero_row_parquet_load_empty(tmp_path, figures):
    _folder(tmp_path, b"item_id,name,city,lat,lon\n", b"user_id,item_id\n")
    ds = load_source(SourceSpec(kind="folder", path=str(tmp_path)))
    items = validate_items(ds.items)
    assert items.valid.height == 0 and items.quarantine.height == 0
    assert validate_interactions(ds.interactions, items.valid).valid.height == 0
    pq = tmp_path / "pq"
    pq.mkdir()
    _folder(pq, schema.empty_frame(schema.ITEM_SCHEMA), schema.empty_frame(schema.INTERACTION_SCHEMA), "parquet")
    ds = load_source(SourceSpec(kind="folder", path=str(pq)))
    assert validate_items(ds.items).valid.height == 0
    figures.add("bad inputs tried", 2)


def test_city_with_one_item_and_city_without_interactions(figures):
    items = pl.DataFrame({
        "item_id": ["solo", "t1", "t2", "t3"], "name": ["s", "a", "b", "c"],
        "city": ["Lonely", "Tokyo", "Tokyo", "Tokyo"],
        "lat": [10.0, 35.7, 35.71, 35.72], "lon": [10.0, 139.7, 139.71, 139.72]})
    res = validate_items(items)
    assert res.valid.height == 4 and sorted(res.valid["city_key"].unique()) == ["lonely", "tokyo"]
    inter = validate_interactions(pl.DataFrame({"user_id": ["u"], "item_id": ["t1"]}), res.valid)
    assert inter.valid["city_key"].to_list() == ["tokyo"]  # 'lonely' has zero interactions, no error
    figures.add("bad inputs tried", 2)


def test_invalid_utf8_csv_rows_are_quarantined_not_dropped(tmp_path, figures):
    body = b"item_id,name,city,lat,lon\n1,ok,NYC,40.70,-74.0\n2,caf\xe9,NYC,40.71,-74.0\n3,\xff\xfe,NYC,40.72,-74.0\n"
    _folder(tmp_path, body, b"user_id,item_id\nu\xff,1\nu2,2\n")
    ds = load_source(SourceSpec(kind="folder", path=str(tmp_path)))
    items = validate_items(ds.items)
    assert items.valid["item_id"].to_list() == ["1"]
    assert items.quarantine["reason"].to_list() == ["invalid_utf8", "invalid_utf8"]
    assert items.quarantine["field"].to_list() == ["name", "name"]
    inter = validate_interactions(ds.interactions, items.valid)
    assert inter.valid.height == 0 and sorted(inter.quarantine["reason"]) == ["invalid_utf8", "unknown_item"]
    figures.add("bad inputs tried")
    figures.add("bad rows in", 5)
    figures.add("rows quarantined", 4)


# -- structural hostility: BOMs, duplicate headers, nested columns, epoch times, mixed types ---------
STRUCT_SETTINGS = settings(max_examples=900, deadline=None, derandomize=True,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STRUCT_KINDS = ["bom", "duplicate_header", "nested_lat", "epoch_s", "epoch_ms", "mixed_types", "bom_epoch"]


def _clean_rows(rows: list[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        lat, lon = r["lat"], r["lon"]
        out.append({"item_id": f"i{i}", "name": _cell(r["name"]).replace("\n", " ")[:40] or "x",
                    "city": "New York", "lat": lat if isinstance(lat, float) else 40.7,
                    "lon": lon if isinstance(lon, float) else -74.0})
    return out


@given(rows=item_rows(min_size=1, max_size=12), kind=st.sampled_from(STRUCT_KINDS),
       epoch=st.integers(1_262_304_000, 1_893_456_000))
@STRUCT_SETTINGS
def test_structural_hostility_is_refused_clearly_or_loaded_without_loss(tmp_path_factory, rows, kind, epoch,
                                                                         figures):
    figures.add("bad inputs tried")
    folder = tmp_path_factory.mktemp("struct")
    items = _clean_rows(rows)
    n = len(items)
    header = ["item_id", "name", "city", "lat", "lon"]
    lines = [",".join(header)] + [
        ",".join([r["item_id"], '"' + r["name"].replace('"', "'") + '"', r["city"], repr(r["lat"]), repr(r["lon"])])
        for r in items]
    inter = {"user_id": [f"u{i % 3}" for i in range(n)], "item_id": [r["item_id"] for r in items],
             "timestamp": [epoch + 60 * i for i in range(n)]}
    expect_error = None
    if kind in ("bom", "bom_epoch"):
        data = b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
    elif kind == "duplicate_header":
        lines[0] = lines[0] + ",lat"
        lines[1:] = [ln + ",1.0" for ln in lines[1:]]
        data = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
        expect_error = "lat"
    elif kind == "mixed_types":  # every other latitude is text
        lines[1:] = [ln if i % 2 else ln.replace(repr(items[i]["lat"]), "forty") for i, ln in enumerate(lines[1:])]
        data = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
    else:
        data = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
    if kind == "nested_lat":
        pl.DataFrame({"item_id": [r["item_id"] for r in items], "name": [r["name"] for r in items],
                      "city": [r["city"] for r in items], "lat": [[r["lat"]] for r in items],
                      "lon": [r["lon"] for r in items]}).write_parquet(folder / "items.parquet")
    else:
        (folder / "items.csv").write_bytes(data)
    if kind in ("epoch_ms",):
        inter["timestamp"] = [t * 1000 for t in inter["timestamp"]]
    pl.DataFrame(inter).write_parquet(folder / "interactions.parquet")
    figures.add("bad rows in", 2 * n)  # n item rows and n interaction rows
    try:
        ds = load_source(SourceSpec(kind="folder", path=str(folder)))
        res = validate_items(ds.items, source=f"{ds.name}/items")
        ires = validate_interactions(ds.interactions, res.valid, source=f"{ds.name}/interactions")
    except DataValidationError as exc:
        assert expect_error is not None, f"{kind}: refused a loadable file: {exc}"
        assert expect_error in str(exc) and "items." in str(exc), str(exc)
        figures.add("files refused with DataValidationError")
        return
    except Exception:
        figures.add("raw tracebacks")
        raise
    assert expect_error is None, f"{kind}: should have been refused"
    check_items_result(res, n)
    assert ires.valid.height + ires.quarantine.height == n
    figures.add("rows quarantined", res.quarantine.height + ires.quarantine.height)
    if kind in ("bom", "bom_epoch", "epoch_s", "epoch_ms"):
        assert "item_id" in ds.items.columns  # the BOM is not part of the first column's name
        assert not ires.quarantine.filter(pl.col("field") == "timestamp").height  # epochs are times
        ts = ires.valid["timestamp"].drop_nulls()
        assert ts.len() == 0 or ts.min().year >= 2010
    lat_bad = set(res.quarantine.filter(pl.col("field") == "lat")["row_index"].to_list())
    if kind == "nested_lat":  # a list-typed column loads; every row is quarantined as wrong_type naming lat
        assert res.valid.height == 0 and lat_bad == set(range(n))
        assert set(res.quarantine["reason"].to_list()) == {"wrong_type"}
    if kind == "mixed_types":  # every text latitude is quarantined naming lat; numeric ones are judged on range
        assert set(range(0, n, 2)) <= lat_bad
