#!/usr/bin/env bash
# The one command a lent GPU machine runs, from the repo root, with .whl/ carried along
# (benchmarks/gpu_wheels.sh builds it): the CUDA tests, then benchmarks/gpu.py. Logs and results go
# to $OUT (or .bench/gpu). Extra arguments go to gpu.py (e.g. --budget 300).
# The machine has Python 3.12 with torch; repair_ray runs from this tree (PYTHONPATH), not installed.
set -uo pipefail
out=${OUT:-.bench/gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing .whl/ failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
export REPAIR_RAY_DATA=${REPAIR_RAY_DATA:-/tmp/repair_ray_data}
started=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, ray, pydantic; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__, 'gpu', torch.cuda.get_device_name(0))"
python3 -m pytest -m cuda tests/test_cuda.py tests/test_stacked.py -q -rs -p no:cacheprovider -o addopts="" 2>&1 \
  | tee "$out/cuda_tests.log"
tests=${PIPESTATUS[0]}
echo "cuda tests: exit $tests after $(( $(date +%s) - started )) s"
if [ -f benchmarks/gpu.py ]; then
  python3 benchmarks/gpu.py --out "$out" "$@" 2>&1 | tee "$out/gpu_bench.log"
  bench=${PIPESTATUS[0]}
else
  echo "no benchmarks/gpu.py: benchmark skipped" | tee "$out/gpu_bench.log"
  bench=0
fi
echo "gpu.py: exit $bench after $(( $(date +%s) - started )) s"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
