"""Turning results into Dagster metadata: tables as markdown, plots as inline images."""

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


def md_table(df: pl.DataFrame, float_fmt: str = "{:.4f}", max_rows: int = 60) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(df, float_fmt, max_rows))


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
            out[name] = md_table(value)
    return out


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)

    def metadata(self) -> dict[str, dg.MetadataValue]:
        return {f"seconds.{k}": dg.MetadataValue.float(v) for k, v in self.seconds.items()}
