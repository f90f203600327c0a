"""Model stages give the reference engine's rows, dead letters and counts on Spark: a torch model per
key before aggregation (with a pool smaller than the models) and an sklearn classifier on the
feature rows after it, over the conformance suite's generated events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from conformance import assert_same_rows, generate_events, split_and_drop, write_events
from conftest import EVENTS, USER
from inference_models import sklearn_model, torch_model

from backfill.runner import read_history
from backfill.spark_session import spark_session
from featurestore import (
    Aggregations,
    Count,
    Field,
    Float64,
    Int64,
    Latest,
    Max,
    Runner,
    Sliding,
    String,
    Sum,
    UnifiedTransformer,
    stream_feature_view,
)
from transforms.inference import Batching, Enrich, KeyedModels

pytestmark = pytest.mark.slow


def risk_inputs(row: dict[str, Any]) -> torch.Tensor:
    if row.get("tag") == "e" and row.get("i") is None:
        raise ValueError("no input for tag e without i")
    v = row.get("v")
    i = row.get("i")
    return torch.tensor(
        [0.0 if v is None else v / 100, 0.0 if i is None else i / 50, len(row.get("tag") or "")],
        dtype=torch.float64,
    )


def label_inputs(row: dict[str, Any]) -> list[float]:
    return [float(row["n"]), row["risk_sum"] or 0.0]


def scored_view(tmp: Path) -> Any:
    segments = {tag: torch_model(tmp, f"seg-{tag}", seed=n) for n, tag in enumerate("abc", start=1)}
    fallback = torch_model(tmp, "fallback", seed=7)
    label = sklearn_model(tmp, "label", seed=5, version="2")

    def model_scores(ctx: Any, inputs: Any) -> Any:
        return UnifiedTransformer(
            ctx,
            event_transform=split_and_drop,
            enrich_events=Enrich(
                "risk",
                KeyedModels("tag", segments, max_loaded=1, default=fallback),
                inputs=risk_inputs,
                outputs="risk",
                batching=Batching(max_batch_size=8),
            ),
            window=Sliding(timedelta(seconds=10)),
            aggregator=Aggregations(
                n=Count(), risk_sum=Sum("risk"), risk_max=Max("risk"), risk_model=Latest("risk_model_id")
            ),
            enrich_rows=Enrich("label", label, inputs=label_inputs, outputs="label", batching=Batching(5)),
        ).run(inputs)

    schema = [
        Field("user_id", String),
        Field("n", Int64),
        Field("risk_sum", Float64),
        Field("risk_max", Float64),
        Field("risk_model", String),
        Field("label", Int64),
        Field("label_model_id", String),
        Field("label_model_version", String),
    ]
    return stream_feature_view(entities=[USER], schema=schema, source=EVENTS)(model_scores)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    yield spark_session("local[2]", "mlfs-tests")


def test_spark_scores_like_the_reference(spark: Any, tmp_path: Path) -> None:
    view = scored_view(tmp_path)
    path = write_events(generate_events(21, n=800, keys=6), tmp_path / "events.parquet")
    expected = view.run(read_history(path))
    reasons = {d.reason for d in expected.dead_letters}
    assert "inference:input_error" in reasons and {r["risk_model"] for r in expected.rows} >= {
        "seg-a",
        "fallback",
    }
    assert {r["label"] for r in expected.rows} == {0, 1}

    result = view.run(spark.read.parquet(str(path)), Runner.SPARK)
    assert_same_rows(view, expected.rows, result.rows.toArrow().to_pylist())
    assert result.counts == expected.counts and result.counts.balanced
    assert sorted((d.reason, d.raw) for d in result.dead_letter_records(view.name)) == sorted(
        (d.reason, d.raw) for d in expected.dead_letters
    )
    result.release()


def test_spark_dead_letters_feature_rows_a_model_refuses(spark: Any, tmp_path: Path) -> None:
    label = sklearn_model(tmp_path, "label", seed=5)

    def refuse_k1(row: dict[str, Any]) -> list[float]:
        return [float(row["n"])] if row["user_id"] == "k1" else [float(row["n"]), 1.0]

    def counted(ctx: Any, inputs: Any) -> Any:
        return UnifiedTransformer(
            ctx,
            window=Sliding(timedelta(seconds=10)),
            aggregator=Aggregations(n=Count()),
            enrich_rows=Enrich("label", label, inputs=refuse_k1, outputs="label", record_model=False),
        ).run(inputs)

    view = stream_feature_view(
        entities=[USER],
        schema=[Field("user_id", String), Field("n", Int64), Field("label", Int64)],
        source=EVENTS,
    )(counted)
    path = write_events(generate_events(22, n=300, keys=4), tmp_path / "events.parquet")
    expected = view.run(read_history(path))
    assert expected.counts.rows_dead_lettered > 0
    result = view.run(spark.read.parquet(str(path)), Runner.SPARK)
    assert_same_rows(view, expected.rows, result.rows.toArrow().to_pylist())
    assert result.counts == expected.counts
    assert sorted((d.reason, d.raw) for d in result.dead_letter_records(view.name)) == sorted(
        (d.reason, d.raw) for d in expected.dead_letters
    )
    result.release()


def test_flink_scores_like_the_reference(tmp_path: Path) -> None:
    view = scored_view(tmp_path)
    events = generate_events(23, n=500, keys=6)
    expected = view.run(events)
    assert expected.dead_letters and {r["label"] for r in expected.rows} == {0, 1}

    result = view.run(events, Runner.FLINK)
    assert_same_rows(view, expected.rows, result.rows)
    assert result.counts == expected.counts
    assert sorted((d.reason, d.raw) for d in result.dead_letters) == sorted(
        (d.reason, d.raw) for d in expected.dead_letters
    )
