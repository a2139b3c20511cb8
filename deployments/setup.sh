#!/usr/bin/env bash
# Create the work pools and the failure alert on the Prefect server at $PREFECT_API_URL.
# Re-running is safe: pools are updated in place and the automation is replaced.
#
#   CIFAR_LIT_NOTIFY_URL=https://hooks.slack.com/services/T0/B0/XXX deployments/setup.sh
#
# Needs prefect, prefect-kubernetes and prefect-docker (pip install -e ".[dev]").
set -euo pipefail
cd "$(dirname "$0")"

# pool NAME TYPE BASE_JOB_TEMPLATE CONCURRENT_RUNS (an empty template: Prefect's default)
pool() {
    prefect work-pool create "$1" --type "$2" ${3:+--base-job-template "$3"} --overwrite
    # The pool's concurrency limit: runs beyond it wait in Late/Scheduled until a slot frees.
    prefect work-pool set-concurrency-limit "$1" "$4"
}

# One training run at a time per GPU pool: each run asks for the whole GPU.
pool gpu-kubernetes kubernetes work-pools/gpu-kubernetes.json 1
pool gpu-docker docker work-pools/gpu-docker.json 1
# Local runs share the machine's cores: one at a time as well.
pool local-process process "" 1

python notify_on_failure.py "$@"
