"""Starting the Spark session a backfill runs in: ``local[*]`` unless a master is configured."""

from __future__ import annotations

import os
import sys
from typing import Any

from transforms.enginelogs import jvm_output, verbose
from transforms.py4j_errors import share_py4j_errors

DEFAULT_MASTER = "local[*]"


def spark_session(master: str | None = None, app_name: str = "mlfs-backfill") -> Any:
    """A Spark session on ``master`` (default: spark-submit's master when run under it, else
    ``local[*]``), UTC, with this interpreter on workers."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    # Under spark-submit (a SparkApplication, a spark-submit Job) the master is spark-submit's.
    if master is not None or not os.environ.get("PYSPARK_GATEWAY_PORT"):
        builder = builder.master(master or DEFAULT_MASTER)
    builder = (
        builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.driver.memory", os.environ.get("MLFS_SPARK_DRIVER_MEMORY", "4g"))
    )
    if SparkContext._active_spark_context is not None:  # the JVM runs: its output goes where it went
        session = builder.getOrCreate()
    else:
        with jvm_output("spark") as log:
            session = builder.getOrCreate()
            # Warnings and errors, where they go: the log file, or the terminal of `mlfs -v`; a library
            # caller's terminal gets errors only.
            session.sparkContext.setLogLevel("WARN" if log is not None or verbose() else "ERROR")
    share_py4j_errors()
    return session
