"""MLFS's own Flink aggregate functions (Java, in ``flink_java/``): exact sums, means and variances
of doubles.

Flink's ``SUM``/``AVG`` over doubles retract a leaving value by subtracting it, so a continuous
window drifts (after a large value leaves, a window of small values can read 0 or go negative), and
its ``VAR_*``/``STDDEV_*`` use the sum of squares, which cancels catastrophically. These functions
keep exact integer sums instead (``Exact.java``) and round once, so every window kind agrees with the
monoids of ``transforms.aggregations`` within the contract's tolerance. They live in MLFS's Flink
jar (``flink_jar``).
"""

from __future__ import annotations

from typing import Any

# SQL name -> Java class, registered in every table environment of a job.
FUNCTIONS = {
    "mlfs_sum": "mlfs.flink.ExactSum",
    "mlfs_mean": "mlfs.flink.ExactMean",
    "mlfs_var_pop": "mlfs.flink.ExactVariance",
    "mlfs_var_samp": "mlfs.flink.ExactSampleVariance",
}


def register_functions(t_env: Any) -> None:
    """Make ``FUNCTIONS`` callable from ``t_env``'s SQL (the job must carry ``flink_jar.mlfs_jar()``)."""
    for name, java_class in FUNCTIONS.items():
        t_env.create_java_temporary_function(name, java_class)
