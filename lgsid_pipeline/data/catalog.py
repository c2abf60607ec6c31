"""Validation of item catalogs and interaction logs, with a quarantine for rejected rows.

Nothing is dropped silently: every rejected row lands in the quarantine frame with a reason
code, the offending field, a human-readable detail and the raw record as JSON. All checks are
vectorised polars expressions; the first failing check (in the order below) is the row's
reason, and ``detail`` lists every failing check.

Item checks (``ITEM_CHECKS``): missing item id, wrong types, invalid UTF-8, control
characters, absurdly long text, missing city, empty name (only when the dataset has names at
all), missing / non-finite / out-of-range / (0, 0) coordinates, coordinates far from the
item's city (swapped lat/lon, bad geocodes), duplicated item id (the first occurrence is kept).

Interaction checks: missing user or item id, wrong types, interactions naming unknown items
(about 19% of gowalla_nyc check-ins do), exact duplicate rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from lgsid_pipeline import schema
from lgsid_pipeline.geo import haversine_km, lat_out_of_range, out_of_range
from lgsid_pipeline.partitions import UNASSIGNED, city_key_table

TEXT_COLUMNS = ("item_id", "name", "cat1", "cat2", "cat3", "brand", "province", "city",
                "district", "town", "goods", "top_sellers")
FAR_FROM_CITY_KM = 300.0
REQUIRED_ITEM_COLUMNS = ("item_id", "lat", "lon", "city")
REQUIRED_INTERACTION_COLUMNS = ("user_id", "item_id")
_RECORD_CHARS = 4_000


class DataValidationError(ValueError):
    """A whole file cannot be used (missing column, unreadable); names the file and field."""


@dataclass
class ValidationResult:
    valid: pl.DataFrame
    quarantine: pl.DataFrame
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_input(self) -> int:
        return self.valid.height + self.quarantine.height


def _bad_text(col: str) -> list[tuple[str, str, pl.Expr, str]]:
    c = pl.col(col)
    return [
        ("invalid_utf8", col, c.str.contains("\ufffd", literal=True).fill_null(False),
         f"{col} contains bytes that are not valid UTF-8"),
        ("control_characters", col, c.str.contains(r"[\x00-\x08\x0b\x0c\x0e-\x1f]").fill_null(False),
         f"{col} contains NUL or control characters"),
        ("text_too_long", col, (c.str.len_chars() > schema.MAX_TEXT_CHARS).fill_null(False),
         f"{col} is longer than {schema.MAX_TEXT_CHARS} characters"),
    ]


def _coerce(raw: pl.DataFrame, target: dict[str, pl.DataType]) -> tuple[pl.DataFrame, list]:
    """Cast every schema column to its dtype; return the frame and wrong-type checks.

    A value that is present in the raw frame but null after a non-strict cast has the wrong
    type (e.g. ``"abc"`` as a latitude). Binary columns are decoded with replacement, so
    invalid UTF-8 shows up as U+FFFD and is caught by the text checks.
    """
    exprs = []
    texts: dict[str, str] = {}
    for col, dtype in target.items():
        if col not in raw.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(col))
            continue
        src = raw.schema[col]
        expr = pl.col(col)
        if _is_nested(src) and not _is_nested(dtype):
            # A list / struct / object value is never a scalar of the schema (a list-typed
            # ``lat``): every such row is quarantined as wrong_type naming the column and the
            # expected type, instead of a raw polars cast error for the whole file.
            exprs.append(pl.lit(None, dtype=dtype).alias(col))
            texts[col] = f"{col} holds {src} values; expected a single {dtype} value"
            continue
        if src == pl.Binary:
            expr = expr.map_elements(lambda b: b.decode("utf-8", "replace"), return_dtype=pl.Utf8)
        elif dtype == pl.Utf8 and not (src in (pl.Utf8, pl.Null, pl.Categorical) or src.is_numeric()):
            expr = pl.lit(None, dtype=pl.Utf8)  # nested / object values are not text
        if isinstance(dtype, pl.Datetime):
            if src == pl.Utf8:
                # ISO-like text first; a string of digits only is an epoch number (CSV files
                # are read as text), converted like an integer column below.
                digits = pl.when(expr.str.strip_chars().str.contains(r"^-?\d{1,19}$")).then(
                    expr.str.strip_chars().cast(pl.Int64, strict=False))
                expr = pl.coalesce(expr.str.to_datetime(strict=False, time_zone="UTC"),
                                   _epoch_to_utc(digits))
            elif src.is_integer():
                expr = _epoch_to_utc(expr)
            elif isinstance(src, pl.Datetime) and src.time_zone is None:
                expr = expr.dt.replace_time_zone("UTC")
            elif isinstance(src, pl.Datetime):
                expr = expr.dt.convert_time_zone("UTC")
            elif src != pl.Null:
                expr = pl.lit(None, dtype=dtype)  # floats, booleans etc. are not timestamps
            if src.is_integer() or src == pl.Utf8:
                texts[col] = (f"{col} is not a valid {dtype}: expected an ISO date/time or integer "
                              f"epoch seconds/milliseconds (|value| < {_EPOCH_MS_LIMIT:.0e})")
        exprs.append(expr.cast(dtype, strict=False).alias(col))
    coerced = raw.select(exprs)
    checks = []
    for col, dtype in target.items():
        if col not in raw.columns or raw.schema[col] in (dtype, pl.Null):
            continue
        failed = raw[col].is_not_null() & coerced[col].is_null()
        if raw.schema[col] in (pl.Float32, pl.Float64):
            failed = failed & ~raw[col].is_nan()
        checks.append(("wrong_type", col, failed, texts.get(col, f"{col} is not a valid {dtype}")))
    return coerced, checks


_EPOCH_S_LIMIT = 1e11
"""Integer timestamps below this magnitude are epoch *seconds* (1e11 s is the year 5138)."""
_EPOCH_MS_LIMIT = 1e14
"""From ``_EPOCH_S_LIMIT`` up to this magnitude they are epoch *milliseconds* (1e11 ms is March
1973, 1e14 ms the year 5138); anything larger is not a plausible timestamp (wrong_type)."""


def _epoch_to_utc(ints: pl.Expr) -> pl.Expr:
    """Integer epoch timestamps (since 1970-01-01 UTC) -> ``Datetime("us", "UTC")``.

    Each value's unit is read from its magnitude: seconds when ``|v| < 1e11``, milliseconds
    when ``|v| < 1e14``, otherwise null (so the row is quarantined as wrong_type). The
    ranges do not overlap for any date between 1973 and 5138.
    """
    v = ints.cast(pl.Int64, strict=False)
    a = v.abs()
    micros = (pl.when(a < _EPOCH_S_LIMIT).then(v * 1_000_000)
              .when(a < _EPOCH_MS_LIMIT).then(v * 1_000)
              .otherwise(None))
    return micros.cast(pl.Datetime("us", "UTC"))


def _is_nested(dtype: pl.DataType) -> bool:
    return dtype.is_nested() or dtype == pl.Object


def _records(raw: pl.DataFrame, rows: np.ndarray) -> list[str]:
    if len(rows) == 0:
        return []
    sub = raw[rows.tolist()]
    recs = []
    for r in sub.iter_rows(named=True):
        try:
            text = json.dumps(r, default=str, ensure_ascii=False)
        except Exception:  # pragma: no cover - defensive
            text = repr(r)
        recs.append(text[:_RECORD_CHARS])
    return recs


def _quarantine_frame(raw: pl.DataFrame, source: str, rows: np.ndarray, reasons, fields, details,
                      city_keys) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "source": [source] * len(rows),
            "row_index": rows.astype(np.int64),
            "field": fields,
            "reason": reasons,
            "detail": details,
            "record": _records(raw, rows),
            "city_key": city_keys,
        },
        schema=schema.QUARANTINE_SCHEMA,
    )


class _Verdicts:
    """First failing check per row, kept compactly (an int16 per row) so validation of tens of
    millions of rows does not hold per-row Python objects; reasons are built for bad rows only."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self.first = np.full(frame.height, -1, dtype=np.int16)
        self.checks: list[tuple[str, str, str]] = []
        self.details: dict[int, str] = {}  # row -> detail overriding the check's text

    @property
    def bad(self) -> np.ndarray:
        return self.first >= 0

    def add(self, code: str, field: str, mask, text: str) -> np.ndarray:
        """Record ``code`` for rows where ``mask`` (a polars expression or a boolean array/Series)
        holds and no earlier check failed; returns the newly rejected rows."""
        if isinstance(mask, pl.Expr):
            mask = self.frame.select(mask.alias("m"))["m"]
        if isinstance(mask, pl.Series):
            mask = mask.fill_null(False).to_numpy()
        newly = np.asarray(mask, dtype=bool) & (self.first < 0)
        self.first[newly] = len(self.checks)
        self.checks.append((code, field, text))
        return newly

    def describe(self, idx: np.ndarray) -> tuple[list[str], list[str], list[str]]:
        picked = [self.checks[i] for i in self.first[idx]]
        details = [self.details.get(int(r), c[2]) for r, c in zip(idx, picked)]
        return [c[0] for c in picked], [c[1] for c in picked], details


