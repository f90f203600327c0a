"""`kill -9` of a running `mlfs serve-stream` and a restart from its last checkpoint end with the same
offline rows, online values, dead letters and counts as a run that was never interrupted. That run's
result is the reference engine's over the same arrivals (test_stream_service checks that an
uninterrupted streaming run gives exactly it), so the test needs only the interrupted job."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_stream_service import (
    STARTUP_S,
    assert_same_outcome,
    drop_file,
    empty_stream_repo,
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


def stream_files() -> list[list[str]]:
    rng = random.Random(11)
    first = payments(rng, 0, 200)
    second = [*payments(rng, 400, 200), '{"broken": ']
    late = json.dumps({**json.loads(first[5]), "payment_id": "late"})
    return [first, second, [*payments(rng, 800, 100), late]]


def start(repo: Path) -> subprocess.Popen[str]:
    """Start ``serve-stream`` and wait until its job is submitted (the status files are this run's:
    a restored job keeps only stage 1's counts, which it starts from)."""
    runs = sorted(repo.parent.glob(f"{repo.name}-run*.log"))
    log = repo.parent / f"{repo.name}-run{len(runs)}.log"
    job = serve_stream(repo, log, "--checkpoint-interval", "1", "--no-metrics", "--parallelism", "1")
    wait_for(lambda: "streaming " in log.read_text() or job.poll() is not None, STARTUP_S, "the job to start")
    assert job.poll() is None, log.read_text()[-3000:]
    return job


def finish(job: subprocess.Popen[str], repo: Path) -> str:
    status_dir = load_repo(repo).settings.work_path / "stream" / "status"
    return stop_when_quiet(job, status_dir, [name for name, _ in VIEWS])


def completed_checkpoint_since(directory: Path, since: float) -> bool:
    return any(m.stat().st_mtime > since for m in directory.glob("*/chk-*/_metadata"))


def seen(repo: Path, n: int) -> bool:
    status_dir = load_repo(repo).settings.work_path / "stream" / "status"
    return read_status(status_dir, "user_payment_stats_7d").counts.input >= n


def test_kill_and_restart_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    files = stream_files()
    total = sum(len(f) for f in files)

    crashed, crashed_dir = empty_stream_repo(tmp_path / "crashed")
    checkpoints = load_repo(crashed).settings.work_path / "stream" / "checkpoints"
    job = start(crashed)
    drop_file(crashed_dir, "0.jsonl", files[0])
    wait_for(lambda: seen(crashed, len(files[0])), STARTUP_S, "file 0")
    after = time.time()
    wait_for(lambda: completed_checkpoint_since(checkpoints, after), 120, "a checkpoint with file 0")
    drop_file(crashed_dir, "1.jsonl", files[1])
    time.sleep(random.uniform(0.2, 3.0))
    os.killpg(job.pid, signal.SIGKILL)  # the CLI, its JVM and the Python workers
    job.wait()

    restarted = time.time()
    job = start(crashed)
    # The restored job has file 1 (in its restored state, or read again) once its counts say so and
    # it has completed a checkpoint: its source rediscovers unread files when it starts, so file 2,
    # dropped now, is read after file 1, the order of the arrivals the reference is given.
    wait_for(lambda: seen(crashed, len(files[0]) + len(files[1])), STARTUP_S, "file 1 after the restart")
    wait_for(
        lambda: completed_checkpoint_since(checkpoints, restarted), 120, "a checkpoint after the restart"
    )
    drop_file(crashed_dir, "2.jsonl", files[2])  # once file 1 is in, so the arrival order is the reference's
    wait_for(lambda: seen(crashed, total), 120, "file 2")
    output = finish(job, crashed)
    assert "restoring from" in output
    expected = reference_outcome(crashed, VIEWS, [line for f in files for line in f])
    assert expected["user_payment_stats_7d counts"].input == total
    assert expected["user_payment_stats_7d counts"].late == 1
    assert_same_outcome(stream_outcome(crashed, VIEWS, replayed=True), expected)

    # Restarted with nothing new to read, the job reports the restored counts and changes nothing.
    restarted = time.time()
    job = start(crashed)
    assert seen(crashed, total)
    wait_for(
        lambda: completed_checkpoint_since(checkpoints, restarted), 120, "a checkpoint after the restart"
    )
    finish(job, crashed)
    assert_same_outcome(stream_outcome(crashed, VIEWS, replayed=True), expected)
