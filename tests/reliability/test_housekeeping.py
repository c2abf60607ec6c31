"""Bounded growth: artefact versions pruned (never the current one), Delta tables compacted and
vacuumed with their content unchanged, the new-items cursor bounded by the landing folder."""

from __future__ import annotations

import json
import os
import time

import polars as pl
import pytest

from lgsid_pipeline.housekeeping import maintain_delta_table, prune_artefact_versions, prune_cursor
from orchestration.maintenance import maintenance_job
from resources import LgsidHome


def _versions(home: LgsidHome, asset: str, names: list[str]):
    for i, n in enumerate(names):
        d = home.artifact_dir(asset, n)
        (d / "weights.bin").write_bytes(b"x" * 100)
        os.utime(d, (time.time() - 1000 + i, time.time() - 1000 + i))  # v1 oldest ... v5 newest
    return [home.artifact_dir(asset, n) for n in names]


def test_prune_keeps_current_and_newest_versions(tmp_path):
    home = LgsidHome(home=str(tmp_path), tables_uri=None)
    dirs = _versions(home, "sid_codebook", ["v1", "v2", "v3", "v4", "v5"])
    home.publish("sid_codebook", dirs[1])  # an older version is current (a rollback)
    runs = home.artifact_dir("recommender_evaluations", "runs")
    ev = _versions(home, "recommender_evaluations/runs", ["r1", "r2"])
    home.publish("recommender_evaluations", ev[0])
    dry = prune_artefact_versions(tmp_path / "artifacts", keep=2, dry_run=True)
    assert dry.removed["sid_codebook"] == ["v3", "v1"] and all(d.exists() for d in dirs)
    rep = prune_artefact_versions(tmp_path / "artifacts", keep=2)
    assert sorted(p.name for p in (tmp_path / "artifacts" / "sid_codebook").iterdir() if p.is_dir()) == ["v2", "v4", "v5"]
    assert rep.kept["sid_codebook"][0] == "v2" and rep.bytes_freed == 200
    assert home.current("sid_codebook") == dirs[1].resolve()
    prune_artefact_versions(tmp_path / "artifacts", keep=0)
    assert [p.name for p in (tmp_path / "artifacts" / "sid_codebook").iterdir() if p.is_dir()] == ["v2"]
    assert [p.name for p in runs.iterdir()] == ["r1"]  # the current run stays, whatever keep is
    with pytest.raises(ValueError, match="keep"):
        prune_artefact_versions(tmp_path / "artifacts", keep=-1)


def test_delta_maintenance_compacts_and_vacuums_without_changing_content(tmp_path):
    uri = str(tmp_path / "t")
    for city in ("a", "b", "c"):
        for rep in range(3):  # three overwrites per city: many small files, most unreferenced
            df = pl.DataFrame({"city_key": [city] * 4, "v": [rep] * 4})
            df.write_delta(uri, mode="append" if rep == 0 else "overwrite",
                           delta_write_options={"predicate": f"city_key = '{city}'"} if rep else None)
    before = pl.read_delta(uri).sort("city_key", "v")
    stats = maintain_delta_table(uri, retention_hours=0, enforce_retention=False)
    assert stats["files_after"] < stats["files_before"] and stats["vacuumed"] > 0
    assert pl.read_delta(uri).sort("city_key", "v").equals(before)
    with pytest.raises(Exception, match="(?i)retention"):
        maintain_delta_table(uri, retention_hours=0)  # below Delta's minimum, unless asked


def test_cursor_is_bounded_by_the_landing_folder():
    cursor = json.dumps({"a.parquet": "1:2", "gone.parquet": "3:4"})
    assert json.loads(prune_cursor(cursor, {"a.parquet"})) == {"a.parquet": "1:2"}
    assert prune_cursor(None, set()) is None


def test_maintenance_job_runs_on_a_home(tmp_path):
    home = LgsidHome(home=str(tmp_path), tables_uri=None)
    dirs = _versions(home, "sid_codebook", ["v1", "v2", "v3"])
    home.publish("sid_codebook", dirs[-1])
    pl.DataFrame({"city_key": ["a"], "item_id": ["x"]}).write_delta(home.table_uri("item_catalog"))
    res = maintenance_job.execute_in_process(
        resources={"home": home},
        run_config={"ops": {"housekeeping": {"config": {"keep_versions": 1, "retention_hours": 0,
                                                        "enforce_retention": False}}}})
    assert res.success
    out = res.output_for_node("housekeeping")
    assert out["artefacts_removed"]["sid_codebook"] == ["v1"] and "item_catalog" in out["tables"]
