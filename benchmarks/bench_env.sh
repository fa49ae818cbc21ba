#!/usr/bin/env bash
# The benchmarks' own environment, kept apart from the project's: .bench/venv (git-ignored).
#
# It holds the project (editable) plus the packages we compare against, such as `rebasin`
# (Git Re-Basin in PyTorch, by snimu). The project itself never depends on them.
#
# Usage: benchmarks/bench_env.sh          # builds .bench/venv once; later calls do nothing
#        FORCE=1 benchmarks/bench_env.sh  # rebuilds it
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.bench/venv
STAMP=$VENV/.built
# Pinned like the project's own torch: a rebasin release that pins another torch must not pull one in.
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
REBASIN=${REBASIN:-rebasin==0.0.47}
# rebasin's declared dependencies besides torch (installed explicitly: rebasin goes in with --no-deps).
REBASIN_DEPS=("numpy" "scipy" "tqdm" "graphviz" "torchview")

if [[ -f $STAMP && -z ${FORCE:-} && $STAMP -nt pyproject.toml && $STAMP -nt "$0" ]]; then
    echo "benchmark environment $VENV is up to date"
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip
"${PIP[@]}" install --quiet "${TORCH_PINS[@]}"
"${PIP[@]}" install --quiet -c constraints.txt -e '.[dev]' "${TORCH_PINS[@]}"  # dev: moto's S3 server for scale.py
"${PIP[@]}" install --quiet --no-deps "$REBASIN"
"${PIP[@]}" install --quiet "${REBASIN_DEPS[@]}" "${TORCH_PINS[@]}"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import rebasin  # noqa: F401
import repair_ray  # noqa: F401
import torch

print(f"benchmark environment ready: torch {torch.__version__}, rebasin {md.version('rebasin')}")
PY
touch "$STAMP"
