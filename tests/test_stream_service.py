"""`mlfs serve-stream` on a real Flink mini-cluster: files appearing in the stream directory end up
in Redis (read with the stock Feast SDK) and the offline store exactly as the reference computes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import AS_OF, free_port, start_redis, stop_redis
from repo_helpers import example_repo
from test_backfill_e2e import latest, normalise

from featurestore.cli import main
from featurestore.config import feast_store
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.repo import load_repo
from featurestore.stream.sinks import read_status
from registry.status import view_status
from transforms.compare import same_value
from transforms.engines.flink_stage1 import SEQ_PARTITION_BITS
from transforms.engines.reference import run_reference
from transforms.errors import MLFSError
from transforms.events import DeadLetter, EventPreparer, partitioned, raw_text
from transforms.joining import source_lateness
from transforms.plan import EVENT_TIMESTAMP
from transforms.timeutil import ms_to_datetime
from transforms.windows import Sliding

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]


VIEWS = [
    ("user_payment_stats_7d", "user_id"),
    ("user_last_payment_fail", "user_id"),
    ("merchant_amount_1h", "merchant_id"),
]


def payments(rng: random.Random, start_s: float, n: int) -> list[str]:
    lines = []
    for i in range(n):
        when = AS_OF + timedelta(seconds=start_s + i * 2 + rng.uniform(-3, 3))  # disorder under 5 s
        status = rng.choice(["ok", "ok", "ok", "failed"])
        lines.append(
            json.dumps(
                {
                    "payment_id": f"p{start_s}-{i}",
                    "user_id": f"u{rng.randrange(15):03d}",
                    "merchant_id": f"m{rng.randrange(4):02d}",
                    "amount": round(rng.uniform(1, 500), 2),
                    "status": status,
                    "failure_reason": rng.choice(["ach_nsf", "card_declined"])
                    if status == "failed"
                    else None,
                    "timestamp": when.isoformat(),
                }
            )
        )
    return lines


def empty_stream_repo(path: Path, redis_env: str | None = None) -> tuple[Path, Path]:
    """An applied example repository with nothing in its stream directory: (repository, directory)."""
    repo = example_repo(path, events=100, redis_env=redis_env)
    assert main(["apply", "--repo", str(repo)]) == 0
    stream_dir = repo / "data" / "stream" / "payments"
    for old in stream_dir.iterdir():
        old.unlink()
    return repo, stream_dir


def drop_file(directory: Path, name: str, lines: list[str]) -> None:
    tmp = directory / f".{name}"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(directory / name)  # Flink's FileSource skips hidden files, so it sees the whole file


STARTUP_S = 240  # a job's first event can take minutes when the whole suite shares two cores


def stop_when_quiet(
    job: subprocess.Popen[str], status_dir: Path, views: list[str], quiet_s: float = 4.0
) -> str:
    """Ctrl-C the job once no view's counts or written rows have changed for ``quiet_s``; its output."""
    last: Any = None
    since = time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.5)
        now = [(s.counts, s.sink.rows_out) for s in (read_status(status_dir, v) for v in views)]
        if now != last:
            last, since = now, time.monotonic()
    job.send_signal(signal.SIGINT)
    job.wait(timeout=180)
    output = log_of(job).read_text()
    assert job.returncode == 0, output[-3000:]
    assert "stopping (Ctrl-C)" in output and "stopped with savepoint" in output
    return output


