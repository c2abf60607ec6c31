"""Where item catalogs and interaction logs come from.

A :class:`SourceSpec` names one of:

- ``generator``: the embedded synthetic local-life world (``world/generator.py``), by preset and seed;
- ``folder``: a folder in the shared schema (``items.parquet`` + ``interactions.parquet``,
  or ``.csv`` / Delta directories of those names), e.g. ``../shared/data/gowalla_nyc``;
- ``files``: explicit item / interaction files (Parquet, CSV or Delta) with a column mapping;
- ``yelp``: the Yelp Open Dataset JSON-lines files (``business.json`` + ``review.json``);
- ``foursquare``: the Foursquare TSMC2014 TSV check-in file.

Every loader returns raw frames; validation and quarantine happen in ``catalog.py``.
Files landed later (the sensor's landing folder) are appended to the items and override rows
with the same ``item_id`` (the newest file wins).
"""

from __future__ import annotations

import csv
import re
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from lgsid_pipeline.data.catalog import (
    REQUIRED_INTERACTION_COLUMNS,
    REQUIRED_ITEM_COLUMNS,
    DataValidationError,
)

log = logging.getLogger(__name__)

SOURCE_KINDS = ("generator", "folder", "files", "yelp", "foursquare")


@dataclass(frozen=True)
class SourceSpec:
    kind: str = "generator"
    path: str | None = None  # folder / yelp folder / foursquare file
    preset: str = "demo"  # generator preset
    seed: int = 0  # generator seed
    items_file: str | None = None
    interactions_file: str | None = None
    column_map: Mapping[str, str] = field(default_factory=dict)  # canonical -> source column
    default_city: str | None = None  # for sources without a city column (Foursquare)
    default_province: str | None = None
    landing_dir: str | None = None

    def describe(self) -> str:
        if self.kind == "generator":
            return f"generator(preset={self.preset}, seed={self.seed})"
        return f"{self.kind}({self.path or self.items_file})"


@dataclass
class RawDataset:
    items: pl.DataFrame
    interactions: pl.DataFrame
    name: str
    items_path: str | None = None  # the file the items came from (named in load errors)
    interactions_path: str | None = None
    landing_errors: list[str] = field(default_factory=list)  # landed files that could not be read


def _read_table(path: Path, what: str) -> pl.DataFrame:
    """Read Parquet, CSV or a Delta directory; a bad file raises a clear error naming it."""
    try:
        if path.is_dir():
            return pl.read_delta(str(path))
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            if path.stat().st_size == 0:
                raise DataValidationError(f"{path}: {what} file is empty")
            _refuse_duplicate_header(path, "\t" if suffix == ".tsv" else ",", what)
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",",
                               infer_schema_length=0, encoding="utf8-lossy",
                               truncate_ragged_lines=True)
        if suffix in (".json", ".jsonl", ".ndjson"):
            size = path.stat().st_size
            if size == 0 or (size <= 65_536 and not path.read_bytes().strip()):
                raise DataValidationError(f"{path}: {what} file is empty")
            return pl.read_ndjson(path, infer_schema_length=10_000)
    except DataValidationError:
        raise
    except FileNotFoundError as exc:
        raise DataValidationError(f"{path}: {what} file not found") from exc
    except Exception as exc:  # polars / arrow / delta parse errors
        where = _first_bad_json_line(path) if path.suffix.lower() in (".json", ".jsonl", ".ndjson") else ""
        raise DataValidationError(
            f"{path}: cannot read {what} file{where} ({type(exc).__name__}: {str(exc)[:500]})") from exc
    raise DataValidationError(f"{path}: unsupported {what} file type {path.suffix!r}")


def _refuse_duplicate_header(path: Path, separator: str, what: str) -> None:
    """A CSV header naming one column twice is refused: polars would silently rename the second
    one (``lat_duplicated_0``) and the pipeline would use whichever came first."""
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        header = next(csv.reader(fh, delimiter=separator), [])
    if header:
        header[0] = header[0].lstrip("\ufeff")
    counts = Counter(header)
    dups = [name for name, n in counts.items() if n > 1]
    if dups:
        cols = ", ".join(repr(d) for d in dups)
        raise DataValidationError(
            f"{path}: {what} file has duplicate column(s) {cols} in its header (line 1); "
            "each column name must appear once")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (write null or a string)")


