"""Running an ``Enrich`` stage over a batch of rows, the same way in every engine but Beam (which
runs the handlers through ``RunInference``): route each row, group rows by model so a small pool
does not thrash, call ``run_inference`` in batches, put each prediction back on its own row.

A row that cannot be scored (its input function raises, no model is live for it, its model fails
to load, inference fails on it alone, its prediction does not fit the output fields) comes back as
a ``Failure`` with the reason; the other rows of the batch are scored normally.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.inference.models import Model, ModelLoadError, ModelPool, worker_pool
from transforms.inference.routing import RoutingError
from transforms.inference.stage import Enrich, Row
from transforms.usercode import USER_CODE_ERRORS

log = logging.getLogger(__name__)

# Failure reasons (the dead letter's reason is ``inference:<reason>``).
INPUT_ERROR = "input_error"
NO_MODEL = "no_model"
MODEL_LOAD = "model_load"
INFERENCE_ERROR = "inference_error"
OUTPUT_ERROR = "output_error"


@dataclass(frozen=True)
class Failure:
    """Why a row could not be scored."""

    stage: str
    reason: str
    detail: str

    @property
    def dead_letter_reason(self) -> str:
        return f"inference:{self.reason}"

    def describe(self) -> str:
        return f"stage {self.stage!r}: {self.detail}"


def plain(value: Any) -> Any:
    """A prediction as plain Python (tensors and arrays become lists or scalars)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def plain_batch(predictions: list[Any]) -> list[Any]:
    """``plain`` of each prediction, converted as one stacked array where they stack (per-row
    conversion costs more than the small models it serves)."""
    if not predictions:
        return []
    first = predictions[0]
    try:
        if hasattr(first, "detach"):
            import torch

            return list(torch.stack([p.detach() for p in predictions]).cpu().tolist())
        if isinstance(first, np.ndarray | np.generic):
            return list(np.stack(predictions).tolist())
    except (RuntimeError, ValueError, TypeError):  # shapes or types differ: one by one
        pass
    return [plain(p) for p in predictions]


def _scalar(value: Any) -> Any:
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, list):
        raise ValueError(f"expected one value, the prediction has {len(value)}")
    return value


