"""A real standalone Flink cluster (JobManager and TaskManager from PyFlink's own scripts) runs the
jobs submitted with a Flink master and gives the reference's rows."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyflink
import pytest
import yaml
from conformance import assert_same_rows, conformance_view, generate_events
from conftest import free_port, wait_for_json
from repo_helpers import example_repo
from test_stream_service import (
    STARTUP_S,
    assert_same_outcome,
    drop_file,
    no_leftover_jobs,
    payments,
    reference_outcome,
    serve_stream,
    stop_when_quiet,
    stream_outcome,
    wait_for,
)

from featurestore import Runner
from featurestore.cli import main
from featurestore.repo import load_repo
from featurestore.stream.sinks import read_status

__all__ = ["no_leftover_jobs"]  # the fixture, used by every test here

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

FLINK_HOME = Path(pyflink.__file__).parent


def cluster_files(base: Path, slots: int, **settings: Any) -> tuple[dict[str, str], int]:
    """PyFlink's configuration copied under ``base`` with free ports, ``slots`` per TaskManager and
    ``settings`` (top-level sections), and a log folder: (the scripts' environment, REST port)."""
    conf = base / "conf"
    shutil.copytree(FLINK_HOME / "conf", conf)
    config = yaml.safe_load((conf / "config.yaml").read_text())
    rest_port = free_port()
    config.setdefault("rest", {}).update(
        {"port": rest_port, "address": "localhost", "bind-address": "localhost"}
    )
    config["jobmanager"]["rpc"]["port"] = free_port()
    config["taskmanager"]["numberOfTaskSlots"] = slots
    config.update(settings)
    (conf / "config.yaml").write_text(yaml.safe_dump(config))
    (base / "log").mkdir()  # the daemons do not start without their log folder
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLINK_")}
    env.update(FLINK_HOME=str(FLINK_HOME), FLINK_CONF_DIR=str(conf), FLINK_LOG_DIR=str(base / "log"))
    return env, rest_port


@pytest.fixture(scope="module")
def flink_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``localhost:<rest port>`` of a standalone cluster on free ports, stopped afterwards."""
    env, rest_port = cluster_files(tmp_path_factory.mktemp("flink-cluster"), 8)
    subprocess.run(
        ["bash", str(FLINK_HOME / "bin" / "start-cluster.sh")], env=env, check=True, capture_output=True
    )
    try:
        wait_for_json(
            f"http://localhost:{rest_port}/overview",
            lambda overview: overview.get("taskmanagers", 0) >= 1,
            "the standalone Flink cluster",
        )
        yield f"localhost:{rest_port}"
    finally:
        subprocess.run(["bash", str(FLINK_HOME / "bin" / "stop-cluster.sh")], env=env, capture_output=True)


def jobs_finished(master: str) -> int:
    with urllib.request.urlopen(f"http://{master}/overview", timeout=5) as response:
        overview: dict[str, Any] = json.load(response)
    return int(overview["jobs-finished"])


def test_engine_on_a_standalone_cluster(flink_master: str) -> None:
    before = jobs_finished(flink_master)
    view = conformance_view("continuous", "row")
    events = generate_events(3, n=600)
    expected = view.run(events)
    got = view.run(events, Runner.FLINK, master=flink_master)
    assert_same_rows(view, expected.rows, got.rows)
    assert got.counts == expected.counts
    assert jobs_finished(flink_master) == before + 1  # it ran there, not in a local mini-cluster


def test_serve_stream_on_a_standalone_cluster(flink_master: str, tmp_path: Path) -> None:
    repo_path = example_repo(tmp_path / "repo", events=200)
    assert main(["apply", "--repo", str(repo_path)]) == 0
    stream_dir = repo_path / "data" / "stream" / "payments"
    for old in stream_dir.iterdir():
        old.unlink()
    lines = payments(random.Random(5), 0, 120)
    drop_file(stream_dir, "a.jsonl", lines)
    flags = ["--flink-master", flink_master, "--no-metrics", "--parallelism", "1"]
    job = serve_stream(repo_path, tmp_path / "stream.log", *flags)
    repo = load_repo(repo_path)
    status_dir = repo.settings.work_path / "stream" / "status"
    view = repo.views["user_payment_stats_7d"]
    wait_for(lambda: read_status(status_dir, view.name).counts.input >= len(lines), STARTUP_S, "the file")
    output = stop_when_quiet(job, status_dir, [view.name])
    assert f"on {flink_master}" in output

    views = [(view.name, "user_id")]
    assert_same_outcome(stream_outcome(repo_path, views), reference_outcome(repo_path, views, lines))
