#!/usr/bin/env bash
# Create (or refresh) the project virtualenv in .venv. Idempotent: re-installs only when
# pyproject.toml changed or when extras are asked for that are not installed yet. torch is
# pinned to the CPU build (torch==2.13.0).
#
#   LGSID_EXTRAS=dev (default)  everything the tests need
#   LGSID_EXTRAS=    (empty)    the runtime only: what `make demo` needs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${LGSID_EXTRAS-dev}
stamp=.venv/.lgsid-installed
hash="$(sha1sum pyproject.toml | cut -c1-40)"
want="$hash-$EXTRAS"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Up to date when the stamp matches, or when only the runtime is wanted and this pyproject.toml
# is installed with any extras.
if [ "$have" != "$want" ] && { [ -n "$EXTRAS" ] || [ "${have%%-*}" != "$hash" ]; }; then
  spec="."
  [ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e "$spec"
  echo "$want" > "$stamp"
fi