class StageScorer:
    """Scores rows with one ``Enrich`` stage, loading models through a worker's pool."""

    def __init__(self, stage: Enrich, pool: ModelPool | None = None, pool_name: str = "") -> None:
        self.stage = stage
        self.pool = pool or worker_pool(pool_name or stage.name, stage.router.max_loaded)
        self._fields = list(stage.outputs)
        self._elementwise = len(self._fields) > 1 and all(fn is None for fn in stage.outputs.values())
        # Output functions receive the handler's own prediction objects; otherwise convert per batch.
        self._convert_batch = all(fn is None for fn in stage.outputs.values())
        self.shadow_failures: Counter[str] = Counter()  # reason -> rows whose shadow fields are null

    def score(self, rows: Sequence[Row], times: Sequence[int]) -> list[Row | Failure]:
        """``rows`` with the stage's fields added (new dicts, same order), or a ``Failure`` each."""
        stage = self.stage
        results: list[Row | Failure] = [dict(r) for r in rows]
        examples: list[Any] = [None] * len(rows)
        jobs: dict[str, tuple[Model, list[tuple[int, bool]]]] = {}  # label -> model, [(row, shadow?)]
        for i, row in enumerate(rows):
            try:
                assignment = stage.router.assign(row, times[i])
            except RoutingError as err:
                results[i] = Failure(stage.name, NO_MODEL, str(err))
                continue
            except USER_CODE_ERRORS as err:  # a user key function may raise anything
                results[i] = Failure(stage.name, INPUT_ERROR, f"routing key: {type(err).__name__}: {err}")
                continue
            try:
                examples[i] = stage.inputs(row)
            except USER_CODE_ERRORS as err:  # a user input function may raise anything
                results[i] = Failure(stage.name, INPUT_ERROR, f"{type(err).__name__}: {err}")
                continue
            jobs.setdefault(assignment.served.label, (assignment.served, []))[1].append((i, False))
            if assignment.shadow is not None:
                jobs.setdefault(assignment.shadow.label, (assignment.shadow, []))[1].append((i, True))
        # Models already in memory first, so a pool smaller than the batch's models reloads least.
        order = sorted(jobs.values(), key=lambda job: not self.pool.is_loaded(job[0]))
        for model, members in order:
            self._run_model(model, members, examples, results)
        return results

    def _run_model(
        self, model: Model, members: list[tuple[int, bool]], examples: list[Any], results: list[Row | Failure]
    ) -> None:
        members = [(i, shadow) for i, shadow in members if not isinstance(results[i], Failure)]
        if not members:
            return
        try:
            loaded = self.pool.get(model)
        except ModelLoadError as err:
            for i, shadow in members:
                self._fail(results, i, shadow, Failure(self.stage.name, MODEL_LOAD, str(err)))
            return
        size = self.stage.batching.max_batch_size
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            try:
                predictions = self._infer(model, loaded, [examples[i] for i, _ in chunk])
            except USER_CODE_ERRORS:  # find the rows that fail on their own
                for member in chunk:
                    i, shadow = member
                    try:
                        (prediction,) = self._infer(model, loaded, [examples[i]])
                    except USER_CODE_ERRORS as err:  # a handler may raise anything
                        detail = f"{model.label}: {type(err).__name__}: {err}"
                        self._fail(results, i, shadow, Failure(self.stage.name, INFERENCE_ERROR, detail))
                        continue
                    self._put(results, i, shadow, model, prediction)
                continue
            if self._convert_batch:
                predictions = plain_batch(predictions)
            for (i, shadow), prediction in zip(chunk, predictions, strict=True):
                self._put(results, i, shadow, model, prediction)

    @staticmethod
    def _infer(model: Model, loaded: Any, batch: list[Any]) -> list[Any]:
        predictions = [p.inference for p in model.handler.run_inference(batch, loaded)]
        if len(predictions) != len(batch):
            raise ValueError(f"the handler returned {len(predictions)} predictions for {len(batch)} inputs")
        return predictions

    def _fields_of(self, prediction: Any) -> dict[str, Any]:
        stage = self.stage
        if self._elementwise:
            values = plain(prediction)
            if not isinstance(values, list) or len(values) != len(self._fields):
                raise ValueError(f"expected {len(self._fields)} values, the prediction is {values!r:.60}")
            return {f: _scalar(v) for f, v in zip(self._fields, values, strict=True)}
        out = {}
        for field, fn in stage.outputs.items():
            out[field] = _scalar(plain(prediction)) if fn is None else plain(fn(prediction))
        return out

    def _put(self, results: list[Row | Failure], i: int, shadow: bool, model: Model, prediction: Any) -> None:
        row = results[i]
        if isinstance(row, Failure):
            return
        stage = self.stage
        try:
            fields = self._fields_of(prediction)
        except USER_CODE_ERRORS as err:  # a user output function may raise anything
            detail = f"{model.label}: {type(err).__name__}: {err}"
            self._fail(results, i, shadow, Failure(stage.name, OUTPUT_ERROR, detail))
            return
        if shadow:
            fields = {stage.shadow_field(f): v for f, v in fields.items()}
        row.update(fields)
        if stage.record_model:
            id_field = stage.shadow_field("model_id") if shadow else stage.model_id_field
            version_field = stage.shadow_field("model_version") if shadow else stage.model_version_field
            row[id_field] = model.id
            row[version_field] = model.version

    def _fail(self, results: list[Row | Failure], i: int, shadow: bool, failure: Failure) -> None:
        """A served model's failure fails the row; a shadow's only leaves its fields null."""
        row = results[i]
        if isinstance(row, Failure):
            return
        if shadow:
            if not self.shadow_failures:
                log.warning(
                    "stage %r: the shadow model failed (%s); its fields stay null",
                    failure.stage,
                    failure.detail,
                )
            self.shadow_failures[failure.reason] += 1
            for field in self.stage.output_fields:
                if field.startswith(f"{self.stage.name}_shadow_"):
                    row.setdefault(field, None)
            return
        results[i] = failure


def run_stages(
    scorers: Sequence[StageScorer], rows: Sequence[Row], times: Sequence[int]
) -> list[Row | Failure]:
    """Rows through the stages in order (a cascade); a row failed by one stage skips the rest."""
    results: list[Row | Failure] = list(rows)
    for scorer in scorers:
        live = [i for i, r in enumerate(results) if not isinstance(r, Failure)]
        scored = scorer.score([results[i] for i in live], [times[i] for i in live])  # type: ignore[misc]
        for i, out in zip(live, scored, strict=True):
            results[i] = out
    return results
