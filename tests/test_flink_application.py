"""serve-stream's job in Flink's application mode: a standalone application cluster (PyFlink's own
``standalone-job.sh`` and ``taskmanager.sh``, as the Flink Kubernetes operator's application mode
runs it) whose JobManager runs ``mlfs serve-stream --application`` through Flink's ``PythonDriver``;
the job it submits there streams the reference's outcome."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, wait_for_json
from repo_helpers import example_repo
from test_flink_cluster import FLINK_HOME, cluster_files
from test_stream_service import (
    STARTUP_S,
    assert_same_outcome,
    drop_file,
    payments,
    reference_outcome,
    stream_outcome,
    wait_for,
)

from featurestore.cli import main
from featurestore.repo import load_repo
from featurestore.runstatus import read_json, stream_job_path
from featurestore.stream.service import latest_checkpoint
from featurestore.stream.sinks import read_status
from transforms.engines.flink_jar import mlfs_jar

pytestmark = [pytest.mark.slow]

VIEW = "user_payment_stats_7d"


@contextmanager
def application_cluster(base: Path, *job_args: str, restore: Path | None = None) -> Iterator[str]:
    """A standalone application cluster running Flink's ``PythonDriver`` with ``job_args`` in its
    JobManager (restoring ``restore``, as the operator names a snapshot), and one TaskManager;
    yields ``localhost:<rest port>``, stops both afterwards."""
    # The JobManager starts the driver with this Python, and the TaskManager its workers.
    python = {"executable": sys.executable, "client": {"executable": sys.executable}}
    env, rest_port = cluster_files(base, 4, python=python)
    lib = base / "lib"  # the image's lib: Flink's jars, flink-python's and MLFS's functions
    lib.mkdir()
    for jar in [*(FLINK_HOME / "lib").glob("*.jar"), *(FLINK_HOME / "opt").glob("flink-python-*.jar")]:
        (lib / jar.name).symlink_to(jar)
    (lib / "mlfs-flink.jar").symlink_to(mlfs_jar())
    env["FLINK_LIB_DIR"] = str(lib)
    bin_dir = FLINK_HOME / "bin"
    driver = ["--job-classname", "org.apache.flink.client.python.PythonDriver", "-pym", "featurestore.cli"]
    if restore is not None:
        driver = ["--fromSavepoint", restore.as_uri(), *driver]
    subprocess.run(
        ["bash", str(bin_dir / "standalone-job.sh"), "start", *driver, *job_args],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["bash", str(bin_dir / "taskmanager.sh"), "start"], env=env, check=True, capture_output=True
    )
    try:
        yield f"localhost:{rest_port}"
    finally:
        for script in ("taskmanager.sh", "standalone-job.sh"):
            subprocess.run(["bash", str(bin_dir / script), "stop"], env=env, capture_output=True)


def jobs(master: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{master}/jobs/overview", timeout=5) as response:
        found: list[dict[str, Any]] = json.load(response)["jobs"]
    return found


def test_serve_stream_runs_in_an_application_cluster_and_restores(tmp_path: Path) -> None:
    repo_path = example_repo(tmp_path / "repo", events=200)
    assert main(["apply", "--repo", str(repo_path)]) == 0
    stream_dir = repo_path / "data" / "stream" / "payments"
    for old in stream_dir.iterdir():
        old.unlink()
    lines = payments(random.Random(11), 0, 120)
    drop_file(stream_dir, "a.jsonl", lines)
    repo = load_repo(repo_path)
    status_dir = repo.settings.work_path / "stream" / "status"
    job_args = ["serve-stream", "--application", "--repo", str(repo_path), "--parallelism", "1", VIEW]
    with application_cluster(tmp_path / "flink", *job_args) as master:
        wait_for_json(
            f"http://{master}/jobs/overview",
            lambda overview: any(j["state"] == "RUNNING" for j in overview.get("jobs", [])),
            "the application's job",
            timeout_s=STARTUP_S,
        )
        (job,) = jobs(master)
        assert job["name"] == f"mlfs-stream-{repo.settings.project}"
        record = stream_job_path(repo.settings.work_path)
        wait_for(lambda: (read_json(record) or {}).get("state") == "running", 60, "the driver's record")
        assert (read_json(record) or {})["job_id"] == job["jid"]
        wait_for(lambda: read_status(status_dir, VIEW).counts.input >= len(lines), STARTUP_S, "the file")
        wait_quiet(status_dir)
        views = [(VIEW, "user_id")]
        assert_same_outcome(stream_outcome(repo_path, views), reference_outcome(repo_path, views, lines))

        # Supervision beside the cluster's job: metrics from the same status, the job left running.
        port = free_port()
        attach = [
            sys.executable,
            "-m",
            "featurestore.cli",
            "serve-stream",
            "--attach",
            "--repo",
            str(repo_path),
        ]
        attach += ["--flink-master", master, "--metrics-port", str(port), "--for", "8", VIEW]
        with subprocess.Popen(attach, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as watcher:
            wait_for(lambda: _metrics(port) is not None, 60, "the attached metrics")
            metrics = _metrics(port)
            output, _ = watcher.communicate(timeout=120)
        assert watcher.returncode == 0, output
        assert f"supervising job {job['jid']}" in output and "goes on running" in output
        assert metrics is not None and f'mlfs_events_in_total{{view="{VIEW}"}} {len(lines)}' in metrics
        assert jobs(master)[0]["state"] == "RUNNING"
        checkpoints = repo.settings.work_path / "stream" / "checkpoints"
        wait_for(lambda: latest_checkpoint(checkpoints) is not None, 120, "a checkpoint")

    # The cluster is gone (as a failed JobManager pod would be); the next one restores the
    # snapshot it is given, as the operator names it, and carries on with a second file.
    snapshot = latest_checkpoint(checkpoints)
    assert snapshot is not None
    more = payments(random.Random(12), 300, 60)
    drop_file(stream_dir, "b.jsonl", more)
    with application_cluster(tmp_path / "flink2", *job_args, restore=snapshot) as master:
        wait_for(
            lambda: read_status(status_dir, VIEW).counts.input >= len(lines) + len(more), STARTUP_S, "b.jsonl"
        )
        wait_quiet(status_dir)
        logs = "".join(p.read_text() for p in (tmp_path / "flink2" / "log").glob("*.out"))
        assert f"restoring from {snapshot}" in logs, logs[-2000:]
        expected = reference_outcome(repo_path, views, lines + more)
        assert_same_outcome(stream_outcome(repo_path, views, replayed=True), expected)


def wait_quiet(status_dir: Path) -> None:
    """Until the view's status (counts, rows written) has not changed for 4 s."""
    last: Any = None
    while (now := read_status(status_dir, VIEW)) != last:
        last = now
        time.sleep(4)


def _metrics(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text: str = answer.read().decode()
            return text
    except OSError:
        return None
