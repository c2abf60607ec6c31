"""docs/data.md is the input/output contract: its tables must match the code, and its worked
example must load exactly as it says."""

import json
import re
from pathlib import Path

import polars as pl

from lgsid_pipeline.data import catalog, sources
from lgsid_pipeline import schema
from lgsid_pipeline.serving import index as serving

DOC = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(title)
    nxt = DOC.find("\n## ", start + 1)
    return DOC[start: nxt if nxt > 0 else None]


def _first_column(section: str) -> list[str]:
    return re.findall(r"^\| ([a-z_0-9*]+) \|", section, flags=re.M)


def _two_column_rows(section: str) -> dict[str, list[str]]:
    return {m[0]: [c.strip() for c in m[1].split(",")]
            for m in re.findall(r"^\| ([a-z_.*]+) \| ([a-z_0-9, ]+) \|$", section, flags=re.M)
            if m[0] not in ("table", "file")}  # not the header row


def test_input_columns_are_the_schemas():
    items = _first_column(_section("## Input: items"))
    items = [c for c in items if c != "column"]
    assert set(items) == set(schema.ITEM_SCHEMA)
    required = re.findall(r"^\| ([a-z_]+) \| [a-z ()]+ \| yes \|", _section("## Input: items"), flags=re.M)
    assert set(required) == set(catalog.REQUIRED_ITEM_COLUMNS)
    inter = [c for c in _first_column(_section("## Input: interactions")) if c != "column"]
    assert set(inter) == set(schema.INTERACTION_SCHEMA)
    required = re.findall(r"^\| ([a-z_]+) \| [a-z ()]+ \| yes \|", _section("## Input: interactions"), flags=re.M)
    assert set(required) == set(catalog.REQUIRED_INTERACTION_COLUMNS)


def test_every_quarantine_reason_is_documented_and_nothing_else():
    """The reason codes in the docs are exactly the codes the checks can emit."""
    code = Path(catalog.__file__).read_text()
    # (code, field, mask, text) check tuples, the wrong_type checks and the verdicts added directly
    emitted = set(re.findall(r'\("([a-z_0-9]+)", (?:"[a-z_*]+"|col),\s*(?:pl\.|c\.|lat|out_of_range|\(|~|failed)', code))
    emitted |= set(re.findall(r'verdicts\.add\("([a-z_]+)"', code))
    assert {"wrong_type", "unknown_item", "far_from_city", "duplicate_item_id"} <= emitted
    section = _section("## What is quarantined, and why")
    documented = {r for r in _first_column(section) if r != "reason"}
    assert documented == emitted


def test_output_and_export_columns_are_the_code():
    out = _two_column_rows(_section("## Output tables"))
    assert out["item_catalog"] == list(schema.CATALOG_SCHEMA)
    assert out["user_interactions"] == list(schema.INTERACTIONS_TABLE_SCHEMA)
    assert out["catalog_quarantine"] == list(schema.QUARANTINE_SCHEMA)
    exports = _two_column_rows(_section("## Exports for serving"))
    assert exports["sid_table.*"] == list(serving.SID_COLUMNS)
    assert exports["user_topk.*"] == list(serving.TOPK_COLUMNS)


def test_the_worked_example_loads_as_documented(tmp_path):
    blocks = re.findall(r"`(\w+\.csv)`:\n\n```csv\n(.*?)```", DOC, flags=re.S)
    assert [b[0] for b in blocks] == ["shops.csv", "visits.csv"]
    for name, text in blocks:
        (tmp_path / name).write_text(text)
    cmd = re.search(r"--source-json '(\{.*?\})'", DOC, flags=re.S).group(1)
    cfg = json.loads(cmd)
    spec = sources.SourceSpec(kind=cfg["kind"], items_file=str(tmp_path / cfg["items_file"]),
                              interactions_file=str(tmp_path / cfg["interactions_file"]), column_map=cfg["column_map"])
    raw = sources.load_source(spec)
    items = catalog.validate_items(raw.items)
    inter = catalog.validate_interactions(raw.interactions, items.valid)
    assert items.valid.height == 3 and items.quarantine.height == 0
    assert sorted(items.valid["city_key"].unique().to_list()) == ["kings", "new-york"]
    assert inter.valid.height == 3 and inter.quarantine.height == 0
    # ISO text and epoch seconds in one column both become UTC datetimes
    assert inter.valid["timestamp"].null_count() == 0
    assert inter.valid.filter(pl.col("user_id") == "u2")["timestamp"][0].year == 2025
