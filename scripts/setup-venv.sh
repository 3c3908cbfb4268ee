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
  # The only torch + torchvision pair that installs offline here is PyPI's CUDA build: the venv
  # takes ~7.1 GiB (3.2 GiB of it NVIDIA libraries torch needs even to import); the disk's use
  # peaks ~7.4 GiB above where it started while pip installs.
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
    echo "!!  only $((free_kb / 1024)) MB free on $(df -P . | awk 'NR==2 {print $6}'); installing needs ~8 GB" >&2
    echo "!!  (free some space, or the install below fails with 'No space left on device')" >&2
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  .venv/bin/python -m pip install --quiet -e "$target"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