def _require(raw: pl.DataFrame, cols, source: str) -> None:
    missing = [c for c in cols if c not in raw.columns]
    if missing:
        raise DataValidationError(
            f"{source}: required column(s) {missing} missing; found columns {raw.columns}. "
            "Map your columns with the source's column_map option."
        )


def _location_exprs() -> list[pl.Expr]:
    """(province, city) as validation reads them: text, stripped, an empty province is none."""
    city = pl.col("city").cast(pl.Utf8).str.strip_chars()
    province = pl.col("province").cast(pl.Utf8).str.strip_chars()
    return [city.alias("city"), pl.when(province == "").then(None).otherwise(province).alias("province")]


def landed_city_keys(landed: pl.DataFrame, locations: pl.DataFrame) -> pl.DataFrame:
    """``item_id, city_key`` of landed rows, keyed as ``validate_items`` would key them.

    ``locations`` holds the (province, city) of every item of the source (base file and every
    landed file): a key depends on all of them, because same-name cities in two provinces
    are disambiguated. Nothing else is validated here; the run validates every row and
    quarantines what fails, so the sensor's tick reads two columns, not the whole dataset.
    """
    def pairs(df: pl.DataFrame) -> pl.DataFrame:
        df = df.with_columns(*(pl.lit(None, dtype=pl.Utf8).alias(c) for c in ("province", "city")
                               if c not in df.columns))
        return df.with_columns(_location_exprs())
    keys = city_key_table(pl.concat([pairs(locations).select("province", "city"),
                                     pairs(landed).select("province", "city")]))
    rows = pairs(landed).select(pl.col("item_id").cast(pl.Utf8).str.strip_chars(), "province", "city")
    return (rows.join(keys, on=["province", "city"], how="left", nulls_equal=True)
            .select("item_id", pl.col("city_key").fill_null(UNASSIGNED)).unique())


