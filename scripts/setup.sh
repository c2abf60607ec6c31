#!/usr/bin/env bash
# Create (or refresh) the project virtualenv in .venv. Idempotent: re-installs only when
# pyproject.toml changed. torch is pinned to the CPU build (torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${LGSID_EXTRAS:-dev}
stamp=.venv/.lgsid-installed
want="$(sha1sum pyproject.toml | cut -c1-40)-$EXTRAS"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
