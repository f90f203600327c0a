"""Spark backfill: kill -9 and resume, a real standalone cluster, and --dry-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conformance import assert_same_rows
from conftest import AS_OF, free_port, wait_for_json
from repo_helpers import example_repo
from test_backfill_e2e import latest, same_features

from backfill.history import history_path, read_history
from featurestore.cli import main
from featurestore.config import feast_store
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.repo import load_repo
from transforms.events import DeadLetter
from transforms.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP

pytestmark = pytest.mark.slow

MLFS = str(Path(sys.executable).with_name("mlfs"))
VIEW = "user_payment_stats_7d"


def applied(path: Path, chunk_rows: int | None = None) -> Path:
    """The example repository, applied; with ``chunk_rows``, the embedded engine's chunk size."""
    repo = example_repo(path, events=3000)
    if chunk_rows is not None:
        settings = repo / "feature_store.yaml"
        text = settings.read_text().replace(
            "\nmlfs:\n", f"\nmlfs:\n  backfill:\n    chunk_rows: {chunk_rows}\n"
        )
        settings.write_text(text)
    assert main(["apply", "--repo", str(repo)]) == 0
    return repo


def backfill_args(repo: Path, *extra: str, engine: str = "spark") -> list[str]:
    return ["backfill", VIEW, "--end", AS_OF.isoformat(), "--engine", engine, "--repo", str(repo), *extra]


def stored_rows(repo: Any) -> list[dict[str, Any]]:
    table = ParquetOfflineStore(repo.settings.offline_path).read(repo.views[VIEW])
    return [{k: v for k, v in r.items() if k != CREATED_TIMESTAMP} for r in table.to_pylist()]