def validate_items(raw: pl.DataFrame, *, source: str = "items",
                   far_from_city_km: float = FAR_FROM_CITY_KM) -> ValidationResult:
    """Validate a raw item frame; returns the catalog (with ``city_key``) and the quarantine."""
    _require(raw, REQUIRED_ITEM_COLUMNS, source)
    raw = raw.with_row_index("__row")
    coerced, type_checks = _coerce(raw, schema.ITEM_SCHEMA)
    coerced = coerced.with_columns(pl.col("item_id").str.strip_chars(), *_location_exprs())
    keys = city_key_table(coerced)
    coerced = coerced.join(keys, on=["province", "city"], how="left", nulls_equal=True)
    coerced = coerced.with_columns(pl.col("city_key").fill_null(UNASSIGNED))

    verdicts = _Verdicts(coerced)
    for code, col, mask, text in _row_checks(coerced, type_checks):
        verdicts.add(code, col, mask, text)
    _flag_far_from_city(coerced, verdicts, far_from_city_km)
    _flag_duplicate_ids(coerced, verdicts)

    bad = verdicts.bad
    bad_idx = np.flatnonzero(bad)
    reasons, fields, details = verdicts.describe(bad_idx)
    quarantine = _quarantine_frame(
        raw.drop("__row"), source, raw["__row"].to_numpy()[bad_idx], reasons, fields, details,
        coerced["city_key"].to_numpy()[bad_idx].tolist(),
    )
    valid = schema.conform(coerced.filter(pl.Series(~bad)), schema.CATALOG_SCHEMA)
    counts = {"input_rows": raw.height, "valid_rows": valid.height, "quarantined_rows": int(bad.sum())}
    counts.update({f"reason:{k}": v for k, v in quarantine["reason"].value_counts().iter_rows()})
    return ValidationResult(valid, quarantine, counts)


