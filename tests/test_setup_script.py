"""scripts/setup.sh: what it installs for `make demo` (the runtime) and `make test` (dev extras)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path):
    """A copy of the script and pyproject.toml beside a fake .venv whose python logs its pip calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    py = tmp_path / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text('#!/usr/bin/env bash\necho "$*" >> "$(dirname "$0")/../../pip.log"\n')
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def _setup(root: Path, extras: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "LGSID_EXTRAS"}
    if extras is not None:
        env["LGSID_EXTRAS"] = extras
    log = root / "pip.log"
    log.unlink(missing_ok=True)
    subprocess.run(["bash", str(root / "scripts" / "setup.sh")], check=True, env=env, cwd=root)
    return [line for line in log.read_text().splitlines() if " -e " in line] if log.exists() else []


def test_demo_installs_the_runtime_and_test_adds_the_extras(checkout):
    assert _setup(checkout, "") == ["-m pip install --quiet -e ."]  # make demo on a fresh clone
    assert _setup(checkout, "") == []  # up to date
    assert _setup(checkout, None) == ["-m pip install --quiet -e .[dev]"]  # make test adds the extras
    assert _setup(checkout, None) == []
    assert _setup(checkout, "") == []  # dev extras installed: the runtime is there too
    with open(checkout / "pyproject.toml", "a") as fh:
        fh.write("\n# changed\n")
    assert _setup(checkout, "") == ["-m pip install --quiet -e ."]  # a changed pyproject reinstalls
    assert _setup(checkout, "dev") == ["-m pip install --quiet -e .[dev]"]
