"""Model stages give the reference engine's rows, dead letters and counts on Spark, Flink and Beam: a
torch model per key before aggregation (with a pool smaller than the models) and an sklearn
classifier on the feature rows after it, over the conformance suite's generated events."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conformance import assert_same_result, assert_same_rows, generate_events, write_events
from conftest import EVENTS, USER
from inference_models import sklearn_model
from inference_views import scored_view

from backfill.history import read_history
from backfill.spark_session import spark_session
from featurestore import (
    Aggregations,
    Count,
    Field,
    Int64,
    Runner,
    Sliding,
    String,
    UnifiedTransformer,
    stream_feature_view,
)
from transforms.inference import Enrich

pytestmark = pytest.mark.slow


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
    rows = result.rows.toArrow().to_pylist()
    assert_same_result(view, expected, rows, result.counts, result.dead_letter_records(view.name))
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


def test_beam_scores_like_the_reference(tmp_path: Path) -> None:
    seed, n, keys = 23, 500, 6
    (tmp_path / "beam").mkdir()
    out = tmp_path / "beam.pkl"
    job = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("beam_job.py")),
            str(tmp_path / "beam"),
            str(seed),
            str(n),
            str(keys),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    got = pickle.loads(out.read_bytes())

    view = scored_view(tmp_path)  # the same seeds train the same models here
    expected = view.run(generate_events(seed, n=n, keys=keys))
    assert_same_rows(view, expected.rows, got["rows"])
    assert got["counts"] == [expected.counts]
    assert sorted((d.reason, d.raw) for d in got["dead_letters"]) == sorted(
        (d.reason, d.raw) for d in expected.dead_letters
    )