def _row_checks(coerced: pl.DataFrame, type_checks: list) -> list:
    """The per-row rules, in the order a row's first reason is reported:
    ``(code, field, mask, text)``."""
    has_names = coerced["name"].is_not_null().any()
    lat, lon = pl.col("lat"), pl.col("lon")
    finite = lat.is_finite() & lon.is_finite()
    checks: list = [
        ("missing_item_id", "item_id", pl.col("item_id").is_null() | (pl.col("item_id") == ""),
         "item_id is missing or empty"),
        *type_checks,
    ]
    for col in TEXT_COLUMNS:
        checks.extend(_bad_text(col))
    checks += [
        ("missing_city", "city", pl.col("city").is_null() | (pl.col("city") == ""),
         "the item has no city, so it belongs to no partition"),
    ]
    if has_names:
        checks.append(("empty_name", "name",
                       pl.col("name").is_null() | (pl.col("name").str.strip_chars() == ""),
                       "name is missing or empty"))
    return checks + [
        ("missing_coordinates", "lat", lat.is_null() | lon.is_null(), "lat or lon is missing"),
        ("non_finite_coordinates", "lat", ~finite, "lat or lon is NaN or infinite"),
        ("coordinates_swapped", "lat", lat_out_of_range(lat) & ~lat_out_of_range(lon),
         "lat is outside [-90, 90] but lon would fit: lat/lon look swapped"),
        ("coordinates_out_of_range", "lat", out_of_range(lat, lon),
         "lat must be in [-90, 90] and lon in [-180, 180]"),
        ("null_island_coordinates", "lat", (lat == 0) & (lon == 0),
         "coordinates are (0, 0), a geocoding failure"),
    ]


def _flag_far_from_city(coerced: pl.DataFrame, verdicts: "_Verdicts", far_from_city_km: float) -> None:
    """Rows far from their city's median location (swapped but in-range lat/lon, bad geocodes);
    the median is taken over rows that passed every earlier rule, in cities of 3 or more."""
    ok = coerced.filter(pl.Series(~verdicts.bad))
    med = ok.group_by("city_key").agg(
        pl.col("lat").median().alias("_mlat"), pl.col("lon").median().alias("_mlon"),
        pl.len().alias("_n"))
    withmed = coerced.select("city_key", "lat", "lon").join(med, on="city_key", how="left",
                                                            maintain_order="left")
    with np.errstate(invalid="ignore"):  # rows with bad coordinates are already rejected
        dist = haversine_km(withmed["lat"].to_numpy(), withmed["lon"].to_numpy(),
                            withmed["_mlat"].to_numpy(), withmed["_mlon"].to_numpy())
    far = (withmed["_n"].fill_null(0).to_numpy() >= 3) & np.nan_to_num(dist > far_from_city_km)
    newly = verdicts.add("far_from_city", "lat", far, "far from the median location of its city")
    for i in np.flatnonzero(newly):
        verdicts.details[int(i)] = (f"{dist[i]:.0f} km from the median location of its city "
                                    f"(limit {far_from_city_km:.0f} km)")


