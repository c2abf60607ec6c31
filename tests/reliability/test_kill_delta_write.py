"""SIGKILL in the middle of a Delta write: the table is at the old or the new version, never partial.

A child process overwrites one city partition of a table again and again (each version has a
distinct ``v`` and a full set of rows), printing ``committed v`` after each commit. The parent
kills it at random moments, then reads the table: the partition holds exactly one complete
version (the last reported one or the one in flight), the other partition is untouched, and
the next writer succeeds. Once with ``write_deltalake`` (the predicate overwrite the IO manager
performs) and once through the pipeline's own Dagster IO manager.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

PYTHON = sys.executable

N_ROWS = 100_000

WRITER = r'''
import sys, polars as pl, numpy as np
from deltalake import write_deltalake
table, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def frame(city, v):
    x = np.arange(n, dtype=np.int64)
    return pl.DataFrame({"city_key": [city] * n, "v": np.full(n, v, dtype=np.int64), "x": x,
                         "pad": pl.Series(np.char.add("row-", x.astype(str))).cast(pl.Utf8)})
print("ready", flush=True)
for v in range(start, start + 1000):
    write_deltalake(table, frame("big", v).to_arrow(), mode="overwrite", partition_by=["city_key"],
                    predicate="city_key = 'big'")
    print(f"committed {v}", flush=True)
'''

IO_WRITER = r'''
import importlib.util, os, sys, numpy as np, polars as pl, dagster as dg
# resources/storage.py by path (it imports the resources package, torch included: about 1.3 s of start-up).
spec = importlib.util.spec_from_file_location(
    "lgsid_storage", os.path.join(os.environ["LGSID_REPO"], "resources", "storage.py"))
storage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(storage)
delta_io_manager = storage.delta_io_manager
home, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
parts = dg.StaticPartitionsDefinition(["big", "other"])
state = {"v": start}
@dg.asset(partitions_def=parts, metadata={"partition_expr": "city_key"}, io_manager_key="io_manager")
def killed_table(context) -> pl.DataFrame:
    x = np.arange(n, dtype=np.int64)
    return pl.DataFrame({"city_key": [context.partition_key] * n,
                         "v": np.full(n, state["v"], dtype=np.int64), "x": x})
inst = dg.DagsterInstance.ephemeral()
print("ready", flush=True)
for v in range(start, start + 1000):
    state["v"] = v
    for key in ["big"]:
        res = dg.materialize([killed_table], partition_key=key, instance=inst,
                             resources={"io_manager": delta_io_manager(home)})
        assert res.success
    print(f"committed {v}", flush=True)
'''


def _run_and_kill(cmd: list[str], delay: float, env: dict) -> list[int]:
    """Start ``cmd``, SIGKILL it ``delay`` s after it reports ready; versions it reported committed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return [int(tok.split()[1]) for tok in out.splitlines() if tok.startswith("committed")]


def _check_partition(df: pl.DataFrame, city: str, allowed: set[int], n: int) -> int:
    part = df.filter(pl.col("city_key") == city)
    assert part.height == n, f"{city}: {part.height} rows, expected {n} (partial write visible)"
    versions = part["v"].unique().to_list()
    assert len(versions) == 1, f"{city}: rows of several versions mixed: {versions}"
    assert versions[0] in allowed, f"{city}: version {versions[0]} not in {allowed}"
    assert part["x"].sort().to_list() == list(range(n))
    return versions[0]


def _write_other(table: Path) -> None:
    from deltalake import write_deltalake

    other = pl.DataFrame({"city_key": ["other"] * 1000, "v": [-1] * 1000, "x": list(range(1000)),
                          "pad": ["o"] * 1000})
    write_deltalake(str(table), other.to_arrow(), mode="overwrite", partition_by=["city_key"],
                    predicate="city_key = 'other'")


def test_sigkill_during_write_deltalake(tmp_path, figures, child_env):
    rng = random.Random(1234)
    table = tmp_path / "table"
    _write_other(table)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = child_env
    current: int | None = None
    start = 0
    kills = 5
    seen_orphans: set[str] = set()
    for _ in range(kills):
        committed = _run_and_kill([PYTHON, str(script), str(table), str(start), str(N_ROWS)],
                                  rng.uniform(0.05, 1.5), env)
        df = pl.read_delta(str(table))
        allowed = {start + len(committed)}  # the write in flight may or may not have committed
        allowed.add(committed[-1] if committed else current)
        got = _check_partition(df, "big", {a for a in allowed if a is not None}, N_ROWS)
        _check_partition(df, "other", {-1}, 1000)
        current, start = got, start + len(committed) + 1
        figures.add("SIGKILLs during Delta writes survived")
        on_disk = {p.name for p in table.rglob("*.parquet")}
        live = {Path(f).name for f in DeltaTable(str(table)).file_uris()}
        orphans = len(on_disk - live - seen_orphans)
        seen_orphans |= on_disk - live
        if orphans or len(committed) == 0:
            figures.add("kills that left uncommitted data files (torn writes, invisible)", orphans > 0)
    # A clean re-run after the last kill commits and the table stays consistent.
    subprocess.run([PYTHON, "-c", WRITER.replace("range(start, start + 1000)", "range(start, start + 1)"),
                    str(table), str(start), str(N_ROWS)], check=True, env=env, capture_output=True)
    df = pl.read_delta(str(table))
    assert _check_partition(df, "big", {start}, N_ROWS) == start
    _check_partition(df, "other", {-1}, 1000)


def test_sigkill_during_io_manager_write(tmp_path, figures, child_env):
    rng = random.Random(99)
    home = tmp_path / "home"
    script = tmp_path / "io_writer.py"
    script.write_text(IO_WRITER)
    env = child_env
    table = home / "delta" / "lgsid" / "killed_table"
    n = 60_000
    once = IO_WRITER.replace("range(start, start + 1000)", "range(start, start + 1)")
    from deltalake import write_deltalake

    first = pl.DataFrame({"city_key": ["other"] * n + ["big"] * n, "v": [0] * (2 * n),
                          "x": list(range(n)) * 2})
    write_deltalake(str(table), first.to_arrow(), mode="overwrite", partition_by=["city_key"])
    current, start = 0, 1
    for _ in range(2):
        committed = _run_and_kill([PYTHON, str(script), str(home), str(start), str(n)],
                                  rng.uniform(0.5, 2.5), env)
        df = pl.read_delta(str(table))
        allowed = {start + len(committed), committed[-1] if committed else current}
        got = _check_partition(df, "big", allowed, n)
        _check_partition(df, "other", {0}, n)
        current, start = got, start + len(committed) + 1
        figures.add("SIGKILLs during Delta writes survived")
    subprocess.run([PYTHON, "-c", once, str(home), str(start), str(n)], check=True, env=env,
                   capture_output=True)
    df = pl.read_delta(str(table))
    assert _check_partition(df, "big", {start}, n) == start
    _check_partition(df, "other", {0}, n)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with pytest")
