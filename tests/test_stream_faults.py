"""Faults while `mlfs serve-stream` runs: a Redis online store that goes away for a while (the job
restarts from its last checkpoint and, once Redis is back, catches up with nothing lost or doubled),
one that never comes back (serve-stream stops non-zero with one line naming the cause), and a file
of hostile lines (the job goes on, every line gets the reference's outcome)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import start_redis, stop_redis
from test_hostile_history import fuzz_lines
from test_stream_service import (
    STARTUP_S,
    assert_same_outcome,
    drop_file,
    empty_stream_repo,
    flink_log_dir,
    log_of,
    no_leftover_jobs,
    payments,
    reference_outcome,
    serve_stream,
    stop_when_quiet,
    stream_outcome,
    wait_for,
)

from featurestore.repo import load_repo
from featurestore.stream.sinks import read_status

__all__ = ["no_leftover_jobs"]  # the fixture, used by every test here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

VIEWS = [("user_payment_stats_7d", "user_id"), ("user_last_payment_fail", "user_id")]


def redis_repo(path: Path, port: int, **flink: object) -> Path:
    os.environ["MLFS_TEST_REDIS"] = f"127.0.0.1:{port},socket_timeout=2,socket_connect_timeout=2"
    repo, _ = empty_stream_repo(path, redis_env="MLFS_TEST_REDIS")
    config_file = repo / "feature_store.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["mlfs"].setdefault("flink", {}).update(flink)
    config_file.write_text(yaml.safe_dump(config))
    return repo


def flink_state(log: Path) -> str:
    """The job's state, tasks and failures from Flink's REST API (named in serve-stream's output)."""
    import json
    import re
    import urllib.request

    found = re.search(r"job (\w+); Flink's REST API on (\S+)", log.read_text())
    if found is None:
        return "no REST API in the output"
    job_id, rest = found.groups()
    answers = []
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/exceptions", f"/jobs/{job_id}/checkpoints"):
        try:
            with urllib.request.urlopen(f"{rest}{path}", timeout=5) as answer:
                answers.append(json.dumps(json.load(answer))[:3000])
        except OSError as err:
            answers.append(f"{path}: {err}")
    warnings = [
        line[:300]
        for path in sorted(flink_log_dir(log).glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if " WARN " in line or " ERROR " in line
    ]
    answers.append("the JVM's last warnings: " + " / ".join(warnings[-15:]))
    return " | ".join(answers)


def counted(repo: Path) -> int:
    status_dir = load_repo(repo).settings.work_path / "stream" / "status"
    return read_status(status_dir, "user_payment_stats_7d").counts.input


def test_redis_away_for_20_s_then_back_loses_and_doubles_nothing(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    port, redis_proc = start_redis(data, persist=True)
    try:
        repo = redis_repo(tmp_path / "repo", port, restart_delay_s=2)
        stream_dir = repo / "data" / "stream" / "payments"
        rng = random.Random(4)
        files = [payments(rng, 0, 150), payments(rng, 400, 150), payments(rng, 800, 100)]
        job = serve_stream(repo, tmp_path / "stream.log", "--checkpoint-interval", "1", "--no-metrics")
        drop_file(stream_dir, "0.jsonl", files[0])
        wait_for(lambda: counted(repo) >= len(files[0]), STARTUP_S, "file 0")
        time.sleep(3)  # a checkpoint and the first rows in Redis
        stop_redis(redis_proc)
        drop_file(stream_dir, "1.jsonl", files[1])
        time.sleep(20)
        port, redis_proc = start_redis(data, port=port, persist=True)
        drop_file(stream_dir, "2.jsonl", files[2])
        total = sum(len(f) for f in files)
        try:
            wait_for(lambda: counted(repo) >= total, 240, "every file after Redis came back")
        except AssertionError as err:
            raise AssertionError(f"{err}; Flink says: {flink_state(log_of(job))}") from None
        output = stop_when_quiet(
            job, load_repo(repo).settings.work_path / "stream" / "status", ["user_payment_stats_7d"]
        )
        assert "the job failed and restarts from its last checkpoint (1 of at most 10): MLFSError: " in output
        expected = reference_outcome(repo, VIEWS, [line for f in files for line in f])
        assert_same_outcome(stream_outcome(repo, VIEWS, replayed=True), expected)
    finally:
        os.environ.pop("MLFS_TEST_REDIS", None)
        stop_redis(redis_proc)


def test_redis_that_never_comes_back_stops_serve_stream_with_the_cause(tmp_path: Path) -> None:
    port, redis_proc = start_redis(tmp_path)
    try:
        repo = redis_repo(tmp_path / "repo", port, restart_delay_s=1)
        stream_dir = repo / "data" / "stream" / "payments"
        job = serve_stream(repo, tmp_path / "stream.log", "--no-metrics", "--max-restarts", "2")
        drop_file(stream_dir, "0.jsonl", payments(random.Random(5), 0, 50))
        wait_for(lambda: counted(repo) >= 50, STARTUP_S, "file 0")
        stop_redis(redis_proc)
        drop_file(stream_dir, "1.jsonl", payments(random.Random(6), 400, 50))
        job.wait(timeout=300)
        output = log_of(job).read_text()
        errors = [line for line in output.splitlines() if line.startswith("mlfs: ")]
        assert job.returncode == 1, output[-3000:]
        assert len(errors) == 1 and errors[0].startswith("mlfs: error: the streaming job stopped (FAILED): ")
        assert "MLFSError: online store redis at 127.0.0.1:" in errors[0]
        restarts = [line for line in output.splitlines() if line.startswith("the job failed and restarts")]
        # Failures are read every second or two, so the last restart may come just before the end.
        assert 1 <= len(restarts) <= 2 and all("online store redis at 127.0.0.1:" in r for r in restarts)
    finally:
        os.environ.pop("MLFS_TEST_REDIS", None)
        if redis_proc.poll() is None:
            stop_redis(redis_proc)


def test_a_file_of_hostile_lines_never_stops_the_job(tmp_path: Path) -> None:
    """The operator's fuzz file: 3,000 lines, half of them hostile (deep nesting, bytes that are not
    UTF-8, infinities, huge values, odd times, wrong types): the job keeps running, each view's
    counts balance, every bad line is dead-lettered once with its reason, and the rows are the
    reference's."""
    repo, stream_dir = empty_stream_repo(tmp_path / "repo")
    lines = fuzz_lines(random.Random(9))
    (stream_dir / ".fuzz.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    (stream_dir / ".fuzz.jsonl").rename(stream_dir / "fuzz.jsonl")
    job = serve_stream(repo, tmp_path / "stream.log", "--no-metrics")
    wait_for(lambda: counted(repo) >= len(lines), STARTUP_S, "the fuzz file")
    output = stop_when_quiet(
        job, load_repo(repo).settings.work_path / "stream" / "status", [v for v, _ in VIEWS]
    )
    assert "restarts" not in output
    expected = reference_outcome(repo, VIEWS, lines)
    got = stream_outcome(repo, VIEWS)
    for name, _ in VIEWS:
        assert got[f"{name} counts"].balanced and got[f"{name} counts"].input == len(lines)
    assert_same_outcome(got, expected)


def test_a_local_taskmanager_that_stops_is_replaced_and_the_job_runs_again() -> None:
    """Flink's mini-cluster stops its only TaskManager on a fatal error in a task's cleanup (a race
    when several Python operators fail at once); the restarted job then waits for slots forever.
    ``LocalTaskManagers`` starts another, so the job runs again; one that keeps dying is an error."""
    import json
    import urllib.request

    from pyflink.table import DataTypes
    from pyflink.table.udf import udf

    from featurestore.stream.local_cluster import LocalTaskManagers, mini_cluster
    from featurestore.stream.service import job_status, on_a_free_port
    from transforms.engines.flink import flink_environment
    from transforms.errors import MLFSError

    config = {
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "10",
        "restart-strategy.fixed-delay.delay": "500 ms",
    }

    def submit() -> Any:
        _, t_env = flink_environment(1, None, config)
        t_env.execute_sql("CREATE TABLE g (x BIGINT) WITH ('connector'='datagen','rows-per-second'='20')")
        t_env.execute_sql("CREATE TABLE b (x BIGINT) WITH ('connector'='blackhole')")
        t_env.create_temporary_function("plus1", udf(lambda x: x + 1, result_type=DataTypes.BIGINT()))
        return t_env.execute_sql("INSERT INTO b SELECT plus1(x) FROM g").get_job_client()

    client, port = on_a_free_port(config, submit)
    rest, job_id = f"http://127.0.0.1:{port}", str(client.get_job_id())
    cluster = mini_cluster(client)
    assert cluster is not None
    keeper = LocalTaskManagers(rest, cluster.startTaskManager, limit=1)

    def tasks() -> list[str]:
        with urllib.request.urlopen(f"{rest}/jobs/{job_id}", timeout=5) as answer:
            return [vertex["status"] for vertex in json.load(answer)["vertices"]]

    try:
        wait_for(lambda: set(tasks()) == {"RUNNING"}, STARTUP_S, "the job's tasks to run")
        wait_for(lambda: keeper.registered() == 1, 30, "the TaskManager to register")
        assert keeper.revive() == 0
        cluster.terminateTaskManager(0).get()
        wait_for(lambda: keeper.registered() == 0, 30, "the TaskManager to go")
        time.sleep(3)  # without another TaskManager, the restarted job's tasks never run
        assert "RUNNING" not in tasks() and job_status(client) == "RUNNING"
        wait_for(lambda: keeper.revive() == 1, 10, "a TaskManager started in place of the stopped one")
        wait_for(lambda: set(tasks()) == {"RUNNING"}, 60, "the job's tasks to run again")
        wait_for(lambda: keeper.registered() == 1, 30, "the new TaskManager to register")
        time.sleep(LocalTaskManagers.POLL_S)
        assert keeper.revive() == 0  # and counts the new TaskManager as there
        cluster.terminateTaskManager(1).get()
        wait_for(lambda: keeper.registered() == 0, 30, "the second TaskManager to go")
        time.sleep(LocalTaskManagers.POLL_S)
        with pytest.raises(MLFSError, match="TaskManager stopped 2 times"):
            keeper.revive()
    finally:
        client.cancel().result()
