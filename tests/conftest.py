"""Shared fixtures: views built in code, a private redis-server, an example repository."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from featurestore import (
    Aggregations,
    Entity,
    Field,
    FileStreamSource,
    StreamFeatureView,
    String,
    UnifiedTransformer,
    stream_feature_view,
)
from transforms.aggregations import Aggregation
from transforms.dtypes import DType
from transforms.windows import Window

AS_OF = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)

USER = Entity(name="user", join_keys=["user_id"])
EVENTS = FileStreamSource(name="events", path="stream", history="history.parquet")


def make_view(
    features: dict[str, tuple[DType, Aggregation]],
    window: Window | None = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    name: str = "test_view",
    source: FileStreamSource = EVENTS,
    joins: tuple[Any, ...] = (),
    enrich_events: Any = None,
) -> StreamFeatureView:
    """A one-entity view (key ``user_id``) over the ``events`` source (or ``source``), built in code
    (``enrich_events``: its model stages before aggregation)."""
    schema = [Field("user_id", String)] + [Field(n, t) for n, (t, _) in features.items()]

    def view_function(ctx: Any, inputs: Any) -> Any:
        return UnifiedTransformer(
            ctx,
            joins=joins,
            window=window,
            event_transform=transform,
            enrich_events=enrich_events,
            aggregator=Aggregations(**{n: agg for n, (_, agg) in features.items()}),
        ).run(inputs)

    view_function.__name__ = name
    return stream_feature_view(entities=[USER], schema=schema, source=source)(view_function)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_json(url: str, ready: Callable[[Any], bool], what: str, timeout_s: float = 120) -> None:
    """Poll the JSON endpoint ``url`` (a cluster's REST API) until ``ready`` accepts its answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if ready(json.load(answer)):
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what} did not come up in {timeout_s:.0f}s"
        time.sleep(0.5)


def start_redis(
    directory: Path, port: int | None = None, persist: bool = False
) -> tuple[int, subprocess.Popen[bytes]]:
    """A real redis-server of a test's own, on a free port (stop it with ``stop_redis``); with
    ``persist``, its data survives a stop and a start on the same ``directory``."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
    port = port or free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if persist else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return port, proc
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """A real redis-server of this test's own, on a free port, stopped afterwards."""
    port, proc = start_redis(tmp_path)
    yield port
    stop_redis(proc)


def t(seconds: float) -> int:
    """Epoch milliseconds for a number of seconds (test readability)."""
    return int(seconds * 1000)


def at(hours: float = 0, minutes: float = 0, seconds: float = 0) -> datetime:
    """A UTC time on 2026-01-01 (epoch-aligned windows in tests)."""
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours, minutes=minutes, seconds=seconds)


# The modules with the longest tests (measured in CI), longest first. They are collected first so
# that the two xdist workers start them early and finish together, instead of one worker running a
# four-minute test alone at the end.
LONGEST_FIRST = (
    "test_flink_application",
    "test_stream_joins",
    "test_stream_recovery",
    "test_spark_backfill",
    "test_stream_faults",
    "test_stream_kafka",
    "test_stream_service",
    "test_hostile_history",
    "test_flink_cluster",
    "test_quiet_output",
    "test_flink_conformance",
    "test_training",
    "test_inference_engines",
    "test_backfill_e2e",
    "test_embeddings",
    "test_spark_expressions",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = getattr(getattr(item, "module", None), "__name__", "")
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a module stays
