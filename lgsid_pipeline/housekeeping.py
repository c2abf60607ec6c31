"""Housekeeping: bounded growth of the Delta tables, the artefact versions and the sensor cursor.

- Delta tables: ``optimize.compact()`` merges the small files that per-city predicate
  overwrites leave behind, then ``vacuum`` deletes files no version within the retention
  window references (delta-rs does both; nothing is hand-written). The retention default,
  7 days, keeps time travel and any reader still on an older snapshot safe.
- Artefact versions: every asset publishes a version folder and a ``current.json`` pointer
  to it; the folders beside the current one are pruned to the newest ``keep`` (by
  modification time). The current version is never removed, whatever ``keep`` is.
- The new-items sensor cursor: entries of files that are no longer in the landing folder are
  dropped, so the cursor is bounded by the folder, not by history.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_KEEP_VERSIONS = 3
DEFAULT_RETENTION_HOURS = 168


@dataclass
class PruneReport:
    kept: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)
    bytes_freed: int = 0


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prune_artefact_versions(artifacts: Path, keep: int = DEFAULT_KEEP_VERSIONS, *, dry_run: bool = False) -> PruneReport:
    """Keep the current version and the newest ``keep`` version folders of every published asset."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    report = PruneReport()
    artifacts = Path(artifacts)
    if not artifacts.is_dir():
        return report
    root = artifacts.resolve()
    for pointer in sorted(artifacts.rglob("current.json")):
        try:
            rel = json.loads(pointer.read_text())["path"]
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            continue  # a damaged pointer: leave its asset alone (its own reader reports it)
        current = (root.parent / rel).resolve()
        versions_dir = current.parent
        if not current.is_dir() or root not in current.parents:
            continue
        siblings = [p for p in versions_dir.iterdir() if p.is_dir() and p.resolve() != current]
        siblings.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        name = str(versions_dir.relative_to(root))
        report.kept[name] = [current.name] + [p.name for p in siblings[:keep]]
        gone = siblings[keep:]
        report.removed[name] = [p.name for p in gone]
        for p in gone:
            report.bytes_freed += _size(p)
            if not dry_run:
                shutil.rmtree(p)
    return report


def maintain_delta_table(uri: str, *, retention_hours: int = DEFAULT_RETENTION_HOURS,
                         storage_options: dict | None = None, enforce_retention: bool = True) -> dict:
    """Compact small files and vacuum unreferenced ones in one Delta table; returns the counts."""
    from deltalake import DeltaTable

    dt = DeltaTable(uri, storage_options=storage_options)
    before = len(dt.file_uris())
    compact = dt.optimize.compact()
    removed = dt.vacuum(retention_hours=retention_hours, dry_run=False,
                        enforce_retention_duration=enforce_retention)
    return {"files_before": before, "files_after": len(DeltaTable(uri, storage_options=storage_options).file_uris()),
            "compacted_added": int(compact.get("numFilesAdded", 0)),
            "compacted_removed": int(compact.get("numFilesRemoved", 0)), "vacuumed": len(removed)}


def prune_cursor(cursor: str | None, present: set[str]) -> str | None:
    """The new-items cursor without entries for files no longer in the landing folder."""
    if not cursor:
        return cursor
    seen = json.loads(cursor)
    return json.dumps({k: v for k, v in seen.items() if k in present}, sort_keys=True)
