"""The Beam engine: the transformer as a composite ``PTransform``, on any Beam runner.

Stage 1 is ``transforms.events.EventPreparer``; when the view has model stages before aggregation
it runs inside Beam's ``RunInference`` (a ``ModelHandler`` whose model is the preparer with its
model pools, so Beam batches the events and the stages score each batch as every engine does).
Stage 2 groups each key's rows and emits them with the reference engine's ``key_rows``; model
stages after aggregation run through a second ``RunInference``. The result is three
PCollections: feature rows (dicts), dead letters and one ``EventCounts``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from transforms.engines.base import Engine, refuse_joins
from transforms.events import DeadLetter, EventCounts, EventPreparer, PreparedEvent, TimedEvent
from transforms.inference.feature_rows import FeatureRowScorer
from transforms.inference.scoring import StageScorer, run_stages
from transforms.inference.stage import Enrich
from transforms.plan import FeatureContext, TransformPlan

DEAD = "dead"
COUNTS = "counts"


class BeamResult(NamedTuple):
    """What the Beam engine returns: PCollections of rows, dead letters and the event counts."""

    rows: beam.PCollection
    dead_letters: beam.PCollection
    counts: beam.PCollection


class _StageBatches(ModelHandler):
    """What the MLFS handlers share: Beam batches rows up to the first stage's ``max_batch_size``
    and counts rows, not bytes."""

    _max_batch: int

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return len(batch)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"max_batch_size": self._max_batch}


class _PrepareHandler(_StageBatches):
    """Stage 1's transform and model stages as a Beam model handler: the "model" is an
    ``EventPreparer`` (whose stages load the user's models through their pools), an example is a
    decoded event and an inference is its outcome."""

    def __init__(self, plan: TransformPlan) -> None:
        super().__init__()
        self.plan = plan
        stage = plan.event_stages[0]
        self._max_batch = stage.batching.max_batch_size

    def load_model(self) -> EventPreparer:
        return EventPreparer(self.plan)

    def run_inference(
        self, batch: Sequence[TimedEvent], model: EventPreparer, inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        for item, outcome in zip(batch, model.transform_batch(list(batch)), strict=True):
            yield PredictionResult(item, outcome)

    def get_metrics_namespace(self) -> str:
        return f"mlfs-{self.plan.view}-events"


class _RowHandler(_StageBatches):
    """The model stages after aggregation as a Beam model handler (examples are feature rows)."""

    def __init__(self, plan: TransformPlan) -> None:
        super().__init__()
        self.plan = plan
        self._max_batch = plan.row_stages[0].batching.max_batch_size

    def load_model(self) -> FeatureRowScorer:
        return FeatureRowScorer(self.plan)

    def run_inference(
        self, batch: Sequence[dict[str, Any]], model: FeatureRowScorer, inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        for row, outcome in zip(batch, model.score_each(list(batch)), strict=True):
            yield PredictionResult(row, outcome)

    def get_metrics_namespace(self) -> str:
        return f"mlfs-{self.plan.view}-rows"


class _Scorers:
    """The stages' scorers as one object (Beam keeps a weak reference to a handler's model)."""

    def __init__(self, scorers: list[StageScorer]) -> None:
        self.scorers = scorers


class EnrichHandler(_StageBatches):
    """MLFS model stages as a Beam ``ModelHandler`` for any pipeline: examples are ``(row, time_ms)``,
    inferences the scored rows (or ``Failure``s). Keyed models, pools, A/B and shadow routing and
    per-row failures behave as in MLFS's engines: ``RunInference(EnrichHandler([stage]))``."""

    def __init__(self, stages: Sequence[Enrich], name: str = "beam") -> None:
        super().__init__()
        self.stages = tuple(stages)
        self.name = name
        self._max_batch = self.stages[0].batching.max_batch_size

    def load_model(self) -> _Scorers:
        return _Scorers([StageScorer(stage, pool_name=f"{self.name}/{stage.name}") for stage in self.stages])

    def run_inference(
        self,
        batch: Sequence[tuple[dict[str, Any], int]],
        model: _Scorers,
        inference_args: Any = None,
    ) -> Iterable[PredictionResult]:
        rows = [row for row, _ in batch]
        outcomes = run_stages(model.scorers, rows, [time_ms for _, time_ms in batch])
        for example, outcome in zip(batch, outcomes, strict=True):
            yield PredictionResult(example, outcome)


