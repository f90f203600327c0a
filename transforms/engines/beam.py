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

from transforms.engines.base import Engine
from transforms.errors import EngineUnavailable
from transforms.events import DeadLetter, EventCounts, EventPreparer, PreparedEvent, TimedEvent
from transforms.inference.feature_rows import FeatureRowScorer
from transforms.inference.scoring import StageScorer, run_stages
from transforms.inference.stage import Enrich
from transforms.joining import (
    EventJoiner,
    JoinInputs,
    LookupTable,
    joined_outcome,
    other_counts,
    other_event,
    other_preparer,
)
from transforms.joins import IntervalJoin
from transforms.plan import FeatureContext, TransformPlan

DEAD = "dead"
COUNTS = "counts"
DECIDED = "decided"  # an event's outcome decided by its joins (a dead letter)
JoinedItem = tuple[Any, list[tuple[dict[str, Any], int]]]  # an event's raw form and joined events


class BeamResult(NamedTuple):
    """What the Beam engine returns: PCollections of rows, dead letters and the event counts (and,
    for a view with interval joins, ``(source, EventCounts)`` of each other source)."""

    rows: beam.PCollection
    dead_letters: beam.PCollection
    counts: beam.PCollection
    source_counts: beam.PCollection | None = None


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
        self, batch: Sequence[Any], model: EventPreparer, inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        for item, outcome in zip(batch, self.outcomes(model, list(batch)), strict=True):
            yield PredictionResult(item, outcome)

    def outcomes(self, model: EventPreparer, batch: list[Any]) -> list[Any]:
        """Each example's outcome (examples: ``TimedEvent``s)."""
        return list(model.transform_batch(batch))

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


class _PreparerFn(beam.DoFn):
    """A step of stage 1 over the view's ``EventPreparer`` (made on the worker)."""

    def __init__(self, plan: TransformPlan) -> None:
        self.plan = plan

    def setup(self) -> None:
        self.preparer = EventPreparer(self.plan)


class _Decode(_PreparerFn):
    """Decode and time each raw event; the others are dead letters."""

    def process(self, raw: Any) -> Iterator[Any]:
        first = self.preparer.decode_and_time(raw)
        if isinstance(first, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD, first)
            yield beam.pvalue.TaggedOutput(COUNTS, EventCounts.of(first))
        else:
            yield (raw, *first)


class _Transform(_PreparerFn):
    """Stage 1's transform for views without model stages before aggregation."""

    def process(self, item: TimedEvent) -> Iterator[Any]:
        yield self.preparer.transform(*item)


class _Join(beam.DoFn):
    """Stage 1's joins (``transforms.joining``, the reference's code): the looked-up views' rows and
    the other sources' partners come as side inputs, Beam's enrichment pattern. Each event becomes
    ``(raw, joined events)``, or its dead letter (an outcome, tagged ``DECIDED``)."""

    def __init__(self, plan: TransformPlan, lookups: dict[str, TransformPlan], sources: list[str]) -> None:
        self.plan = plan
        self.lookups = lookups  # name -> the looked-up view's plan (its key and feature types)
        self.sources = sources
        self.joiner: EventJoiner | None = None

    def process(self, element: TimedEvent, **side: Any) -> Iterator[Any]:
        if self.joiner is None:  # the side inputs are the same for every event (bounded input)
            lookups = {
                name: LookupTable.of(plan, side[f"lookup{i}"])
                for i, (name, plan) in enumerate(self.lookups.items())
            }
            partners = {name: list(side[f"source{i}"]) for i, name in enumerate(self.sources)}
            self.joiner = EventJoiner(self.plan, JoinInputs(lookups=lookups), partners=partners)
        raw, event, time_ms = element
        joined = self.joiner.join(raw, event, time_ms)
        if isinstance(joined, DeadLetter):
            yield beam.pvalue.TaggedOutput(DECIDED, joined)
        else:
            yield raw, joined


class _TransformJoined(_PreparerFn):
    """An event's joined events through the transform: its outcome."""

    def process(self, item: JoinedItem) -> Iterator[Any]:
        yield _joined_outcomes(self.preparer, [item])[0]


class _JoinedPrepareHandler(_PrepareHandler):
    """``_PrepareHandler`` over events' joined events (``(raw, joined events)``): a batch's joined
    events go through the transform and model stages together, each event's outcome is theirs."""

    def outcomes(self, model: EventPreparer, batch: list[Any]) -> list[Any]:
        return _joined_outcomes(model, batch)


def _joined_outcomes(
    preparer: EventPreparer, items: Sequence[JoinedItem]
) -> list[PreparedEvent | list[PreparedEvent] | DeadLetter | None]:
    """Each event's outcome from its joined events, prepared as one batch."""
    done = iter(preparer.transform_batch([(raw, e, t) for raw, joined in items for e, t in joined]))
    return [joined_outcome([next(done) for _ in joined]) for _, joined in items]


class _ReadOther(beam.DoFn):
    """One event of an interval join's other source: a partner, or its dead letter, and its counts."""

    def __init__(self, plan: TransformPlan, join: IntervalJoin) -> None:
        self.plan = plan
        self.join = join

    def setup(self) -> None:
        self.preparer = other_preparer(self.plan, self.join)

    def process(self, raw: Any) -> Iterator[Any]:
        outcome = other_event(self.preparer, self.join, raw)
        yield beam.pvalue.TaggedOutput(COUNTS, (self.join.source_name, other_counts(outcome)))
        if isinstance(outcome, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD, outcome)
        elif outcome is not None:
            yield outcome


