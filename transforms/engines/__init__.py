"""One compiler per engine, each turning the same ``TransformPlan`` into a job; the interface and
the table of engines are in ``transforms.engines.base``."""

from transforms.engines.base import (
    BACKFILL_ENGINES,
    ENGINES,
    VERIFY_ENGINES,
    Engine,
    EngineResult,
    get_engine,
)

__all__ = ["BACKFILL_ENGINES", "ENGINES", "VERIFY_ENGINES", "Engine", "EngineResult", "get_engine"]
