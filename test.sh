#!/usr/bin/env bash
# Set up (first time) and run every check: ruff (lint + format), mypy on core/, functions/, local/ and sdk/, the whole pytest suite.
# Extra arguments go to pytest (e.g. ./test.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")"
# Debian packages the suite uses, when we may install them: real product images for the importer
# tests (Fashion-MNIST) and Chromium for the dashboard's browser tests (Playwright drives it; no
# browser download).
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "==> installing Debian packages: ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
    || echo "    (could not install them; the tests that need them are skipped and say why)"
fi
scripts/setup-venv.sh dev
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy (strict): core/ functions/ local/ sdk/"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
