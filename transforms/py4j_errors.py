"""Spark and Flink each replace py4j's ``get_return_value`` with a converter of their own JVM's
errors, and in one process (the test suite; a library user running both) whichever started last
converts the other's errors too and breaks it: PyFlink catches ``Py4JJavaError`` where Spark's
converter raises its own exceptions (and asks Spark's JVM about a Flink error). ``share_py4j_errors``
installs one function that hands each gateway's answers to its own engine's converter; each
engine's entry calls it after its JVM starts (which is when that engine installs its own)."""

from __future__ import annotations

import sys
from typing import Any


def share_py4j_errors() -> None:
    """Route each py4j answer to the converter of the engine whose gateway it came from."""
    import py4j.java_gateway
    import py4j.protocol

    original = py4j.protocol.get_return_value
    converters: dict[str, Any] = {}

    def converter(engine: str) -> Any:
        if engine not in converters:
            if engine == "flink":
                from pyflink.util.exceptions import capture_java_exception

                converters[engine] = capture_java_exception(original)
            elif "pyspark" in sys.modules:
                from pyspark.errors.exceptions.captured import capture_sql_exception

                converters[engine] = capture_sql_exception(original)
            else:
                converters[engine] = original
        return converters[engine]

    def get_return_value(*args: Any, **kwargs: Any) -> Any:
        client = args[1] if len(args) > 1 else kwargs.get("gateway_client")
        flink = sys.modules.get("pyflink.java_gateway")
        gateway = getattr(flink, "_gateway", None)
        engine = (
            "flink"
            if gateway is not None and client is getattr(gateway, "_gateway_client", None)
            else "spark"
        )
        return converter(engine)(*args, **kwargs)

    py4j.java_gateway.get_return_value = get_return_value
