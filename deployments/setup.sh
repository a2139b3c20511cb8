#!/usr/bin/env bash
# Create the work pools and the failure alert on the Prefect server at $PREFECT_API_URL.
# Re-running is safe: pools are updated in place and the automation is replaced.
#
#   CIFAR_LIT_NOTIFY_URL=https://hooks.slack.com/services/T0/B0/XXX deployments/setup.sh
#
# Needs prefect, prefect-kubernetes and prefect-docker (pip install -e ".[dev]").
set -euo pipefail
cd "$(dirname "$0")"

# pool NAME TYPE BASE_JOB_TEMPLATE [CONCURRENT_RUNS] (an empty template: Prefect's default; no
# CONCURRENT_RUNS: no pool limit, and a limit an earlier version of this script set is cleared)
pool() {
    prefect work-pool create "$1" --type "$2" ${3:+--base-job-template "$3"} --overwrite
    if [ -n "${4:-}" ]; then
        # Runs beyond the pool's limit wait in Late/Scheduled until a slot frees.
        prefect work-pool set-concurrency-limit "$1" "$4"
    else
        prefect work-pool clear-concurrency-limit "$1"
    fi
}

# The GPU pools have no pool limit: each nightly deployment has its own limit of one run, which
# cancels a run that would start while another is going (prefect.yaml: concurrency_limit). A
# pool limit would hold such runs back before the deployment's limit sees them, and they would
# run one after another later: the backlog the deployment limit is there to prevent.
pool gpu-kubernetes kubernetes work-pools/gpu-kubernetes.json
pool gpu-docker docker work-pools/gpu-docker.json
# Local runs share the machine's cores: one at a time, queued (the next waits for a slot).
pool local-process process "" 1

python notify_on_failure.py "$@"
