#!/usr/bin/env bash
# The GPU embedding benchmark as one prepared run on a lent CUDA machine whose python3 has torch
# and torchvision but not this project's other packages: those travel as wheels in .whl/
# (see the GPU section of the README). Writes JSON results under ${OUT:-bench/results}.
# Fill .whl/ beforehand on a machine with a registry (versions as in your venv; pydantic-core
# needs the target's Python, e.g. --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all:):
#   pip download --no-deps -d .whl open_clip_torch ftfy wcwidth pydantic pydantic-core \
#       pydantic-settings python-dotenv typing-inspection annotated-types
set -u
OUT=${OUT:-bench/results}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:.
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv
echo "cores: $(nproc)"; df -h /dev/shm | tail -1
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 -m bench.embed --device cuda --images 16384 --batch 512 --pool "${POOL:-4,8,14}" \
  --json "$OUT/embed-gpu-$stamp.json" 2>&1 | grep -v "RANDOM weights"
if [ -n "${MPS:-}" ] && command -v nvidia-cuda-mps-control >/dev/null; then
  nvidia-cuda-mps-control -d && sleep 1
  python3 -m bench.embed --device cuda --images 16384 --batch 512 --pool "${MPS}" --label MPS \
    --json "$OUT/embed-gpu-mps-$stamp.json" 2>&1 | grep -v "RANDOM weights"
  echo quit | nvidia-cuda-mps-control
fi
