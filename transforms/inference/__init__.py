"""Model-inference stages: ``Enrich`` (a Beam ``ModelHandler`` scoring event rows before
aggregation or feature rows after it), keyed multi-model scoring with an LRU-bounded pool, A/B,
shadow and cascade patterns, and the scoring loop the Spark, Flink and reference engines share."""

from transforms.inference.models import Model, ModelLoadError, ModelPool, PoolStats, worker_pool
from transforms.inference.routing import ABTest, Assignment, KeyedModels, RoutingError, Shadow, Single
from transforms.inference.scoring import Failure, StageScorer, run_stages
from transforms.inference.stage import Batching, Cascade, Enrich, flatten_stages

__all__ = [
    "ABTest",
    "Assignment",
    "Batching",
    "Cascade",
    "Enrich",
    "Failure",
    "KeyedModels",
    "Model",
    "ModelLoadError",
    "ModelPool",
    "PoolStats",
    "RoutingError",
    "Shadow",
    "Single",
    "StageScorer",
    "flatten_stages",
    "run_stages",
    "worker_pool",
]
