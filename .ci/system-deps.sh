#!/usr/bin/env bash
# System packages the deployment tests need (Debian/Ubuntu): a PostgreSQL server for
# tests/deployment/test_postgres.py and Chromium for tests/deployment/test_ui_browser.py.
# Idempotent and quiet: installs only what is missing, prints one line per install.
set -euo pipefail

missing=()
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null && ! command -v initdb > /dev/null; then
  missing+=(postgresql)
fi
if ! command -v chromium > /dev/null && ! command -v chromium-browser > /dev/null; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get > /dev/null; then
  echo "system-deps: please install ${missing[*]} (no apt-get on this system)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo > /dev/null; then sudo="sudo"; else
    echo "system-deps: need root (or sudo) to install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq > /dev/null
# The postgresql package's post-install creates a default cluster and may try to start it;
# the tests start their own throwaway server, so the service is not needed.
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
