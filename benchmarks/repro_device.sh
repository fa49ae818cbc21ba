#!/usr/bin/env bash
# The one command a lent GPU machine runs for REPRODUCTION.md (issue 23): the papers' recipes
# (examples/repair-mlp-depth-mnist-paper.yaml, repair-mlp-width-mnist-paper.yaml,
# git-rebasin-mlp-mnist.yaml) run as shipped, one sweep after the other, each sweep's tables (no
# checkpoints) packed into $OUT/<sweep>.tgz as soon as it ends, so a run cut short keeps what finished.
#
#   bash benchmarks/repro_device.sh [--smoke] [--budget SECONDS] [--ste-epochs N]
#                                   [--only NAME,...] [--suffix S] [--set KEY=JSON ...]
#
# Carry .whl/ (benchmarks/gpu_wheels.sh) and .data/ (MNIST's four raw files gzipped into .data/MNIST/,
# ~12 MB; ignored by git).
# --smoke: tiny versions of the same sweeps (4 seeds, 1 epoch, few samples) to check the script
# on a CPU first. --ste-epochs: STE's epochs when the published 250 do not fit the device budget
# (its rows then carry another analysis key, and REPRODUCTION.md says so). --only: these sweeps;
# --set train.weight_decay=5e-4 --set 'models=[...]': change the configs (dotted keys, JSON values),
# with --suffix naming the changed sweeps apart (a recipe-sensitivity run).
set -uo pipefail
smoke=0; budget=540; ste_epochs=""; only="repair-mlp-depth-mnist-paper,repair-mlp-width-mnist-paper,git-rebasin-mlp-mnist"
suffix=""; sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --budget) budget=$2; shift ;;
    --ste-epochs) ste_epochs=$2; shift ;;
    --only) only=$2; shift ;;
    --suffix) suffix=$2; shift ;;
    --set) sets+=("$2"); shift ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
  shift
done
started=$(date +%s)
out=${OUT:-.bench/repro}
mkdir -p "$out"
if [ -d .whl ] && ! python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
if [ -z "${REPAIR_RAY_DATA:-}" ]; then
  export REPAIR_RAY_DATA=/tmp/repro_data
  mkdir -p "$REPAIR_RAY_DATA/MNIST/raw"
  for f in .data/MNIST/*.gz; do gunzip -c "$f" > "$REPAIR_RAY_DATA/MNIST/raw/$(basename "$f" .gz)"; done
fi
runs=${REPRO_RUNS:-/tmp/repro_runs}
cfgs=/tmp/repro_configs
mkdir -p "$runs" "$cfgs"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 - "$smoke" "$cfgs" "$ste_epochs" "$only" "$suffix" "${sets[@]}" <<'EOF'
import json
import sys
from pathlib import Path

import yaml

smoke, folder, ste_epochs = sys.argv[1] == "1", Path(sys.argv[2]), sys.argv[3]
names, suffix, sets = sys.argv[4].split(","), sys.argv[5], sys.argv[6:]
for name in names:
    config = yaml.safe_load(Path("examples", f"{name}.yaml").read_text())
    for item in sets:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = json.loads(value)
    config["name"] = name + suffix
    if ste_epochs and "ste" in config:
        config["ste"]["epochs"] = int(ste_epochs)
    if smoke:  # the same sweep, small: every code path, a few seconds of work each
        config["seeds"] = 4
        config["train"].update(epochs=1, warmup_epochs=0, checkpoint_every=1, seeds_per_trial=4)  # stacked, as on a GPU
        config["eval"].update(train_samples=600, stat_samples=300)
        config["alphas"] = 3
        config["models"] = [{**m, "width": [m["width"][0] if isinstance(m["width"], list) else m["width"]]} for m in config["models"]]
        config["models"][0]["depth"] = [2]
        for method in ("ste", "sinkhorn"):
            if method in config:
                config[method].update(epochs=1, samples=1000)
    (folder / f"{name}{suffix}.yaml").write_text(yaml.safe_dump(config))
EOF
status=0
for name in ${only//,/ }; do
  name=$name$suffix
  left=$(( budget - ($(date +%s) - started) ))
  if [ "$left" -lt 30 ]; then echo "$name: skipped, $left s of the budget left"; status=1; continue; fi
  echo "== $name ($left s left) $(date -u +%H:%M:%S)"
  timeout "$left" python3 -m repair_ray.cli run "$cfgs/$name.yaml" --storage "$runs" 2>&1 | tail -n 40
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc after $(( $(date +%s) - started )) s"
  [ "$rc" -eq 0 ] || status=1
  tar czf "$out/$name.tgz" -C "$runs" --exclude=checkpoints "$name" && ls -la "$out/$name.tgz"
done
exit $status
