"""The Spark engine gives exactly the reference engine's rows, dead letters and counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conformance import WINDOWS, assert_same_rows, conformance_view, generate_events, write_events

from backfill.runner import read_history
from backfill.spark_session import spark_session
from featurestore import Runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = spark_session("local[2]", "mlfs-tests")
    yield session


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("seed", [1, 2])
def test_spark_rows_equal_reference(spark: Any, tmp_path: Path, window: str, seed: int) -> None:
    view = conformance_view(window)
    path = write_events(generate_events(seed), tmp_path / "events.parquet")

    expected = view.run(read_history(path))
    result = view.run(spark.read.parquet(str(path)), Runner.SPARK)
    got = result.rows.toArrow().to_pylist()
    assert_same_rows(view, expected.rows, got)

    assert result.counts == expected.counts and result.counts.balanced
    assert sorted((d.reason, d.raw) for d in result.dead_letter_records(view.name)) == sorted(
        (d.reason, d.raw) for d in expected.dead_letters
    )
    result.release()
