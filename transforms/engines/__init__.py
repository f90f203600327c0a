"""One compiler per engine, each turning the same ``TransformPlan`` into a job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transforms.errors import EngineUnavailable
from transforms.plan import FeatureContext, Runner, TransformPlan

Engine = Callable[[TransformPlan, Any, FeatureContext], Any]


def get_engine(runner: Runner) -> Engine:
    """The engine entry point for ``runner``."""
    if runner is Runner.REFERENCE:
        from transforms.engines.reference import reference_engine

        return reference_engine
    if runner is Runner.EMBEDDED:
        from transforms.engines.embedded import embedded_engine

        return embedded_engine
    if runner is Runner.SPARK:
        from transforms.engines.spark import spark_engine

        return spark_engine
    if runner is Runner.FLINK:
        from transforms.engines.flink import flink_engine

        return flink_engine
    if runner is Runner.BEAM:
        from transforms.engines.beam import beam_engine

        return beam_engine
    raise EngineUnavailable(
        f"the {runner.value} engine cannot run a view (the symbolic plan run only captures it)"
    )
