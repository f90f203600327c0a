#!/usr/bin/env bash
# Fetch the Flink Kafka connector jars (flink-connector-kafka, kafka-clients) into DIR (default
# .venv/kafka-jars) from the PyPI package that carries them, without installing that package (it
# would put Flink 2.0 jars into PyFlink 2.3). Idempotent. Point mlfs.flink.jars or MLFS_FLINK_JARS at
# the two files it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv/kafka-jars}
python=${PYTHON:-.venv/bin/python}  # the image build (deploy/image) runs it with the system's
package=shigawire-apache-flink-libraries==2.0.0.post1
mkdir -p "$dir"
if [ ! -s "$dir/flink-connector-kafka.jar" ] || [ ! -s "$dir/kafka-clients.jar" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "$package" 2>&1 \
    | grep -v "WARNING: Location" || true
  "$python" - "$tmp" "$dir" <<'PY'
import sys, zipfile
from pathlib import Path

wheel = next(Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as archive:
    for name in ("flink-connector-kafka.jar", "kafka-clients.jar"):
        target = Path(sys.argv[2]) / name
        target.write_bytes(archive.read(f"pyflink/lib/{name}"))
PY
fi
echo "$dir/flink-connector-kafka.jar"
echo "$dir/kafka-clients.jar"
