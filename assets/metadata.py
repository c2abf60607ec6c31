"""Turning results into Dagster metadata: typed tables (sortable in the UI, with a column
schema), plots as inline images, scalars as numbers."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl


TABLE_MAX_ROWS = 500


def _column_type(dtype: pl.DataType) -> str:
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    return "string"


def _cell(value):
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if value != value or value in (float("inf"), float("-inf")) else value
    return str(value)  # lists, dates, structs: shown as text


def column_schema(df_or_schema, descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    """A Dagster ``TableSchema`` of a polars frame or schema (for ``dagster/column_schema``)."""
    schema = df_or_schema.schema if isinstance(df_or_schema, pl.DataFrame) else df_or_schema
    descriptions = descriptions or {}
    return dg.TableSchema(columns=[dg.TableColumn(name, _column_type(dtype), description=descriptions.get(name))
                                   for name, dtype in schema.items()])


def table(df: pl.DataFrame, max_rows: int = TABLE_MAX_ROWS) -> dg.MetadataValue:
    """``MetadataValue.table`` with a column schema: the UI sorts it and shows the types.
    Floats stay numbers (NaN / inf become empty cells); the first ``max_rows`` rows are kept."""
    records = [dg.TableRecord({k: _cell(v) for k, v in row.items()}) for row in df.head(max_rows).iter_rows(named=True)]
    return dg.MetadataValue.table(records=records, schema=column_schema(df))


def markdown_table(df: pl.DataFrame, float_fmt: str = "{:.4f}", max_rows: int = 60) -> str:
    if df.height == 0:
        return "_(empty)_"
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.head(max_rows).iter_rows():
        cells = [float_fmt.format(v) if isinstance(v, float) else ("" if v is None else str(v)) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if df.height > max_rows:
        lines.append(f"\n_{df.height - max_rows} more rows_")
    return "\n".join(lines)


def image(path: str | Path, title: str = "plot") -> dg.MetadataValue:
    """A PNG shown inline in the UI's metadata panel."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{data})")


def config_json(obj) -> dg.MetadataValue:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    elif hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    return dg.MetadataValue.json(json.loads(json.dumps(obj, default=str)))


def flat(metrics: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Scalar metrics as metadata entries (numbers stay numbers so the UI can plot them)."""
    out: dict[str, object] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = value
        elif isinstance(value, int | float):
            out[name] = dg.MetadataValue.float(float(value)) if isinstance(value, float) else dg.MetadataValue.int(value)
        elif isinstance(value, str):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(flat(value, prefix=f"{name}."))
        elif isinstance(value, pl.DataFrame):
            out[name] = table(value)
    return out


class Timer:
    """Wall seconds per named step; a name timed again adds up (a step run once per city of a
    batch reports the batch's total, not its last city's)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def metadata(self) -> dict[str, dg.MetadataValue]:
        return {f"seconds.{k}": dg.MetadataValue.float(v) for k, v in self.seconds.items()}
