"""Model stages after aggregation: every engine's feature rows go through ``FeatureRowScorer``,
which adds the stages' fields typed as the schema declares them and dead-letters rows that cannot
be scored (the row, as JSON, is the dead letter's raw input)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from transforms.dtypes import CoercionError, feature_value
from transforms.events import DeadLetter
from transforms.inference.scoring import OUTPUT_ERROR, Failure, StageScorer, run_stages
from transforms.plan import EVENT_TIMESTAMP, TransformPlan
from transforms.timeutil import parse_event_time


class FeatureRowScorer:
    """Runs a plan's after-aggregation stages over batches of feature rows."""

    def __init__(self, plan: TransformPlan) -> None:
        self.plan = plan
        self.scorers = [
            StageScorer(stage, pool_name=f"{plan.view}/{stage.name}") for stage in plan.row_stages
        ]

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[DeadLetter]]:
        """The scored rows (in input order, failures left out) and a dead letter per failure."""
        scored: list[dict[str, Any]] = []
        letters: list[DeadLetter] = []
        for result in self.score_each(rows):
            if isinstance(result, DeadLetter):
                letters.append(result)
            else:
                scored.append(result)
        return scored, letters

    def score_each(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any] | DeadLetter]:
        """Each row scored, or its dead letter, in input order."""
        if not self.scorers:
            return list(rows)
        times = [parse_event_time(row[EVENT_TIMESTAMP]) for row in rows]
        out: list[dict[str, Any] | DeadLetter] = []
        for row, result in zip(rows, run_stages(self.scorers, rows, times), strict=True):
            if not isinstance(result, Failure):
                try:
                    for name, dtype in self.plan.row_outputs:
                        result[name] = feature_value(result.get(name), dtype)
                except CoercionError as err:
                    result = Failure("", OUTPUT_ERROR, f"field {name!r}: {err}")
            out.append(self._dead_letter(row, result) if isinstance(result, Failure) else result)
        return out

    def _dead_letter(self, row: dict[str, Any], failure: Failure) -> DeadLetter:
        detail = failure.describe() if failure.stage else failure.detail
        return DeadLetter(
            view=self.plan.view,
            reason=failure.dead_letter_reason,
            detail=detail,
            raw=json.dumps(row, default=str, sort_keys=True),
            event_time=row.get(EVENT_TIMESTAMP),
        )
