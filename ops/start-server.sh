#!/usr/bin/env bash
# Start a local Prefect server (SQLite by default; set PREFECT_SERVER_DATABASE_CONNECTION_URL
# to a postgresql+asyncpg:// URL for a shared server). UI: http://127.0.0.1:4200
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/prefect server start --host "${PREFECT_HOST:-127.0.0.1}" --port "${PREFECT_PORT:-4200}"
