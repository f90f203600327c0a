#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent: a second run with
# unchanged pyproject.toml and constraints.txt installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# A JDK, not only a JRE: the Flink engine compiles MLFS's aggregate functions with javac.
command -v javac >/dev/null 2>&1 || need_apt+=(openjdk-17-jdk-headless)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python_bin=${PYTHON:-}
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python_bin=$candidate; break
    fi
  done
fi
[ -n "$python_bin" ] || { echo "setup: Python 3.11 is required" >&2; exit 1; }

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
stamp=.venv/.mlfs-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import featurestore' 2>/dev/null; }; then
  echo "setup: installing Python packages into .venv (first run takes a few minutes)"
  # --no-compile: pip byte-compiles every module one at a time (about 40% of the install); they are
  # compiled after the install on every core instead. Compiled they must be: where
  # PYTHONDONTWRITEBYTECODE is set, Python never caches what it compiles on import, and every
  # command would compile Feast, Spark and Flink's Python again (`import feast`: 10 s against 6 s).
  pip_install() { .venv/bin/pip install -q --no-compile --disable-pip-version-check "$@"; }
  # torch first, so nothing pulls a multi-GB CUDA build; then everything else, pinned.
  pip_install -c constraints.txt torch==2.13.0
  pip_install -c constraints.txt -e ".[dev]"
  .venv/bin/pip check >/dev/null
  .venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
  # Feast resets the warning filters, so -W ignore alone does not quiet httplib2's pyparsing warnings.
  if ! out=$(.venv/bin/python -W ignore -c 'import featurestore, feast, pyspark, pyflink, apache_beam, torch' 2>&1); then
    echo "$out" >&2; exit 1
  fi
  echo "$want" > "$stamp"
fi
# MLFS's Java code for Flink (aggregate functions, the file source's split order): compiled once into ~/.cache/mlfs ($MLFS_CACHE_DIR).
.venv/bin/python -W ignore -c 'from transforms.engines.flink_jar import mlfs_jar; mlfs_jar()'