class _Decode(beam.DoFn):
    """Decode and time each raw event; the others are dead letters."""

    def __init__(self, plan: TransformPlan) -> None:
        self.plan = plan

    def setup(self) -> None:
        self.preparer = EventPreparer(self.plan)

    def process(self, raw: Any) -> Iterator[Any]:
        first = self.preparer.decode_and_time(raw)
        if isinstance(first, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD, first)
            yield beam.pvalue.TaggedOutput(COUNTS, EventCounts.of(first))
        else:
            yield (raw, *first)


class _Transform(beam.DoFn):
    """Stage 1's transform for views without model stages before aggregation."""

    def __init__(self, plan: TransformPlan) -> None:
        self.plan = plan

    def setup(self) -> None:
        self.preparer = EventPreparer(self.plan)

    def process(self, item: TimedEvent) -> Iterator[Any]:
        yield self.preparer.transform(*item)


def _outcome_rows(outcome: PreparedEvent | DeadLetter | None) -> Iterator[Any]:
    """An event's outcome as keyed (time, values) rows, its dead letter and its counts."""
    yield beam.pvalue.TaggedOutput(COUNTS, EventCounts.of(outcome))
    if isinstance(outcome, DeadLetter):
        yield beam.pvalue.TaggedOutput(DEAD, outcome)
    elif outcome is not None:
        for key, values in outcome.rows:
            yield key, (outcome.time_ms, values)


def _scored_row(result: PredictionResult) -> Iterator[Any]:
    outcome = result.inference
    if isinstance(outcome, DeadLetter):
        yield beam.pvalue.TaggedOutput(DEAD, outcome)
        yield beam.pvalue.TaggedOutput(COUNTS, EventCounts(rows_dead_lettered=1))
    else:
        yield outcome


def _sum_counts(parts: Iterable[EventCounts]) -> EventCounts:
    total = EventCounts()
    for part in parts:
        total.add(part)
    return total


class FeatureViewTransform(beam.PTransform):
    """A view's plan applied to a PCollection of raw events (dicts or JSON text)."""

    def __init__(self, plan: TransformPlan) -> None:
        super().__init__(label=f"mlfs-{plan.view}")
        self.plan = plan

    def expand(self, events: beam.PCollection) -> BeamResult:
        plan = self.plan
        decoded = events | "Decode" >> beam.ParDo(_Decode(plan)).with_outputs(DEAD, COUNTS, main="timed")
        if plan.event_stages:
            outcomes = (
                decoded.timed
                | "EventModels" >> RunInference(_PrepareHandler(plan))
                | "Outcome" >> beam.Map(lambda result: result.inference)
            )
        else:
            outcomes = decoded.timed | "Transform" >> beam.ParDo(_Transform(plan))
        prepared = outcomes | "Rows" >> beam.FlatMap(_outcome_rows).with_outputs(DEAD, COUNTS, main="rows")
        from transforms.engines.reference import key_rows

        rows = (
            prepared.rows
            | "ByKey" >> beam.GroupByKey()
            | "Windows" >> beam.FlatMap(lambda kv: key_rows(plan, kv[0], list(kv[1])))
        )
        dead = [decoded[DEAD], prepared[DEAD]]
        counts = [decoded[COUNTS], prepared[COUNTS]]
        if plan.row_stages:
            scored = (
                rows
                | "RowModels" >> RunInference(_RowHandler(plan))
                | "Scored" >> beam.FlatMap(_scored_row).with_outputs(DEAD, COUNTS, main="rows")
            )
            rows = scored.rows
            dead.append(scored[DEAD])
            counts.append(scored[COUNTS])
        return BeamResult(
            rows=rows,
            dead_letters=tuple(dead) | "DeadLetters" >> beam.Flatten(),
            counts=tuple(counts)
            | "AllCounts" >> beam.Flatten()
            | "Counts" >> beam.CombineGlobally(_sum_counts),
        )


class BeamEngine(Engine):
    """A ``PTransform`` over a PCollection of raw events; its result holds PCollections."""

    name = "beam"

    def run(self, plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> BeamResult:
        refuse_joins(self.name, plan)
        return inputs | FeatureViewTransform(plan)


ENGINE = BeamEngine()
