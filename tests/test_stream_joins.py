"""`mlfs serve-stream` of views with joins, in one Flink job: a view that looks up another view (the
job streams the looked-up view too) and a view over payments joined with refunds. Late and bad
events on either source are dead letters on their own source; the offline rows, online values
(stock Feast) and counts equal the reference over the same arrivals, also after `kill -9` and a
restart from the last checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import AS_OF
from repo_helpers import example_repo
from test_backfill_e2e import latest
from test_backfill_joins import assert_point_in_time_reads
from test_stream_recovery import completed_checkpoint_since
from test_stream_service import (
    STARTUP_S,
    assert_same_outcome,
    drop_file,
    no_leftover_jobs,
    online_values,
    payments,
    plain_rows,
    serve_stream,
    stop_when_quiet,
    wait_for,
)

from featurestore.cli import main
from featurestore.config import feast_store
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.repo import load_repo
from featurestore.stream.sinks import read_status
from transforms.engines.flink_stage1 import SEQ_PARTITION_BITS
from transforms.engines.reference import run_reference
from transforms.events import partitioned, raw_text
from transforms.joining import JoinInputs, LookupTable, source_lateness
from transforms.plan import EVENT_TIMESTAMP
from transforms.stage1 import LINE

__all__ = ["no_leftover_jobs"]  # the fixture, used by every test here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

STATS, HABIT, REFUNDED = "user_payment_stats_7d", "user_amount_vs_habit_7d", "user_refunds_30d"
VIEWS = [STATS, HABIT, REFUNDED]
# Events at these times move every watermark past every row before CUTOFF: a payment waits for
# refunds up to a day after it, and for a payment after that (its own source's watermark).
FLUSH = AS_OF + timedelta(days=90)
LAST = 16  # payments at each of the last two times
CUTOFF = AS_OF + timedelta(days=60)  # rows before it are compared


def refunds_of(rng: random.Random, lines: list[str]) -> list[str]:
    """Refunds of about a third of ``lines``' payments (some twice, some before their payment so
    they pair with nothing, a few amounts null), in time order with disorder under the source's 5 s."""
    refunds: list[dict[str, Any]] = []
    for line in lines:
        payment = json.loads(line)
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            at = AS_OF + timedelta(seconds=_seconds(payment["timestamp"]) + rng.choice([-20, 30, 90, 400]))
            refunds.append(
                {
                    "refund_id": f"r{len(refunds)}",
                    "payment_id": payment["payment_id"],
                    "amount": None if rng.random() < 0.1 else round(rng.uniform(1, 100), 2),
                    "reason": rng.choice(["fraud", "returned"]),
                    "timestamp": at.isoformat(),
                }
            )
    refunds.sort(key=lambda r: _seconds(r["timestamp"]) + rng.uniform(0, 4))
    return [json.dumps(r) for r in refunds]


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(stamp) - AS_OF).total_seconds()


