#!/usr/bin/env bash
# Set up, create the example repository in ./quickstart, register it, backfill it and read the
# features back with the stock Feast SDK. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
mlfs init quickstart --force --with-embeddings --with-joins  # incl. a view scored by all-MiniLM-L6-v2 and two views with joins
cd quickstart
mlfs apply
mlfs backfill
mlfs registry list
python read_features.py