def assert_reference_output(repo_path: Path) -> None:
    """The offline rows, online values and dead letters of ``VIEW`` are the reference engine's over
    the same history, as an uninterrupted local backfill's are (test_backfill_e2e)."""
    repo = load_repo(repo_path)
    view = repo.views[VIEW]
    reference = view.run(read_history(history_path(repo, view)))
    expected = [r for r in reference.rows if r[EVENT_TIMESTAMP] < AS_OF]
    assert_same_rows(view, expected, stored_rows(repo))
    want = latest(expected, "user_id")
    features = [f.name for f in view.feature_fields]
    entity_rows = [{"user_id": u} for u in sorted(want)]
    got = (
        feast_store(repo.settings)
        .get_online_features(features=[f"{VIEW}:{f}" for f in features], entity_rows=entity_rows)
        .to_dict()
    )
    for i, entity in enumerate(entity_rows):
        values = {f: got[f][i] for f in features}
        assert same_features(values, {f: want[entity["user_id"]][f] for f in features}), (entity, values)
    letters = [
        DeadLetter.from_json(line)
        for p in (repo_path / "data" / "dead_letter").rglob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert reference.dead_letters  # so that a lost or repeated one shows
    assert sorted((d.reason, d.raw) for d in letters) == sorted(
        (d.reason, d.raw) for d in reference.dead_letters
    )


def _kill_after_two_chunks(repo: Path, engine: str) -> bool:
    """Start a backfill of ``repo`` and kill -9 it once two chunks are recorded; whether it was
    killed with work left to resume (a loaded machine may let it finish before the kill)."""
    work = repo / "data" / "work" / "backfill" / VIEW
    proc = subprocess.Popen(
        [MLFS, *backfill_args(repo, "--chunk-days", "7", engine=engine)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the Spark JVM dies with it
    )
    deadline = time.monotonic() + 300
    done: list[int] = []
    while len(done) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no chunk was recorded in time"
        for manifest in work.glob("*/manifest.json"):
            try:
                done = json.loads(manifest.read_text())["chunks_done"]
            except (ValueError, OSError):
                pass
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait() == -signal.SIGKILL and any(work.glob("*/manifest.json"))


@pytest.mark.parametrize("engine", ["spark", "embedded"])
def test_killed_backfill_resumes_to_identical_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str
) -> None:
    for attempt in range(3):  # a loaded machine may let the run finish between a look and the kill
        killed = applied(tmp_path / f"killed{attempt}", chunk_rows=60)  # embedded: chunks of a few days
        if _kill_after_two_chunks(killed, engine):
            break
    else:
        pytest.fail("the backfill finished before it could be killed, three times")
    work = killed / "data" / "work" / "backfill" / VIEW

    capsys.readouterr()
    args = backfill_args(killed, "--chunk-days", "7", engine=engine)
    resumed = [a for a in args if a not in ("--end", AS_OF.isoformat())]
    assert main(resumed) == 0  # without --end: the interrupted run's end is kept
    out = capsys.readouterr().out
    skipped = int(out.split(" chunk(s) already done")[0].rsplit("; ", 1)[1])
    assert skipped >= 2, out
    assert_reference_output(killed)
    assert not any(work.iterdir())  # a finished run leaves no work behind


@pytest.mark.parametrize(("engine", "chunk_rows"), [("spark", 200), ("embedded", 200), ("embedded", None)])
def test_overlapping_ranges_leave_exactly_the_reference_rows(
    tmp_path: Path, engine: str, chunk_rows: int | None
) -> None:
    """Chunks of a few days, and (embedded, default chunk size) one chunk: the tumbling view's rows
    then go from stage 1 straight into the window kernel, never stored."""
    repo_path = applied(tmp_path / "repo", chunk_rows=chunk_rows)
    first = (AS_OF - timedelta(days=20), AS_OF - timedelta(days=8))
    second = (AS_OF - timedelta(days=12), AS_OF - timedelta(days=1))
    for start, end in (first, second):
        args = ["backfill", "--start", start.isoformat(), "--end", end.isoformat(), "--chunk-days", "5"]
        args += ["--engine", engine]
        assert main([*args, "--repo", str(repo_path)]) == 0
    repo = load_repo(repo_path)
    offline = ParquetOfflineStore(repo.settings.offline_path)
    for view in repo.views.values():
        expected = [
            r
            for r in view.run(read_history(history_path(repo, view))).rows
            if first[0] <= r["event_timestamp"] < second[1]
        ]
        stored = [
            {k: v for k, v in r.items() if k != CREATED_TIMESTAMP} for r in offline.read(view).to_pylist()
        ]
        assert_same_rows(view, expected, stored)


def test_dry_run_prints_the_plan_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = applied(tmp_path / "repo")
    capsys.readouterr()
    assert (
        main(backfill_args(repo, "--dry-run", "--chunk-days", "1", "--spark-master", "spark://example:7077"))
        == 0
    )
    out = capsys.readouterr().out
    assert "engine: spark (master spark://example:7077, chunks of 1 day(s))" in out
    assert f"view {VIEW}: window continuous, source payments, 1 input file(s)" in out
    assert "partitions: from the first event's date to 2026-11-22 per view" in out
    assert not (repo / "data" / "offline").exists()


@pytest.fixture
def standalone_spark(tmp_path: Path) -> Iterator[str]:
    """A real Spark standalone master and worker on localhost, from pyspark's own spark-class."""
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(tmp_path / "logs"),
        "SPARK_WORKER_DIR": str(tmp_path / "work"),
    }
    port, ui = free_port(), free_port()
    spark_class = str(home / "bin" / "spark-class")
    master = subprocess.Popen(
        [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"spark://127.0.0.1:{port}"
    worker = subprocess.Popen(
        [
            spark_class,
            "org.apache.spark.deploy.worker.Worker",
            url,
            "--cores",
            "1",
            "--memory",
            "1g",
            "--webui-port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_json(
            f"http://127.0.0.1:{ui}/json/",
            lambda overview: overview.get("aliveworkers", 0) >= 1,
            "the standalone Spark cluster",
        )
        yield url
    finally:
        for proc in (worker, master):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_standalone_cluster_gives_the_reference_rows(tmp_path: Path, standalone_spark: str) -> None:
    cluster = applied(tmp_path / "cluster")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    proc = subprocess.run(
        [MLFS, *backfill_args(cluster, "--chunk-days", "7", "--spark-master", standalone_spark)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_reference_output(cluster)
    shutil.rmtree(tmp_path / "cluster" / "data" / "offline")


SCORED_VIEW = """
from datetime import timedelta

from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy
from features import payments, user

from featurestore import (
    Aggregations, Count, Enrich, Field, Float64, Int64, Model, Sliding, String, Sum, UnifiedTransformer,
    stream_feature_view,
)

label = Model("label", SklearnModelHandlerNumpy(model_uri={uri!r}), version="1")


def label_inputs(row):
    if row["n_7d"] == 3:
        raise ValueError("three payments: no label")  # a feature row the model stage dead-letters
    return [float(row["n_7d"]), (row["amount_7d"] or 0.0) / 100]


@stream_feature_view(
    entities=[user],
    source=payments,
    ttl=timedelta(days=30),
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="n_7d", dtype=Int64),
        Field(name="amount_7d", dtype=Float64),
        Field(name="label", dtype=Int64),
    ],
)
def user_label_7d(ctx, inputs):
    return UnifiedTransformer(
        ctx,
        window=Sliding(size=timedelta(days=7)),
        aggregator=Aggregations(n_7d=Count(), amount_7d=Sum("amount")),
        enrich_rows=Enrich("label", label, inputs=label_inputs, outputs="label", record_model=False),
    ).run(inputs)
"""


@pytest.mark.parametrize("engine", ["spark", "embedded"])
def test_a_view_scored_after_aggregation_backfills_the_reference_rows(tmp_path: Path, engine: str) -> None:
    """A model stage on the feature rows: the scored rows offline and online, and the rows it
    refuses dead-lettered, as the reference engine gives them."""
    from inference_models import train_sklearn

    repo_path = example_repo(tmp_path / "repo", events=400)
    model = train_sklearn(tmp_path / "label.pkl", seed=5)
    (repo_path / "scored.py").write_text(SCORED_VIEW.format(uri=str(model)))
    assert main(["apply", "--repo", str(repo_path)]) == 0
    args = ["backfill", "user_label_7d", "--end", AS_OF.isoformat(), "--engine", engine]
    assert main([*args, "--repo", str(repo_path)]) == 0
    repo = load_repo(repo_path)
    view = repo.views["user_label_7d"]
    reference = view.run(read_history(history_path(repo, view)))
    assert reference.counts.rows_dead_lettered > 0 and {r["label"] for r in reference.rows} == {0, 1}
    expected = [r for r in reference.rows if r[EVENT_TIMESTAMP] < AS_OF]
    table = ParquetOfflineStore(repo.settings.offline_path).read(view)
    stored = [{k: v for k, v in r.items() if k != CREATED_TIMESTAMP} for r in table.to_pylist()]
    assert_same_rows(view, expected, stored)
    want = latest(expected, "user_id")
    got = (
        feast_store(repo.settings)
        .get_online_features(
            features=[f"user_label_7d:{f}" for f in ("n_7d", "label")],
            entity_rows=[{"user_id": u} for u in sorted(want)],
        )
        .to_dict()
    )
    assert [(n, lab) for n, lab in zip(got["n_7d"], got["label"], strict=True)] == [
        (want[u]["n_7d"], want[u]["label"]) for u in sorted(want)
    ]
    letters = [
        DeadLetter.from_json(line)
        for p in (repo_path / "data" / "dead_letter").rglob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    refused = [d for d in reference.dead_letters if d.reason.startswith("inference")]
    assert refused and sorted(
        (d.reason, d.raw) for d in letters if d.reason.startswith("inference")
    ) == sorted((d.reason, d.raw) for d in refused if ms_of(d) < AS_OF)


def ms_of(letter: DeadLetter) -> Any:
    return letter.event_time


def test_history_outside_the_years_or_far_apart_costs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A row dated year 1 was cut into 105,700 weekly chunks (10 hours); it is a bad_time dead
    # letter now. A row at the epoch (1970, a time a null became) is valid: the 56 years of empty
    # history after it cost no Spark job.
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo_path = example_repo(tmp_path / "repo", events=300)
    assert main(["apply", "--repo", str(repo_path)]) == 0
    history = repo_path / "data" / "history" / "payments.parquet"
    table = pq.read_table(history)
    first = table.slice(0, 1).to_pylist()[0]
    odd = [
        {**first, "payment_id": "year-1", "timestamp": first["timestamp"].replace(year=1)},
        {**first, "payment_id": "epoch", "timestamp": first["timestamp"].replace(year=1970, month=1, day=1)},
    ]
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist(odd, schema=table.schema)]), history)
    capsys.readouterr()
    assert main(backfill_args(repo_path, "--chunk-days", "7")) == 0
    out = capsys.readouterr().out
    assert " chunk(s) of empty history" in out, out
    repo = load_repo(repo_path)
    assert not list((repo.settings.offline_path / VIEW).glob("date=0001-*"))
    assert list((repo.settings.offline_path / VIEW).glob("date=1970-01-01"))
    assert_reference_output(repo_path)
    letters = [
        DeadLetter.from_json(line)
        for p in (repo_path / "data" / "dead_letter").rglob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert [d.reason for d in letters if "year-1" in d.raw] == ["bad_time"]


def test_a_tidy_history_backfills_the_reference_rows_with_no_python_part(tmp_path: Path) -> None:
    # Spark SQL prepares every event of a tidy history, so stage 1's Python part is an empty file
    # rather than a pass over every column; the rows and counts are still the reference's.
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from backfill.runner import plan_backfill, run_backfill

    repo_path = example_repo(tmp_path / "repo", events=2000)
    assert main(["apply", "--repo", str(repo_path)]) == 0
    history = repo_path / "data" / "history" / "payments.parquet"
    table = pq.read_table(history)
    clean = pc.and_(
        pc.and_(pc.is_valid(table.column("user_id")), pc.is_valid(table.column("timestamp"))),
        pc.is_finite(pc.fill_null(table.column("amount"), 0.0)),
    )
    pq.write_table(table.filter(clean), history)
    repo = load_repo(repo_path)
    view = repo.views[VIEW]
    reference = view.run(read_history(history_path(repo, view)))
    assert not reference.dead_letters and reference.counts.aggregated == reference.counts.input > 1000
    plan = plan_backfill(repo, [VIEW], None, AS_OF, "spark", "local[2]")
    (report,) = run_backfill(repo, plan, restart=True)
    assert report.counts.input == report.counts.aggregated == reference.counts.input
    assert report.counts.dead_lettered == 0 and report.counts.balanced
    assert_same_rows(view, [r for r in reference.rows if r[EVENT_TIMESTAMP] < AS_OF], stored_rows(repo))


BIG_SUMS = """

@stream_feature_view(
    entities=[user], source=payments,
    schema=[Field(name="user_id", dtype=String), Field(name="big_total_7d", dtype=Int64)],
)
def user_big_total_7d(ctx, inputs):
    return UnifiedTransformer(
        ctx,
        event_transform=Select(user_id=col("user_id"), big=col("big")),
        window=Sliding(size=timedelta(days=7)),
        aggregator=Aggregations(big_total_7d=Sum("big")),
    ).run(inputs)
"""


@pytest.mark.parametrize("engine", ["spark", "embedded", "reference"])
def test_an_integer_sum_past_int64_is_a_one_line_error_naming_the_view(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = example_repo(tmp_path / "repo", events=200)
    features = repo / "features.py"
    features.write_text(features.read_text() + BIG_SUMS)
    history = repo / "data" / "history" / "payments.parquet"
    table = pq.read_table(history)
    pq.write_table(table.append_column("big", pa.array([2**62] * table.num_rows, pa.int64())), history)
    assert main(["apply", "--repo", str(repo)]) == 0
    capsys.readouterr()
    view = "user_big_total_7d"
    assert main(["backfill", view, "--engine", engine, "--end", AS_OF.isoformat(), "--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "view 'user_big_total_7d': a value of feature 'big_total_7d' (sum(big), Int64) does not fit" in err
