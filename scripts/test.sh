#!/usr/bin/env bash
# Set up, then run the linters and the whole test suite (slow engine tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The registry page's test drives a real headless browser.
if ! command -v chromium >/dev/null 2>&1; then
  echo "test: installing chromium with apt-get"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
# The Kafka source's test runs Flink's Kafka connector: fetch its jars once (from PyPI).
bash scripts/kafka_jars.sh >/dev/null
.venv/bin/ruff check .
.venv/bin/mypy
# Work stealing: the slow end-to-end tests come first in collection order, and an idle worker takes
# tests queued on another instead of waiting out its tail. Three workers on two cores: the
# end-to-end tests spend much of their time waiting (job start-up, checkpoints, a Redis away).
.venv/bin/python -m pytest -n 3 --dist worksteal --durations=40 "$@"