def arrivals(seed: int) -> tuple[list[list[str]], list[list[str]]]:
    """Payment and refund files, in the order they are dropped: each source has a late event and a
    bad line, and the last files move both sources' watermarks far ahead."""
    rng = random.Random(seed)
    pay = [payments(rng, 0, 120), payments(rng, 240, 120)]
    every = refunds_of(rng, pay[0] + pay[1])
    ref = [every[: len(every) // 2], every[len(every) // 2 :]]
    pay[1].append(json.dumps({**json.loads(pay[0][3]), "payment_id": "late"}))  # minutes behind
    pay[1].append('{"user_id": "u001", "timestamp": ')
    ref[1].append(json.dumps({**json.loads(ref[0][2]), "refund_id": "late"}))
    ref[1].append('"just text"')
    flush = {"user_id": "u-flush", "merchant_id": "m00", "amount": 1.0, "status": "ok"}
    # Several at each time: the joins run in parallel, and each instance's watermark must move.
    later = [when for when in (FLUSH, FLUSH + timedelta(days=3)) for _ in range(LAST)]
    pay.append(
        [
            json.dumps({**flush, "payment_id": f"flush{n}", "timestamp": t.isoformat()})
            for n, t in enumerate(later)
        ]
    )
    last = (FLUSH + timedelta(days=5)).isoformat()
    ref.append([json.dumps({"refund_id": "flush", "payment_id": "none", "timestamp": last})])
    return pay, ref


def joined_repo(path: Path) -> tuple[Path, Path, Path]:
    """The example repository with its join views, applied, with empty stream directories:
    (repository, payments directory, refunds directory)."""
    repo = example_repo(path, events=100, with_joins=True)
    assert main(["apply", "--repo", str(repo)]) == 0
    directories = [repo / "data" / "stream" / name for name in ("payments", "refunds")]
    for directory in directories:
        for old in directory.iterdir():
            old.unlink()
    return repo, directories[0], directories[1]


def reference_results(repo_path: Path, pay: list[Any], ref: list[Any]) -> tuple[dict[str, Any], JoinInputs]:
    """Each view's reference result over the arrivals (texts, or ``PartitionedEvent``s of a source
    read as several partitions), and what the join views read."""
    repo = load_repo(repo_path)
    stats = repo.views[STATS]
    lateness = source_lateness(stats.source)
    stats_result = run_reference(stats.plan, pay, lateness=lateness)
    refunds = [partitioned(r) for r in ref]
    inputs = JoinInputs(
        lookups={STATS: LookupTable.of(stats.plan, stats_result.rows)},
        sources={"refunds": pa.table({LINE: pa.array([r.raw.encode() for r in refunds], pa.binary())})},
        partitions={"refunds": [r.partition for r in refunds]},
    )
    results = {STATS: stats_result}
    for name in (HABIT, REFUNDED):
        view = repo.views[name]
        results[name] = run_reference(view.plan, pay, lateness=source_lateness(view.source), joins=inputs)
    return results, inputs


def reference(repo_path: Path, pay: list[Any], ref: list[Any]) -> dict[str, Any]:
    """What the stream must have written, by the reference engine over the same arrivals."""
    repo = load_repo(repo_path)
    results, inputs = reference_results(repo_path, pay, ref)
    outcome: dict[str, Any] = {}
    for name, result in results.items():
        view = repo.views[name]
        rows = [r for r in result.rows if _compared(r)]
        assert rows, f"{name}: no row to compare"
        outcome[f"{name} offline"] = plain_rows(rows)
        want = latest(rows, "user_id")
        features = [f.name for f in view.feature_fields]
        outcome[f"{name} online"] = {f: [want[k][f] for k in sorted(want)] for f in features}
        seqs = {"refunds": _seqs(ref), None: _seqs(pay)}
        outcome[f"{name} dead letters"] = sorted(
            (letter.source or "", seqs[letter.source][letter.raw], letter.reason)
            for letter in result.dead_letters
        )
        outcome[f"{name} counts"] = (result.counts, result.source_counts)
    for name in (HABIT, REFUNDED):
        # The last payments wait for later ones (their joins emit once their own source's watermark
        # passes them): they are counted in, their outcomes are not yet.
        view = repo.views[name]
        settled = run_reference(
            view.plan, pay[:-LAST], lateness=source_lateness(view.source), joins=inputs
        ).counts
        settled.input += LAST
        outcome[f"{name} counts"] = (settled, results[name].source_counts)
    return outcome


def _compared(row: dict[str, Any]) -> bool:
    return bool(row[EVENT_TIMESTAMP].replace(tzinfo=None) < CUTOFF.replace(tzinfo=None))


def _seqs(arrivals: list[Any]) -> dict[str, int]:
    """Each arrival's text and its ``seq`` as Flink's: its partition and its 1-based position there
    (the first arrival of a text)."""
    seqs: dict[str, int] = {}
    counted = Counter[int]()
    for arrival in map(partitioned, arrivals):
        counted[arrival.partition] += 1
        seq = (arrival.partition << SEQ_PARTITION_BITS) + counted[arrival.partition]
        seqs.setdefault(raw_text(arrival.raw), seq)
    return seqs


def streamed(repo_path: Path, views: list[str] = VIEWS) -> dict[str, Any]:
    """What the job wrote for ``views``: offline rows before ``CUTOFF``, online values of their
    keys (stock Feast), dead letters (each once, by source and position) and counts."""
    repo = load_repo(repo_path)
    offline = ParquetOfflineStore(repo.settings.offline_path)
    status_dir = repo.settings.work_path / "stream" / "status"
    outcome: dict[str, Any] = {}
    for name in views:
        view = repo.views[name]
        rows = offline.read(view).drop_columns(["created_timestamp"]).to_pylist()
        rows = [r for r in rows if _compared(r)]
        outcome[f"{name} offline"] = plain_rows(rows)
        outcome[f"{name} online"] = online_values(repo, name, "user_id", sorted({r["user_id"] for r in rows}))
        lines = [
            json.loads(line)
            for f in (repo.settings.dead_letter_path / name).glob("stream-*.jsonl")
            if not f.name.startswith("stream-rows-")
            for line in f.read_text().splitlines()
        ]
        letters = sorted((d.get("source") or "", d["seq"], d["reason"]) for d in lines)
        assert len(set(letters)) == len(letters), f"{name}: a dead letter was written twice"
        outcome[f"{name} dead letters"] = letters
        status = read_status(status_dir, name)
        outcome[f"{name} counts"] = (status.counts, status.source_counts)
    return outcome


def start(repo: Path, log: Path) -> Any:
    """``serve-stream`` of the two join views (the job adds the view they look up)."""
    flags = ["--checkpoint-interval", "1", "--no-metrics", "--parallelism", "2"]
    job = serve_stream(repo, log, HABIT, REFUNDED, *flags)
    wait_for(lambda: "streaming " in log.read_text() or job.poll() is not None, STARTUP_S, "the job to start")
    assert job.poll() is None, log.read_text()[-3000:]
    assert f"also streaming {STATS}" in log.read_text()
    return job


def seen(repo: Path, payments_n: int, refunds_n: int) -> bool:
    status = read_status(load_repo(repo).settings.work_path / "stream" / "status", REFUNDED)
    joined = status.source_counts.get("refunds")
    return status.counts.input >= payments_n and joined is not None and joined.input >= refunds_n


def drop(repo: Path, directories: tuple[Path, Path], number: int, pay: list[str], ref: list[str]) -> None:
    drop_file(directories[0], f"{number}.jsonl", pay)
    drop_file(directories[1], f"{number}.jsonl", ref)


def test_a_job_with_joins_killed_and_restarted_gives_the_reference_result(tmp_path: Path) -> None:
    """One job lifecycle (a run of its own would only repeat it): the join views at parallelism 2,
    killed with ``kill -9`` after a checkpoint, restarted, then fed to the end."""
    repo, pay_dir, ref_dir = joined_repo(tmp_path / "repo")
    pay, ref = arrivals(3)
    checkpoints = load_repo(repo).settings.work_path / "stream" / "checkpoints"
    job = start(repo, tmp_path / "run0.log")
    drop(repo, (pay_dir, ref_dir), 0, pay[0], ref[0])
    wait_for(lambda: seen(repo, len(pay[0]), len(ref[0])), STARTUP_S, "files 0")
    after = time.time()
    wait_for(lambda: completed_checkpoint_since(checkpoints, after), 120, "a checkpoint with files 0")
    drop(repo, (pay_dir, ref_dir), 1, pay[1], ref[1])
    time.sleep(random.uniform(0.5, 3.0))
    os.killpg(job.pid, signal.SIGKILL)  # the CLI, its JVM and the Python workers
    job.wait()

    job = start(repo, tmp_path / "run1.log")
    wait_for(lambda: seen(repo, len(pay[0]) + len(pay[1]), len(ref[0]) + len(ref[1])), STARTUP_S, "files 1")
    restarted = time.time()
    wait_for(
        lambda: completed_checkpoint_since(checkpoints, restarted), 120, "a checkpoint after the restart"
    )
    drop(repo, (pay_dir, ref_dir), 2, pay[2], ref[2])
    wait_for(lambda: seen(repo, sum(map(len, pay)), sum(map(len, ref))), 120, "files 2")
    output = stop_when_quiet(job, load_repo(repo).settings.work_path / "stream" / "status", VIEWS)
    assert "restoring from" in output
    arrived = [line for f in pay for line in f], [line for f in ref for line in f]
    expected = reference(repo, *arrived)
    counts, joined = expected[f"{REFUNDED} counts"]
    assert counts.late == 1 and joined["refunds"].late == 1 and joined["refunds"].dead_lettered == 1
    assert any(source == "refunds" for source, _, _ in expected[f"{REFUNDED} dead letters"])
    assert_same_outcome(streamed(repo), expected)
    results, _ = reference_results(repo, *arrived)
    loaded = load_repo(repo)
    for name in (HABIT, REFUNDED):
        rows = sorted((r for r in results[name].rows if _compared(r)), key=lambda r: r[EVENT_TIMESTAMP])
        features = [f.name for f in loaded.views[name].feature_fields]
        assert_point_in_time_reads(feast_store(loaded.settings), name, features, rows)
