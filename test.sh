#!/usr/bin/env bash
# Set up (first time) and run every check: ruff (lint + format), mypy on core/, the whole pytest suite.
# Extra arguments go to pytest (e.g. ./test.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")"
# Real product images for the importer tests (Debian's Fashion-MNIST), when we may install it.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "==> installing Debian package dataset-fashion-mnist"
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "    (could not install it; the Fashion-MNIST test will be skipped)"
fi
scripts/setup-venv.sh dev
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy core/"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