def _first_bad_json_line(path: Path, max_lines: int = 10_000_000) -> str:
    """`` at line N (reason)`` for the first line of a JSON-lines file that is not one JSON
    object, so a load error names the row; only called after a parse failure."""
    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if lineno > max_lines:
                    break
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
                except UnicodeDecodeError:
                    return f" at line {lineno} (invalid UTF-8)"
                except ValueError as exc:
                    return f" at line {lineno} (not JSON: {exc})"
                if not isinstance(obj, dict):
                    return f" at line {lineno} (a JSON {type(obj).__name__}, not an object)"
    except OSError:
        return ""
    return ""


def _require_columns(df: pl.DataFrame, cols, path: str | None, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if path is not None and missing:
        raise DataValidationError(
            f"{path}: {what} file lacks required column(s) {missing}; found columns {df.columns}. "
            "Map your columns with the source's column_map option.")


def _find(folder: Path, stem: str) -> Path:
    for cand in (f"{stem}.parquet", f"{stem}.csv", stem):
        p = folder / cand
        if p.exists():
            return p
    raise DataValidationError(f"{folder}: no {stem}.parquet, {stem}.csv or Delta folder {stem}/")


def _rename(df: pl.DataFrame, column_map: Mapping[str, str], what: str, path) -> pl.DataFrame:
    if not column_map:
        return df
    missing = [src for src in column_map.values() if src not in df.columns]
    relevant = {canon: src for canon, src in column_map.items() if src in df.columns}
    if missing and not relevant:
        raise DataValidationError(f"{path}: column_map names columns {missing} not present in the {what} file")
    return df.rename({src: canon for canon, src in relevant.items() if src != canon})


def load_folder(path: str | Path, column_map: Mapping[str, str] | None = None) -> RawDataset:
    folder = Path(path)
    if not folder.is_dir():
        raise DataValidationError(f"{folder}: dataset folder does not exist")
    items_path = _find(folder, "items")
    inter_path = _find(folder, "interactions")
    items = _rename(_read_table(items_path, "items"), column_map or {}, "items", items_path)
    inter = _rename(_read_table(inter_path, "interactions"), column_map or {}, "interactions", inter_path)
    return RawDataset(items, inter, folder.name, str(items_path), str(inter_path))


def load_files(items_file: str, interactions_file: str | None, column_map: Mapping[str, str]) -> RawDataset:
    items_path = Path(items_file)
    items = _rename(_read_table(items_path, "items"), column_map, "items", items_path)
    if interactions_file:
        ip = Path(interactions_file)
        inter = _rename(_read_table(ip, "interactions"), column_map, "interactions", ip)
    else:
        inter = pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8})
    return RawDataset(items, inter, items_path.stem, str(items_path), interactions_file or None)


def _split_categories(expr: pl.Expr) -> list[pl.Expr]:
    parts = expr.str.split(",").list.eval(pl.element().str.strip_chars())
    return [parts.list.get(i, null_on_oob=True).alias(f"cat{i + 1}") for i in range(3)]