def _outcome_rows(outcome: PreparedEvent | list[PreparedEvent] | DeadLetter | None) -> Iterator[Any]:
    """An event's outcome as keyed (time, values) rows, its dead letter and its counts."""
    yield beam.pvalue.TaggedOutput(COUNTS, EventCounts.of(outcome))
    if isinstance(outcome, DeadLetter):
        yield beam.pvalue.TaggedOutput(DEAD, outcome)
    elif outcome is not None:
        for prepared in outcome if isinstance(outcome, list) else [outcome]:
            for key, values in prepared.rows:
                yield key, (prepared.time_ms, values)


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


def _transformed(
    items: beam.PCollection, plan: TransformPlan, handler: type[_PrepareHandler], fn: type[_PreparerFn]
) -> beam.PCollection:
    """Stage 1's transform over ``items``, to each item's outcome: in ``RunInference`` batches
    through ``handler`` when the view has model stages before aggregation, else by ``fn``."""
    if plan.event_stages:
        scored = items | "EventModels" >> RunInference(handler(plan))
        return scored | "Outcome" >> beam.Map(lambda result: result.inference)
    return items | "Transform" >> beam.ParDo(fn(plan))


class FeatureViewTransform(beam.PTransform):
    """A view's plan applied to a PCollection of raw events (dicts or JSON text). A view with joins
    takes ``lookups`` (view name -> (its plan, a PCollection of its feature rows as dicts)) and
    ``sources`` (source name -> a PCollection of its raw events)."""

    def __init__(
        self,
        plan: TransformPlan,
        lookups: dict[str, tuple[TransformPlan, beam.PCollection]] | None = None,
        sources: dict[str, beam.PCollection] | None = None,
    ) -> None:
        super().__init__(label=f"mlfs-{plan.view}")
        self.plan = plan
        self.lookups = lookups or {}
        self.sources = sources or {}
        missing = [j.view for j in plan.lookups if j.view not in self.lookups]
        missing += [j.source_name for j in plan.interval_joins if j.source_name not in self.sources]
        if missing:
            raise EngineUnavailable(f"view {plan.view!r} joins {missing[0]!r}: pass its PCollection")

    def _joined(self, timed: beam.PCollection) -> tuple[beam.PCollection, list[Any], Any]:
        """The joins and transform over the timed events; the other sources' dead letters and
        counts."""
        plan = self.plan
        dead, counts = [], None
        partners: dict[str, Any] = {}
        per_source = []
        for join in plan.interval_joins:
            name = join.source_name
            read = self.sources[name] | f"Read-{name}" >> beam.ParDo(_ReadOther(plan, join)).with_outputs(
                DEAD, COUNTS, main="partners"
            )
            partners[name] = beam.pvalue.AsList(read.partners)
            dead.append(read[DEAD])
            per_source.append(read[COUNTS])
        if per_source:
            counts = (
                tuple(per_source)
                | "SourceCounts" >> beam.Flatten()
                | "BySource" >> beam.CombinePerKey(_sum_counts)  # type: ignore[arg-type]
            )
        side = {f"lookup{i}": beam.pvalue.AsList(rows) for i, (_, rows) in enumerate(self.lookups.values())}
        side.update({f"source{i}": partner for i, partner in enumerate(partners.values())})
        plans = {name: view_plan for name, (view_plan, _) in self.lookups.items()}
        fn = _Join(plan, plans, list(partners))
        joined = timed | "Join" >> beam.ParDo(fn, **side).with_outputs(DECIDED, main="joined")
        transformed = _transformed(joined.joined, plan, _JoinedPrepareHandler, _TransformJoined)
        outcomes = (joined[DECIDED], transformed) | "Outcomes" >> beam.Flatten()
        return outcomes, dead, counts

    def expand(self, events: beam.PCollection) -> BeamResult:
        plan = self.plan
        decoded = events | "Decode" >> beam.ParDo(_Decode(plan)).with_outputs(DEAD, COUNTS, main="timed")
        other_dead: list[Any] = []
        source_counts = None
        if plan.joins:
            outcomes, other_dead, source_counts = self._joined(decoded.timed)
        else:
            outcomes = _transformed(decoded.timed, plan, _PrepareHandler, _Transform)
        prepared = outcomes | "Rows" >> beam.FlatMap(_outcome_rows).with_outputs(DEAD, COUNTS, main="rows")
        from transforms.engines.reference import key_rows

        rows = (
            prepared.rows
            | "ByKey" >> beam.GroupByKey()
            | "Windows" >> beam.FlatMap(lambda kv: key_rows(plan, kv[0], list(kv[1])))
        )
        dead = [decoded[DEAD], prepared[DEAD], *other_dead]
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
            source_counts=source_counts,
        )


class BeamEngine(Engine):
    """A ``PTransform`` over a PCollection of raw events; its result holds PCollections."""

    name = "beam"

    def run(self, plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> BeamResult:
        """Options for a view with joins: ``lookups`` and ``sources`` (``FeatureViewTransform``)."""
        return inputs | FeatureViewTransform(plan, ctx.options.get("lookups"), ctx.options.get("sources"))


ENGINE = BeamEngine()