def _flag_duplicate_ids(coerced: pl.DataFrame, verdicts: "_Verdicts") -> None:
    """Duplicated ids: the first valid occurrence is kept, later ones are quarantined."""
    ids = coerced["item_id"]
    dup = (~verdicts.bad) & ids.is_duplicated().to_numpy()
    if not dup.any():
        return
    first_seen = (
        pl.DataFrame({"id": ids, "i": np.arange(coerced.height), "ok": ~verdicts.bad})
        .filter(pl.col("ok")).group_by("id").agg(pl.col("i").min())
    )
    keep = np.zeros(coerced.height, dtype=bool)
    keep[first_seen["i"].to_numpy()] = True
    verdicts.add("duplicate_item_id", "item_id", dup & ~keep,
                 "item_id already used by an earlier row (first occurrence kept)")


def _later_duplicates(frame: pl.DataFrame, cols: list[str]) -> np.ndarray:
    """Rows that repeat an earlier row exactly on ``cols``: a 64-bit row hash finds candidates,
    which are then compared exactly (so a hash collision never rejects a row)."""
    h = frame.select(pl.struct(cols).hash(seed=0).alias("h"))["h"]
    out = np.zeros(frame.height, dtype=bool)
    cand = np.flatnonzero(h.is_duplicated().to_numpy())
    if len(cand):
        sub = frame[cand].select(cols)
        out[cand] = ~sub.select(pl.struct(cols).is_first_distinct().alias("f"))["f"].to_numpy()
    return out


def validate_interactions(raw: pl.DataFrame, catalog: pl.DataFrame, *,
                          source: str = "interactions") -> ValidationResult:
    """Validate interactions against a validated catalog (``item_id``, ``city_key``)."""
    _require(raw, REQUIRED_INTERACTION_COLUMNS, source)
    raw = raw.with_row_index("__row")
    coerced, type_checks = _coerce(raw, schema.INTERACTION_SCHEMA)
    coerced = coerced.with_columns(pl.col("user_id").str.strip_chars(), pl.col("item_id").str.strip_chars())
    known = catalog.select("item_id", "city_key").unique("item_id")
    coerced = coerced.join(known, on="item_id", how="left", maintain_order="left")
    checks: list = [
        ("missing_user_id", "user_id", pl.col("user_id").is_null() | (pl.col("user_id") == ""),
         "user_id is missing or empty"),
        ("missing_item_id", "item_id", pl.col("item_id").is_null() | (pl.col("item_id") == ""),
         "item_id is missing or empty"),
        *type_checks,
        *_bad_text("user_id"),
        ("unknown_item", "item_id", pl.col("city_key").is_null(),
         "item_id is not in the validated catalog (unknown or quarantined item)"),
    ]
    verdicts = _Verdicts(coerced)
    for code, col, mask, text in checks:
        verdicts.add(code, col, mask, text)
    verdicts.add("duplicate_interaction", "*", _later_duplicates(coerced, list(schema.INTERACTION_SCHEMA)),
                 "exact duplicate of an earlier interaction row")
    bad = verdicts.bad
    bad_idx = np.flatnonzero(bad)
    reasons, fields, details = verdicts.describe(bad_idx)
    quarantine = _quarantine_frame(
        raw.drop([c for c in raw.columns if c.startswith("__")]), source,
        raw["__row"].to_numpy()[bad_idx], reasons, fields, details,
        coerced["city_key"].fill_null(UNASSIGNED).to_numpy()[bad_idx].tolist(),
    )
    coerced = coerced.with_columns(pl.Series("source_row", raw["__row"], dtype=pl.Int64))
    valid = schema.conform(coerced.filter(pl.Series(~bad)), schema.INTERACTIONS_TABLE_SCHEMA)
    counts = {"input_rows": raw.height, "valid_rows": valid.height, "quarantined_rows": int(bad.sum())}
    counts.update({f"reason:{k}": v for k, v in quarantine["reason"].value_counts().iter_rows()})
    return ValidationResult(valid, quarantine, counts)
