#!/usr/bin/env bash
# Set up (if needed) and run the whole pipeline on the bundled example corpus:
# ingest -> clean/dedup -> stats -> tokenizer -> tokenize -> pretrain a tiny model. Output: runs/quickstart/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/danlu run examples/quickstart.yaml "$@"
