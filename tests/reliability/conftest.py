"""Figures of the reliability suite: inputs tried, faults injected, concurrent runs.

Tests record counts through the ``figures`` fixture; the totals are printed at the end of the
run (terminal summary), so ``pytest tests/reliability`` shows what was exercised.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

_FIGURES: dict[str, int] = defaultdict(int)


class Figures:
    def add(self, key: str, n: int = 1) -> None:
        _FIGURES[key] += int(n)


@pytest.fixture(scope="session")
def figures() -> Figures:
    return Figures()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: repo importable, one thread, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["LGSID_REPO"] = str(REPO)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    return subprocess_env()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _FIGURES:
        return
    tr = terminalreporter
    tr.section("reliability figures")
    for key in sorted(_FIGURES):
        tr.write_line(f"{key}: {_FIGURES[key]}")
    tried = _FIGURES.get("bad inputs tried", 0)
    if tried:
        tr.write_line(
            f"SUMMARY bad inputs tried={tried} rows_in={_FIGURES.get('bad rows in', 0)} "
            f"quarantined={_FIGURES.get('rows quarantined', 0)} "
            f"clear_errors={_FIGURES.get('files refused with DataValidationError', 0)} "
            f"rows_lost={_FIGURES.get('rows lost', 0)} raw_tracebacks={_FIGURES.get('raw tracebacks', 0)}")
    kills = _FIGURES.get("SIGKILLs during Delta writes survived", 0) + _FIGURES.get("training runs killed and resumed", 0)
    same_city = _FIGURES.get("concurrent same-city runs, one complete version", 0)
    refit = _FIGURES.get("refit plans checked", 0)
    if kills or same_city or refit:
        tr.write_line(
            f"SUMMARY kills survived={kills} concurrent same-city runs={same_city} "
            f"refit plans checked={refit} (dependencies ordered={_FIGURES.get('refit dependencies ordered', 0)})")
