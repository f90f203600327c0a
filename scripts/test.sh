#!/usr/bin/env bash
# Set up, then run the linters and the whole test suite (slow engine tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -n 2 --durations=15 "$@"
