#!/usr/bin/env bash
# Create .venv and install the project (with the extras named in $1, e.g. "dev").
# Re-runs pip only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  echo "==> installing dependencies (first time: a few minutes; torch is large)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  .venv/bin/python -m pip install --quiet -e "$target"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