def load_yelp(folder: str | Path) -> RawDataset:
    """Yelp Open Dataset: ``business.json`` (items) + ``review.json`` (interactions)."""
    folder = Path(folder)
    biz_path = next((folder / n for n in ("business.json", "yelp_academic_dataset_business.json")
                     if (folder / n).exists()), folder / "business.json")
    rev_path = next((folder / n for n in ("review.json", "yelp_academic_dataset_review.json")
                     if (folder / n).exists()), folder / "review.json")
    biz = _read_table(biz_path, "Yelp business")
    for col in ("business_id", "latitude", "longitude", "city"):
        if col not in biz.columns:
            raise DataValidationError(f"{biz_path}: Yelp business file lacks the field {col!r}")
    price = pl.lit(None, dtype=pl.Float64)
    if "attributes" in biz.columns and isinstance(biz.schema["attributes"], pl.Struct):
        fields = [f.name for f in biz.schema["attributes"].fields]
        if "RestaurantsPriceRange2" in fields:
            price = pl.col("attributes").struct.field("RestaurantsPriceRange2").cast(pl.Float64, strict=False)
    cats = pl.col("categories") if "categories" in biz.columns else pl.lit(None, dtype=pl.Utf8)
    items = biz.select(
        pl.col("business_id").cast(pl.Utf8).alias("item_id"),
        (pl.col("name") if "name" in biz.columns else pl.lit(None, dtype=pl.Utf8)).alias("name"),
        *_split_categories(cats.cast(pl.Utf8)),
        price.alias("price"),
        (pl.col("state") if "state" in biz.columns else pl.lit(None, dtype=pl.Utf8)).alias("province"),
        pl.col("city"),
        (pl.col("postal_code").cast(pl.Utf8) if "postal_code" in biz.columns else pl.lit(None, dtype=pl.Utf8)).alias("district"),
        (pl.col("neighborhood") if "neighborhood" in biz.columns else pl.lit(None, dtype=pl.Utf8)).alias("town"),
        pl.col("latitude").alias("lat"),
        pl.col("longitude").alias("lon"),
    )
    if rev_path.exists():
        rev = _read_table(rev_path, "Yelp review")
        for col in ("user_id", "business_id"):
            if col not in rev.columns:
                raise DataValidationError(f"{rev_path}: Yelp review file lacks the field {col!r}")
        inter = rev.select(
            pl.col("user_id").cast(pl.Utf8),
            pl.col("business_id").cast(pl.Utf8).alias("item_id"),
            (pl.col("date").cast(pl.Utf8) if "date" in rev.columns else pl.lit(None, dtype=pl.Utf8)).alias("timestamp"),
        )
    else:
        inter = pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8})
    return RawDataset(items, inter, "yelp")


TSMC_COLUMNS = ["userId", "venueId", "venueCategoryId", "venueCategory", "latitude", "longitude",
                "timezoneOffset", "utcTimestamp"]


def load_foursquare(path: str | Path, city: str | None = None, province: str | None = None) -> RawDataset:
    """Foursquare TSMC2014 (``dataset_TSMC2014_NYC.txt``): tab-separated, no header."""
    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"{p}: Foursquare TSMC2014 file not found")
    if p.stat().st_size == 0:
        raise DataValidationError(f"{p}: Foursquare TSMC2014 file is empty")
    try:
        df = pl.read_csv(p, separator="\t", has_header=False, new_columns=TSMC_COLUMNS,
                         infer_schema_length=0, encoding="utf8-lossy", quote_char=None,
                         truncate_ragged_lines=True)
    except Exception as exc:
        raise DataValidationError(f"{p}: cannot parse Foursquare TSMC2014 TSV ({exc})") from exc
    if city is None:
        stem = p.stem.upper()
        city = "New York" if stem.endswith("NYC") else "Tokyo" if stem.endswith("TKY") else None
        province = province or ("New York" if city == "New York" else "Tokyo" if city == "Tokyo" else None)
    if city is None:
        raise DataValidationError(f"{p}: cannot infer the city; set default_city in the source config")
    ts = pl.col("utcTimestamp").str.to_datetime("%a %b %d %H:%M:%S %z %Y", strict=False, time_zone="UTC")
    checkins = df.with_columns(ts.alias("timestamp"))
    items = (
        checkins.group_by("venueId", maintain_order=True)
        .agg(pl.col("venueCategory").first(), pl.col("latitude").first(), pl.col("longitude").first())
        .select(
            pl.col("venueId").alias("item_id"),
            pl.lit(None, dtype=pl.Utf8).alias("name"),
            pl.col("venueCategory").alias("cat1"),
            pl.col("latitude").alias("lat"),
            pl.col("longitude").alias("lon"),
            pl.lit(province, dtype=pl.Utf8).alias("province"),
            pl.lit(city, dtype=pl.Utf8).alias("city"),
        )
    )
    inter = checkins.select(pl.col("userId").alias("user_id"), pl.col("venueId").alias("item_id"),
                            pl.col("timestamp"))
    return RawDataset(items, inter, p.stem)


