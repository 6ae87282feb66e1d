#!/usr/bin/env bash
# Start a worker on this machine for a work pool (default: a process pool named clipops-cpu).
# On a GPU node: POOL=clipops-gpu ops/start-worker.sh  (the code picks cuda itself).
set -euo pipefail
cd "$(dirname "$0")/.."
. ops/env.sh
POOL="${POOL:-clipops-cpu}"
.venv/bin/prefect work-pool create "$POOL" --type process 2>/dev/null || true
exec .venv/bin/prefect worker start --pool "$POOL"
