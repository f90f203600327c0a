"""The example's pretrained-model view (`mlfs init --with-embeddings`): all-MiniLM-L6-v2 from the
offline package scores failure reasons; Spark gives the reference engine's rows, and the
similarities rank the reasons as their meaning does."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import AS_OF

from backfill.history import read_history
from backfill.spark_session import spark_session
from featurestore import Runner
from featurestore.cli import main
from featurestore.repo import load_repo
from featurestore.scaffold import FAILURE_REASONS
from transforms.compare import diff_rows
from transforms.inference.handlers import SentenceEmbeddingHandler

pytestmark = pytest.mark.slow


def test_embedding_view_on_reference_and_spark(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    assert (
        main(["init", str(repo_path), "--as-of", AS_OF.isoformat(), "--events", "600", "--with-embeddings"])
        == 0
    )
    assert main(["apply", "--repo", str(repo_path)]) == 0
    view = load_repo(repo_path).view("user_failure_semantics_7d")
    history = repo_path / "data" / "history" / "payments.parquet"

    expected = view.run(read_history(history))
    assert expected.counts.aggregated > 30
    # The generated history has a few broken events; the model itself refuses none.
    assert not [d for d in expected.dead_letters if d.reason.startswith("inference:")]
    spark = spark_session("local[2]", "mlfs-tests")
    got = view.run(spark.read.parquet(str(history)), Runner.SPARK)
    assert not diff_rows(view.plan, expected.rows, got.rows.toArrow().to_pylist())
    assert got.counts == expected.counts
    got.release()

    # Each value is the similarity of one of the reasons the generator uses; a shortfall scores
    # above a declined card (MiniLM does not know what the acronym "ach nsf" means).
    handler = SentenceEmbeddingHandler(compare_to=["not enough money in the account"])
    model = handler.load_model()
    scores = {
        reason: next(iter(handler.run_inference([reason.replace("_", " ")], model))).inference[0]
        for reason in FAILURE_REASONS
    }
    assert scores["insufficient_funds"] > scores["card_declined"] + 0.3
    seen = {r["shortfall_similarity_max_7d"] for r in expected.rows if r["fails_7d"]}
    assert seen and seen <= set(scores.values())