def load_generator(preset: str, seed: int) -> RawDataset:
    from lgsid_pipeline.world.generator import generate_world

    world = generate_world(preset, seed=seed)
    return RawDataset(world.items, world.interactions, f"world-{preset}-{seed}")


_SEQUENCE = re.compile(r"^(\d+)")


def landing_sequence(path: Path) -> int | None:
    """The explicit sequence number a landed file's name starts with (``000123-items.parquet``,
    ``20261203T0615-shops.csv`` -> 20261203), or None."""
    m = _SEQUENCE.match(path.name)
    return int(m.group(1)) if m else None


def landing_files(landing_dir: str | Path | None) -> list[Path]:
    """Item files in the landing folder, oldest first.

    The order is explicit where the producer gives one: files whose names start with a
    sequence number are ordered by it, after every unnumbered file; unnumbered files are
    ordered by modification time, then name. (A copy or ``touch`` changes a file's mtime but
    not its number, so numbered landings keep their order through any file transfer.) Inside
    the files, a row's ``updated_at`` column, where the producer writes one, decides between
    versions of an item before file order does (``load_source``).
    """
    if not landing_dir:
        return []
    root = Path(landing_dir)
    if not root.is_dir():
        return []
    files = [p for p in root.iterdir()
             if p.is_file() and p.suffix.lower() in (".parquet", ".csv") and not p.name.startswith(".")]

    def order(p: Path) -> tuple:
        seq = landing_sequence(p)
        return (0, 0, p.stat().st_mtime_ns, p.name) if seq is None else (1, seq, 0, p.name)
    return sorted(files, key=order)


def item_locations(spec: SourceSpec) -> pl.DataFrame:
    """The (province, city) of every base item of ``spec`` (landed files not included).

    Folder and file sources read only those two columns (a column projection of the items
    file); other kinds have no cheaper path than loading their items."""
    mapped = {canon: dict(spec.column_map).get(canon, canon) for canon in ("province", "city")}
    path = None
    if spec.kind == "folder" and spec.path:
        path = _find(Path(spec.path), "items")
    elif spec.kind == "files" and spec.items_file:
        path = Path(spec.items_file)
    if path is not None and path.is_file() and path.suffix.lower() in (".parquet", ".csv"):
        try:
            lazy = (pl.scan_parquet(path) if path.suffix.lower() == ".parquet"
                    else pl.scan_csv(path, infer_schema_length=0, encoding="utf8-lossy",
                                     truncate_ragged_lines=True))
            names = lazy.collect_schema().names()
            cols = [pl.col(src).cast(pl.Utf8).alias(canon) if src in names
                    else pl.lit(None, dtype=pl.Utf8).alias(canon) for canon, src in mapped.items()]
            df = lazy.select(cols).unique().collect()
        except Exception as exc:
            raise DataValidationError(f"{path}: cannot read the items file's location columns ({exc})") from exc
    else:
        df = load_source(replace(spec, landing_dir=None)).items
        df = df.select(*(pl.col(c).cast(pl.Utf8) if c in df.columns else pl.lit(None, dtype=pl.Utf8).alias(c)
                         for c in ("province", "city")))
    if spec.default_city is not None and df["city"].null_count() == df.height:
        df = df.with_columns(pl.lit(spec.default_city).alias("city"), pl.lit(spec.default_province).alias("province"))
    return df.unique()


