"""Spark and Flink in one Python process (as in this test suite): each engine's JVM errors reach
Python as that engine converts them, whichever engine started last (``transforms.py4j_errors``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
from backfill.spark_session import spark_session
from transforms.engines.flink import flink_environment
from transforms.engines.flink_stage1 import table_environment

spark = spark_session("local[1]", "mlfs-one-process")
env, _ = flink_environment(1)
table_environment(env, {})  # PyFlink catches a Py4JJavaError here, which Spark's converter must not take
from pyspark.errors import AnalysisException
try:
    spark.sql("SELECT no_such_column FROM range(1)").collect()
except AnalysisException:
    print("spark converted its own error")
spark = spark_session("local[1]", "mlfs-one-process")  # again: Spark's converter comes back first
table_environment(env, {})
print("flink made a table environment after spark")
"""


def test_spark_then_flink_then_spark_in_one_process() -> None:
    # A PyFlink job run earlier in this test process leaves PYFLINK_* set (no gateway of its own).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLINK_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == [
        "spark converted its own error",
        "flink made a table environment after spark",
    ]