def serve_stream(
    repo: Path, log: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`mlfs serve-stream` in its own process group, its output in ``log`` (never a full pipe)."""
    command = [sys.executable, "-m", "featurestore.cli", "serve-stream", "--repo", str(repo), *flags]
    # A PyFlink job run earlier in this test process (loopback mode) leaves PYFLINK_GATEWAY_DISABLED
    # set, which would stop the child from starting its own Flink gateway.
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("PYFLINK_")}
    # The JVM's log beside ``log`` (the shared default is overwritten by every later job).
    env["FLINK_LOG_DIR"] = str(flink_log_dir(log))
    with log.open("w") as out:
        job = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    _LOGS[job.pid] = log
    _JOBS.append(job)
    return job


def flink_log_dir(log: Path) -> Path:
    """Where the Flink JVM of the ``serve-stream`` whose output is ``log`` writes its log."""
    return log.with_name(f"{log.stem}-flink")


_LOGS: dict[int, Path] = {}
_JOBS: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def no_leftover_jobs() -> Any:
    """Kill what a failed test left running (the CLI, its JVM and Python workers), so it does not
    slow every test after it."""
    yield
    while _JOBS:
        job = _JOBS.pop()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def log_of(job: subprocess.Popen[str]) -> Path:
    return _LOGS[job.pid]


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_stream_to_redis_and_offline_equals_reference(tmp_path: Path) -> None:
    port, redis_proc = start_redis(tmp_path)
    env = {**os.environ, "MLFS_TEST_REDIS": f"127.0.0.1:{port}"}
    os.environ["MLFS_TEST_REDIS"] = env["MLFS_TEST_REDIS"]
    try:
        repo_path = example_repo(tmp_path / "repo", events=200, redis_env="MLFS_TEST_REDIS")
        # Compaction runs every second, and once the job stopped (the rows of this test's views wait
        # for the final watermark); readers must see the same rows.
        config_file = repo_path / "feature_store.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["mlfs"].setdefault("flink", {}).update(compact_every_s=1, compact_min_files=2)
        config_file.write_text(yaml.safe_dump(config))
        assert main(["apply", "--repo", str(repo_path)]) == 0
        stream_dir = repo_path / "data" / "stream" / "payments"
        for old in stream_dir.iterdir():
            old.unlink()
        rng = random.Random(3)
        first = payments(rng, 0, 150)
        second = [*payments(rng, 300, 150), '{"user_id": "u001", "timestamp": ', '"just text"']
        late = json.dumps({**json.loads(first[10]), "payment_id": "late"})  # 10 minutes behind
        third = [*payments(rng, 600, 60), late]
        drop_file(stream_dir, "a.jsonl", first)

        metrics_port = free_port()
        job = serve_stream(repo_path, tmp_path / "stream.log", "--metrics-port", str(metrics_port), env=env)
        repo = load_repo(repo_path)
        status_dir = repo.settings.work_path / "stream" / "status"

        def seen(n: int) -> bool:
            return read_status(status_dir, "user_payment_stats_7d").counts.input >= n

        wait_for(lambda: seen(len(first)), STARTUP_S, "the first file")
        # Stage 1 reports every view's counts together (once a second): scrape when it has.
        wait_for(
            lambda: read_status(status_dir, "user_last_payment_fail").max_event_ms is not None,
            60,
            "user_last_payment_fail's first report",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            scraped = response.read().decode()
        assert f'mlfs_events_in_total{{view="user_payment_stats_7d"}} {len(first)}' in scraped
        assert 'mlfs_watermark_lag_seconds{view="user_last_payment_fail"}' in scraped
        assert {
            "mlfs_job_running 1",
            'mlfs_job_state{state="RUNNING"} 1',
            "mlfs_job_restarts_total 0",
        } <= set(scraped.splitlines())
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10) as response:
            assert response.status == 200
        running = view_status(repo.settings, "user_payment_stats_7d")["stream"]
        assert running["state"] == "running" and running["counts"]["input"] >= len(first)
        drop_file(stream_dir, "b.jsonl", second)
        wait_for(lambda: seen(len(first) + len(second)), 120, "the second file")
        drop_file(stream_dir, "c.jsonl", third)
        wait_for(lambda: seen(len(first) + len(second) + len(third)), 120, "the third file")
        output = stop_when_quiet(job, status_dir, [name for name, _ in VIEWS])
        # Flink's own log goes to the file the command names, under the work path, not to its output.
        (named,) = [line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("engine log: ")]
        assert Path(named).parent == repo.settings.work_path / "logs" and " INFO " in Path(named).read_text()
        assert not [line for line in output.splitlines() if " INFO " in line or " WARN " in line]
        stopped = view_status(repo.settings, "user_payment_stats_7d")
        assert stopped["stream"]["state"] == "stopped" and stopped["stream"]["job_id"]
        assert stopped["last_online_write"] and stopped["dead_letters"]["stream"] == 3  # 2 bad, 1 late

        arrivals = first + second + third
        expected = reference_outcome(repo_path, VIEWS, arrivals)
        assert expected["user_payment_stats_7d counts"].late == 1
        assert len(expected["user_payment_stats_7d dead letters"]) == 3
        assert_same_outcome(stream_outcome(repo_path, VIEWS), expected)
        assert "offline compaction merged" in log_of(job).read_text()
    finally:
        os.environ.pop("MLFS_TEST_REDIS", None)
        stop_redis(redis_proc)


def tied_payments(rng: random.Random, first_minute: int, minutes: int, per_minute: int = 20) -> list[str]:
    """Payments as real event data at minute resolution has them: many per key and minute (user
    u000 has about half), some amounts null, in time order."""
    lines = []
    for minute in range(first_minute, first_minute + minutes):
        when = (AS_OF + timedelta(minutes=minute)).isoformat()
        for i in range(per_minute):
            status = rng.choice(["ok", "ok", "failed"])
            event = {
                "payment_id": f"p{minute}-{i}",
                "user_id": "u000" if rng.random() < 0.5 else f"u{rng.randrange(6):03d}",
                "merchant_id": f"m{rng.randrange(3):02d}",
                "amount": None if rng.random() < 0.1 else rng.choice([5.0, 12.5, 99.99]),
                "status": status,
                "failure_reason": rng.choice(["ach_nsf", "card_declined"]) if status == "failed" else None,
                "timestamp": when,
            }
            lines.append(json.dumps(event))
    return lines


def test_a_tied_backlog_read_in_name_order_then_new_files_equal_the_reference(tmp_path: Path) -> None:
    """24 files already in the directory when the job starts, listed in no particular order, are
    read whole in name order (none is late), then 3 more one at a time; many events share a key and
    a minute: every view's offline rows are the reference's, one per key and time."""
    repo_path, stream_dir = empty_stream_repo(tmp_path / "repo")
    rng = random.Random(5)
    backlog = [tied_payments(rng, 3 * n, 3) for n in range(24)]  # 72 minutes
    later = [tied_payments(rng, 72 + 3 * n, 3) for n in range(3)]
    for n in rng.sample(range(len(backlog)), len(backlog)):  # written in random order
        drop_file(stream_dir, f"part-{n:04d}.jsonl", backlog[n])
    job = serve_stream(repo_path, tmp_path / "stream.log", "--no-metrics")
    status_dir = load_repo(repo_path).settings.work_path / "stream" / "status"

    def seen(n: int) -> bool:
        return read_status(status_dir, "user_payment_stats_7d").counts.input >= n

    arrived = [line for lines in backlog for line in lines]
    wait_for(lambda: seen(len(arrived)), STARTUP_S, "the backlog")
    for n, lines in enumerate(later):
        drop_file(stream_dir, f"part-{len(backlog) + n:04d}.jsonl", lines)
        arrived += lines
        total = len(arrived)
        wait_for(lambda total=total: seen(total), 120, f"new file {n}")
    stop_when_quiet(job, status_dir, [name for name, _ in VIEWS])

    expected = reference_outcome(repo_path, VIEWS, arrived)
    assert expected["user_payment_stats_7d counts"].late == 0
    assert_same_outcome(stream_outcome(repo_path, VIEWS), expected)


def stream_outcome(repo_path: Path, views: list[tuple[str, str]], replayed: bool = False) -> dict[str, Any]:
    """Everything a streaming run wrote for ``views`` (name, entity key): offline rows, online values
    (Feast SDK), dead letters (each written once, restarts included) and stage 1's counts. Each
    key and feature time has one offline row; where a job was restarted (``replayed``), rows after
    its last checkpoint are written again, with a newer created timestamp."""
    repo = load_repo(repo_path)
    offline = ParquetOfflineStore(repo.settings.offline_path)
    status_dir = repo.settings.work_path / "stream" / "status"
    result: dict[str, Any] = {}
    for name, key in views:
        view = repo.views[name]
        assert_one_row_per_key_and_time(offline, view, replayed)
        rows = offline.read(view).drop_columns(["created_timestamp"]).to_pylist()
        result[f"{name} offline"] = plain_rows(rows)
        if view.online:
            result[f"{name} online"] = online_values(repo, name, key, sorted({r[key] for r in rows}))
        lines = [
            json.loads(line)
            for f in (repo.settings.dead_letter_path / name).glob("stream-*.jsonl")
            for line in f.read_text().splitlines()
        ]
        letters = {d["seq"]: d for d in lines}
        assert len(letters) == len(lines), f"{name}: a dead letter was written twice"
        result[f"{name} dead letters"] = sorted((seq, d["reason"], d["raw"]) for seq, d in letters.items())
        result[f"{name} counts"] = read_status(status_dir, name).counts
    return result


def assert_one_row_per_key_and_time(offline: ParquetOfflineStore, view: Any, replayed: bool) -> None:
    """Every row written for ``view`` (not only what readers keep) has its own key and feature
    time, or, where a job was restarted, its own created timestamp."""
    identity = [*view.plan.key_names, EVENT_TIMESTAMP] + (["created_timestamp"] if replayed else [])
    written = offline.read_written(view).select(identity).to_pylist()
    held = Counter(tuple(row.values()) for row in written)
    twice = [ident for ident, n in held.items() if n > 1]
    assert not twice, f"{view.name}: {len(twice)} of {len(held)} rows written twice, e.g. {twice[:3]}"


def reference_outcome(repo_path: Path, views: list[tuple[str, str]], arrivals: list[Any]) -> dict[str, Any]:
    """What ``stream_outcome`` must find after ``arrivals`` (in this order; ``PartitionedEvent``s
    for a source of several partitions) were streamed and the job stopped, by the reference engine:
    the rows Flink's final watermark has reached, the latest of them per key online, the dead
    letters and the counts."""
    repo = load_repo(repo_path)
    # The highest event time of each partition: a bad event moves no watermark.
    timing = EventPreparer(repo.views[views[0][0]].plan)
    highest: dict[int, int] = {}
    for event in map(partitioned, arrivals):
        if not isinstance(t := timing.decode_and_time(event.raw), DeadLetter):
            highest[event.partition] = max(t[1], highest.get(event.partition, t[1]))
    result: dict[str, Any] = {}
    for name, key in views:
        view = repo.views[name]
        lateness = source_lateness(view.source)
        expected = run_reference(view.plan, arrivals, lateness=lateness)
        watermark = min(highest.values()) - lateness.max_out_of_orderness_ms - 1
        # Rows are emitted once the watermark reaches them (a hopping window: its last millisecond).
        window = view.plan.window
        bound = ms_to_datetime(
            watermark + (1 if isinstance(window, Sliding) and window.hop is not None else 0)
        )
        rows = [r for r in expected.rows if r[EVENT_TIMESTAMP] <= bound]
        assert rows, f"{name}: no row is emitted, so this would compare nothing"
        result[f"{name} offline"] = plain_rows(rows)
        if view.online:
            want = latest(rows, key)
            features = [f.name for f in view.feature_fields]
            result[f"{name} online"] = {f: [want[k][f] for k in sorted(want)] for f in features}
        result[f"{name} dead letters"] = with_positions(expected.dead_letters, arrivals)
        result[f"{name} counts"] = expected.counts
    return result


def with_positions(letters: list[Any], arrivals: list[Any]) -> list[tuple[int, str, str]]:
    """(source position ``seq``, reason, raw) of each reference dead letter: the reference rejects
    events in arrival order, so each letter is the next arrival with its text; its ``seq`` is its
    partition and its position there (1-based, as Flink's)."""
    events = [partitioned(arrival) for arrival in arrivals]
    texts = [raw_text(event.raw) for event in events]
    seqs, counted = [], Counter[int]()
    for event in events:
        counted[event.partition] += 1
        seqs.append((event.partition << SEQ_PARTITION_BITS) + counted[event.partition])
    out = []
    position = 0
    for letter in letters:
        position = texts.index(letter.raw, position) + 1
        out.append((seqs[position - 1], letter.reason, letter.raw))
    return sorted(out)


def online_values(repo: Any, view_name: str, key: str, entities: list[Any]) -> dict[str, list[Any]]:
    """Each feature's online values for ``entities``, read with the stock Feast SDK."""
    features = [f.name for f in repo.views[view_name].feature_fields]
    got = (
        feast_store(repo.settings)
        .get_online_features(
            features=[f"{view_name}:{f}" for f in features], entity_rows=[{key: e} for e in entities]
        )
        .to_dict()
    )
    return {f: [normalise(v) for v in got[f]] for f in features}


def plain_row(row: dict[str, Any]) -> list[tuple[str, Any]]:
    """A feature row as sorted (column, value) pairs, times as epoch seconds."""
    return sorted((k, v.timestamp() if isinstance(v, datetime) else v) for k, v in row.items())


def plain_rows(rows: list[dict[str, Any]]) -> list[list[tuple[str, Any]]]:
    """Rows in an order that float rounding never changes: by their values other than floats."""
    items = [plain_row(row) for row in rows]
    return sorted(items, key=lambda row: repr([(k, None if isinstance(v, float) else v) for k, v in row]))


def same_outcome(got: Any, want: Any) -> bool:
    """Equal, but floats within the contract's 1e-9 relative (``transforms.compare``): engines may
    add floats in another order than the reference."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same_outcome(got[k], want[k]) for k in want)
        )
    if isinstance(want, (list, tuple)):
        return (
            isinstance(got, (list, tuple))
            and len(got) == len(want)
            and all(same_outcome(a, b) for a, b in zip(got, want, strict=True))
        )
    return same_value(got, want)


def assert_same_outcome(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert same_outcome(got[name], want[name]), f"{name}: got {got[name]!r}, want {want[name]!r}"


def test_a_checkpoint_of_another_job_shape_is_a_clear_error(tmp_path: Path) -> None:
    """A job of other views cannot restore the state of this one: a one-line error naming --fresh."""
    repo_path = example_repo(tmp_path / "repo", events=100)
    assert main(["apply", "--repo", str(repo_path)]) == 0
    first = serve_stream(
        repo_path, tmp_path / "one.log", "user_payment_stats_7d", "--for", "3", "--no-metrics"
    )
    first.wait(timeout=300)
    assert first.returncode == 0 and "stopped with savepoint" in log_of(first).read_text()
    every = serve_stream(repo_path, tmp_path / "every.log", "--for", "3", "--no-metrics")
    every.wait(timeout=300)
    output = log_of(every).read_text()
    assert every.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("mlfs: ")]
    assert len(errors) == 1 and errors[0].startswith("mlfs: error: cannot restore "), output[-3000:]
    assert "--fresh" in errors[0] and "Traceback" not in output


def test_a_snapshot_of_another_shape_or_an_earlier_mlfs_is_refused_first(tmp_path: Path) -> None:
    # Flink would restore state of the same topology it cannot read (the 7-day view's sums were
    # Flink's SUM before MLFS's exact functions) and restart forever; the shape check says so first.
    from featurestore.stream.service import check_shape, job_shape, remember_shape

    repo = load_repo(example_repo(tmp_path / "repo", events=100))
    views = [repo.views[name] for name, _ in VIEWS]
    one = {"payments": 1}
    shape = job_shape([views], one)
    assert job_shape([views], one) == shape
    assert job_shape([views[:1]], one) != shape
    assert job_shape([views], {"payments": 4}) != shape  # the topic's partitions were added to
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    remember_shape(checkpoints, "savepoint-1", shape)
    check_shape(checkpoints, checkpoints / "savepoint-1", shape)  # the same shape restores
    # Another job's shape, and a snapshot whose shape an earlier MLFS never recorded.
    for snapshot, current in (("savepoint-1", job_shape([views[:1]], one)), ("savepoint-0", shape)):
        with pytest.raises(MLFSError, match=r"another shape .* start with --fresh"):
            check_shape(checkpoints, checkpoints / snapshot, current)
    # A savepoint a cluster took (the operator, on an upgrade): known by the job it was taken of.
    job_id, other = "5e1f0c" + "a" * 26, "5e1f0c" + "b" * 26
    remember_shape(checkpoints, job_id, shape)
    check_shape(checkpoints, checkpoints / "savepoints" / "savepoint-5e1f0c-0123456789ab", shape)
    with pytest.raises(MLFSError, match="another shape"):
        check_shape(checkpoints, checkpoints / "savepoint-5e1f0c-0123456789ab", job_shape([views[:1]], one))
    remember_shape(checkpoints, other, job_shape([views[:1]], one))  # two jobs share the prefix
    with pytest.raises(MLFSError, match="another shape"):
        check_shape(checkpoints, checkpoints / "savepoint-5e1f0c-0123456789ab", shape)


def test_a_rest_port_taken_before_flink_binds_it_is_replaced() -> None:
    """The mini-cluster's REST port is checked free, then bound by Flink; another process may take
    it in between (parallel jobs): the start is retried on another port, any other failure is not."""
    from featurestore.stream.service import on_a_free_port

    config: dict[str, str] = {}
    tried: list[str] = []

    def start(fails: int, error: str) -> Any:
        def attempt() -> str:
            tried.append(config["rest.bind-port"])
            if len(tried) <= fails:
                raise RuntimeError(f"java.net.BindException: {error} on any port in port range {tried[-1]}")
            return "client"

        return attempt

    client, port = on_a_free_port(config, start(1, "Could not start rest endpoint"))
    assert client == "client" and len(tried) == 2 and config["rest.port"] == str(port) == tried[-1]
    tried.clear()
    with pytest.raises(RuntimeError, match="Could not start rest endpoint"):
        on_a_free_port(config, start(5, "Could not start rest endpoint"))
    assert len(tried) == 3
    tried.clear()
    with pytest.raises(RuntimeError, match="Address already in use"):
        on_a_free_port(config, start(1, "Address already in use"))
    assert len(tried) == 1
