"""Concurrent writers of one Delta table: every commit lands, nobody loses anybody's rows.

- Two ``lgsid materialize`` processes refresh different cities of the same home at once.
- Three processes write different city partitions of fresh tables through the pipeline's IO
  manager, released at the same instant (the upstream handler's first write is an unfiltered
  overwrite, so racing creators used to wipe each other's cities; ``resources.storage``
  creates the table first and retries commit conflicts).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]

IO_CHILD = r'''
import importlib.util, os, sys, time, numpy as np, polars as pl, dagster as dg
spec = importlib.util.spec_from_file_location(
    "lgsid_storage", os.path.join(os.environ["LGSID_REPO"], "resources", "storage.py"))
storage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(storage)
home, city, n_tables, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
parts = dg.StaticPartitionsDefinition(["c0", "c1", "c2", "c3"])
assets = []
for t in range(n_tables):
    @dg.asset(name=f"race_{t}", partitions_def=parts, metadata={"partition_expr": "city_key"})
    def _a(context) -> pl.DataFrame:
        n = 5_000
        return pl.DataFrame({"city_key": [context.partition_key] * n, "x": np.arange(n, dtype=np.int64)})
    assets.append(_a)
inst = dg.DagsterInstance.ephemeral()
io = storage.delta_io_manager(home)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
for a in assets:
    res = dg.materialize([a], partition_key=city, instance=inst, resources={"io_manager": io})
    assert res.success
print("done", flush=True)
'''


def test_parallel_cli_materialize_of_different_cities(tmp_path, child_env, figures):
    from resources import DataSource

    home = tmp_path / "home"
    cities = ["springfield-illinois", "portland"]
    procs = [subprocess.Popen(
        [PYTHON, "-m", "orchestration.cli", "materialize", "--home", str(home), "--preset", "test",
         "--select", "item_catalog,user_interactions,catalog_quarantine", "--cities", city,
         "--log-level", "ERROR"], cwd=str(REPO), env=child_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for city in cities]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    items, inter, _ = DataSource(kind="generator", preset="test", seed=0).validated()
    for table, expected in (("item_catalog", items.valid), ("user_interactions", inter.valid)):
        got = pl.read_delta(str(home / "delta" / "lgsid" / table))
        assert sorted(got["city_key"].unique().to_list()) == sorted(cities)
        for city in cities:
            want = expected.filter(pl.col("city_key") == city)
            have = got.filter(pl.col("city_key") == city)
            assert have.height == want.height > 0, (table, city)
            assert have.sort(pl.all()).equals(want.sort(pl.all()).select(have.columns))
    figures.add("concurrent materialize runs without loss", len(cities))


def test_racing_first_writes_through_io_manager(tmp_path, child_env, figures):
    home = tmp_path / "home"
    go = tmp_path / "go"
    n_tables, cities = 4, ["c0", "c1", "c2"]
    procs = [subprocess.Popen([PYTHON, "-c", IO_CHILD, str(home), city, str(n_tables), str(go)],
                              env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for city in cities]
    try:
        for p in procs:
            line = p.stdout.readline()
            assert line.strip() == "ready", p.stderr.read()[-3000:]
        go.write_text("go")  # release all writers at once
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and "done" in out, err[-3000:]
    for t in range(n_tables):
        df = pl.read_delta(str(home / "delta" / "lgsid" / f"race_{t}"))
        counts = dict(df.group_by("city_key").len().iter_rows())
        assert counts == {c: 5_000 for c in cities}, (t, counts)
        figures.add("concurrent first writes without loss", len(cities))
    figures.add("concurrent materialize runs without loss", len(cities) * n_tables)


def test_retry_helper_classifies_conflicts():
    from deltalake.exceptions import CommitFailedError, DeltaError

    from resources.storage import _is_commit_conflict

    assert _is_commit_conflict(CommitFailedError("Failed to commit transaction: 3"))
    assert _is_commit_conflict(DeltaError("Transaction failed: version already exists"))
    assert not _is_commit_conflict(DeltaError("Schema mismatch"))
    assert not _is_commit_conflict(ValueError("concurrent"))