def read_landing_items(files: list[Path], column_map: Mapping[str, str] | None = None,
                       errors: list[str] | None = None) -> pl.DataFrame | None:
    """Landed item files, concatenated. With ``errors`` given, an unreadable file is skipped
    and its ``DataValidationError`` message appended there; otherwise it raises."""
    frames = []
    for order, f in enumerate(files):
        try:
            df = _rename(_read_table(f, "landed items"), column_map or {}, "landed items", f)
        except DataValidationError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
            continue
        frames.append(df.with_columns(pl.lit(order).alias("__landing_order")))
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed")


def _as_sequence(col: pl.Series) -> pl.Series:
    """``updated_at`` as a comparable integer: a number as it is, a datetime or ISO text as
    microseconds since the epoch; a missing or unreadable value sorts oldest."""
    oldest = -(2 ** 62)
    if col.dtype.is_numeric():
        return col.cast(pl.Float64).fill_nan(None).fill_null(float(oldest)).cast(pl.Int64)
    if col.dtype == pl.Datetime or col.dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.epoch("us").fill_null(oldest)
    text = col.cast(pl.Utf8).str.strip_chars()
    as_num = text.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)
    try:
        as_time = text.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("us")
    except Exception:  # a format polars cannot infer: read as numbers only
        as_time = pl.Series(text.name, [None] * text.len(), dtype=pl.Int64)
    return as_time.fill_null(as_num).fill_null(oldest)


def load_source(spec: SourceSpec) -> RawDataset:
    if spec.kind not in SOURCE_KINDS:
        raise DataValidationError(f"source kind {spec.kind!r} is not one of {SOURCE_KINDS}")
    if spec.kind == "generator":
        ds = load_generator(spec.preset, spec.seed)
    elif spec.kind == "folder":
        if not spec.path:
            raise DataValidationError("source kind 'folder' needs path")
        ds = load_folder(spec.path, spec.column_map)
    elif spec.kind == "files":
        if not spec.items_file:
            raise DataValidationError("source kind 'files' needs items_file")
        ds = load_files(spec.items_file, spec.interactions_file, spec.column_map)
    elif spec.kind == "yelp":
        ds = load_yelp(spec.path or ".")
    else:
        ds = load_foursquare(spec.path or "", spec.default_city, spec.default_province)
    if spec.default_city is not None and "city" not in ds.items.columns:
        ds.items = ds.items.with_columns(pl.lit(spec.default_city).alias("city"),
                                         pl.lit(spec.default_province).alias("province"))
    # A file without a required column fails here, naming the file (not deep in validation).
    _require_columns(ds.items, REQUIRED_ITEM_COLUMNS, ds.items_path, "items")
    _require_columns(ds.interactions, REQUIRED_INTERACTION_COLUMNS, ds.interactions_path, "interactions")
    # One corrupt landed file must not block the base data and every other landed file: it is
    # skipped, logged and listed in ``landing_errors`` (the sensor also reports it by name).
    landed = read_landing_items(landing_files(spec.landing_dir), spec.column_map, ds.landing_errors)
    for err in ds.landing_errors:
        log.warning("skipping unreadable landed file: %s", err)
    if landed is not None:
        base = ds.items.with_columns(pl.lit(-1).alias("__landing_order"))
        merged = pl.concat([base, landed], how="diagonal_relaxed")
        if "item_id" in merged.columns:
            # A row landed later supersedes older versions of the same item (not a duplicate);
            # a producer's ``updated_at`` decides first where rows carry one. Duplicates inside
            # one file are left for validation to quarantine.
            if "updated_at" in merged.columns:
                stamp = _as_sequence(merged["updated_at"])
                merged = merged.with_columns(stamp.alias("__updated"))
                merged = merged.filter(pl.col("item_id").is_null() | (
                    pl.col("__updated") == pl.col("__updated").max().over("item_id"))).drop("__updated")
            newest = pl.col("__landing_order").max().over("item_id")
            merged = merged.filter(pl.col("item_id").is_null() | (pl.col("__landing_order") == newest))
        ds.items = merged.drop("__landing_order")
    return ds


def describe_json(spec: SourceSpec) -> str:
    return json.dumps({k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.__dict__.items()})
