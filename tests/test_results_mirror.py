"""benchmarks/RESULTS.md mirrors benchmarks/results/*.md (benchmarks/sync_results.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sync_results", ROOT / "benchmarks" / "sync_results.py")
sync_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_results)


def test_results_md_is_in_step_with_its_parts():
    drifted = sync_results.sync(check=True)
    assert not drifted, f"run `python benchmarks/sync_results.py`: {drifted} drifted from RESULTS.md"


def test_sync_demotes_headings_outside_code_fences_only(tmp_path):
    parts = tmp_path / "results"
    parts.mkdir()
    (parts / "a.md").write_text("# A\n\ntext\n\n```\n# a shell comment\n```\n\n## A.1\n")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Top\n\n---\n\n## A\n\nold\n\n---\n\n## Tail\n")
    assert sync_results.sync(results, parts, check=True) == ["a.md"]
    assert "old" in results.read_text()  # check changes nothing
    assert sync_results.sync(results, parts) == ["a.md"]
    text = results.read_text()
    assert "## A\n\ntext\n\n```\n# a shell comment\n```\n\n### A.1\n\n---\n\n## Tail\n" in text
    assert sync_results.sync(results, parts, check=True) == []
