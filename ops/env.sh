# Source this to point Prefect clients at a local server: `. ops/env.sh`
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:4200/api}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
