#!/usr/bin/env bash
# Set up (first time) and run the service locally: embedded S3 + sample catalog + API + docs UI.
# Extra arguments go to `python -m local serve` (e.g. --port 8080 --sample 500).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh
args=("$@")
[[ " ${args[*]-} " == *" --sample "* ]] || args=(--sample 200 "${args[@]+"${args[@]}"}")
exec .venv/bin/python -m local serve "${args[@]}"
