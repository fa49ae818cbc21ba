#!/usr/bin/env bash
# Submit a sweep to a running Ray cluster as a Ray Job and follow its logs.
#
#   clusters/submit.sh http://HEAD:8265 examples/mlp-width-depth.yaml s3://bucket/prefix
#
# The project folder travels as the job's working directory; the driver runs on the head and
# joins the cluster. For a cluster with token authentication (the default for new clusters in
# Ray 2.60), export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or keep the token in
# ~/.ray/auth_token). Storage credentials in the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS)
# are passed to the job.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 DASHBOARD_ADDRESS CONFIG STORAGE [repair-ray run options...]" >&2
    exit 2
fi
address=$1 config=$2 storage=$3
shift 3
cd "$(dirname "$0")/.."

# the variables forwarded to workers are listed once, in repair_ray/sweep/cluster.py
env_json=$(python3 -m repair_ray.sweep.cluster)
exec ray job submit --address "$address" --working-dir . --runtime-env-json "$env_json" \
    -- python -m repair_ray.cli run "$config" --address auto --storage "$storage" "$@"
