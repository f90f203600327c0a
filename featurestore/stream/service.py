"""``mlfs serve-stream``: a repository's views as one PyFlink job, with checkpoints and status.

Every source is read once (Flink's ``FileSource`` watching its directory, or a Kafka topic), and
one stage 1 serves all the views on it; each view then gets its own stage 2 and sinks
(``transforms.engines.flink``). The job restores from the newest
retained checkpoint or savepoint of the repository unless told to start fresh, and ``--for`` or
Ctrl-C stop it with a savepoint, so the next start carries on where this one stopped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from featurestore.definitions import FileStreamSource, KafkaStreamSource, StreamSource
from featurestore.offline.parquet import COMPACT_MIN_FILES, ParquetOfflineStore
from featurestore.repo import FeatureRepo, lookup_order
from featurestore.runstatus import StreamJobRecord, read_json, write_json
from featurestore.stream.local_cluster import LocalTaskManagers, mini_cluster
from featurestore.stream.metrics import JobHealth, ViewMetrics, collect, serve_metrics
from featurestore.stream.sinks import LiveOutcomes, StoreRows, clear_status
from featurestore.view import StreamFeatureView
from transforms.errors import MLFSError
from transforms.joining import source_lateness
from transforms.joins import Lookup


@dataclass
class StreamOptions:
    """How to run the job (CLI flags override ``feature_store.yaml``'s ``mlfs.flink`` section)."""

    views: list[str] = field(default_factory=list)
    master: str | None = None
    checkpoint_dir: Path | None = None
    checkpoint_interval_s: float = 10.0
    duration_s: float | None = None
    parallelism: int = 2
    poll_ms: int = 1000
    fresh: bool = False
    report_every_s: float = 5.0
    compact_every_s: float | None = 300.0  # how often the offline store's streamed files are merged
    compact_min_files: int = COMPACT_MIN_FILES  # merge a partition's files once it has this many
    consistency_every_s: float | None = 300.0  # how often online = offline is sampled (None: never)
    consistency_sample: int = 20  # keys per view per sample
    metrics_port: int | None = 9464  # None: no Prometheus endpoint
    metrics_host: str = "127.0.0.1"  # the address it listens on (0.0.0.0: every interface, in a pod)
    max_restarts: int = 10  # restarts after failures before the job fails (and serve-stream with it)
    restart_delay_s: float = 5.0  # between a failure and the restart
    flink_config: dict[str, str] = field(default_factory=dict)  # extra Flink configuration entries
    jars: list[Path] = field(default_factory=list)  # connector jars (the Kafka connector for Kafka sources)


def select_views(repo: FeatureRepo, names: list[str]) -> list[StreamFeatureView]:
    if not names:
        return list(repo.views.values())
    return [repo.view(name) for name in names]


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint or savepoint under ``directory`` (one with ``_metadata``)."""
    if not directory.is_dir():
        return None
    found = [m.parent for m in directory.glob("*/*/_metadata")] + [
        m.parent for m in directory.glob("*/_metadata")
    ]
    return max(found, key=lambda p: (p / "_metadata").stat().st_mtime) if found else None


LINEAGES = "lineages.json"  # in the checkpoint directory: each job id and savepoint's lineage


def lineage_key(snapshot: str | Path) -> str:
    """What ``lineages.json`` knows a snapshot by: a checkpoint's job id (``<job id>/chk-N``), a
    savepoint's directory name (a path or a ``file:`` URI)."""
    path = Path(str(snapshot).removeprefix("file:"))
    return path.parent.name if path.name.startswith("chk-") else path.name


def recorded(known: dict[str, Any], snapshot: str | Path) -> Any:
    """What ``known`` (``lineages.json`` or ``shapes.json``) says of a snapshot: by its
    ``lineage_key``, or, for a savepoint a cluster took (the Flink Kubernetes operator on an
    upgrade: MLFS never saw it), by the job it was taken of: Flink names a savepoint
    ``savepoint-<first 6 characters of the job id>-<random>``, and one recorded job must match."""
    key = lineage_key(snapshot)
    if key in known or not key.startswith("savepoint-"):
        return known.get(key)
    prefix = key.split("-")[1]
    of_jobs = {str(v) for k, v in known.items() if len(k) == 32 and k.startswith(prefix)}
    return of_jobs.pop() if len(of_jobs) == 1 else None


def lineage_of(checkpoint_dir: Path, restore: Path | None) -> str:
    """The lineage a job carries on (``LiveOutcomes``): that of the checkpoint or savepoint it
    restores, or a new one on a fresh start (or for a snapshot of an earlier MLFS version)."""
    if restore is not None:
        lineage = recorded(read_json(checkpoint_dir / LINEAGES) or {}, restore)
        if isinstance(lineage, str):
            return lineage
    return uuid.uuid4().hex[:12]


SHAPES = "shapes.json"  # in the checkpoint directory: each job id and savepoint's job shape
# Part of every shape: raised when MLFS changes what a job keeps in its state without changing its
# SQL text (2: continuous and lifetime windows in MLFS's window operator, not an ``OVER``, 2026-12-07;
# 3: stage 1 per source partition, 2026-12-07; 4: that operator's state written by MLFS's own
# serializer, not Kryo, 2026-12-08).
SHAPE_FORMAT = "mlfs-stream-state-4"


def job_shape(groups: list[list[StreamFeatureView]], partitions: dict[str, int]) -> str:
    """A digest of the SQL that decides what a job keeps in Flink state (its views, grouped by
    source, in job order, and each source's ``partitions``). Flink maps a snapshot's state to
    operators by the job's topology, so a job with the same topology but other aggregates would
    restore state it cannot read, and restart forever; comparing shapes first turns that into a
    clear error."""
    from transforms.engines.flink_decode import stage1_groups
    from transforms.engines.flink_sql import stage2_sql
    from transforms.engines.flink_stage1 import (
        classified_sql,
        counts_sql,
        letters_sql,
        prepare_result_type,
        prepared_sql,
    )

    parts = [SHAPE_FORMAT, json.dumps(partitions, sort_keys=True)]
    for group in groups:
        plans = [view.plan for view in group]
        if any(plan.joins for plan in plans):  # a joined view: a stage 1 of its own
            parts.append("looked-up rows from the row sink")  # since 2026-12-07
            for view, plan in zip(group, plans, strict=True):
                parts.append(json.dumps([join.spec() for join in plan.joins], sort_keys=True, default=str))
                parts += [prepared_sql(plan, 0, "finished", single=False), stage2_sql(plan, view.name)]
            continue
        for members, spec, _ in stage1_groups(plans):
            if spec is not None:  # stage 1 in the JVM (since 2026-12-07), with its own state
                parts.append(f"decided in the JVM: {spec}")
            views = [group[i] for i in members]
            stage1 = [plans[i] for i in members]
            # Without the lateness bound, which is a literal in the query and no part of the state.
            parts += [str(prepare_result_type(stage1)), classified_sql(stage1, "events", None)]
            parts += [counts_sql(len(stage1), "classified"), letters_sql(len(stage1), "classified")]
            for v, (view, plan) in enumerate(zip(views, stage1, strict=True)):
                parts += [prepared_sql(plan, v, "classified"), stage2_sql(plan, f"prepared_{view.name}")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def remember_shape(checkpoint_dir: Path, key: str, shape: str) -> None:
    """Record the job shape of a job's checkpoints (``key``: the job id) or of a savepoint."""
    known = read_json(checkpoint_dir / SHAPES) or {}
    known[key] = shape
    write_json(checkpoint_dir / SHAPES, known)


def check_shape(checkpoint_dir: Path, restore: Path, shape: str) -> None:
    """Refuse a snapshot of a job of another shape (or of an MLFS that recorded none)."""
    if recorded(read_json(checkpoint_dir / SHAPES) or {}, restore) != shape:
        raise another_shape(restore)


def another_shape(restore: Path) -> MLFSError:
    return MLFSError(
        f"cannot restore {restore}: it was taken by a job of another shape (other views, "
        "changed definitions, or another MLFS version); start with --fresh to re-read "
        "the sources from the beginning"
    )


def remember_lineage(checkpoint_dir: Path, key: str, lineage: str) -> None:
    """Record the lineage of a job's checkpoints (``key``: the job id) or of a savepoint
    (``lineage_key``), for ``lineage_of``."""
    known = read_json(checkpoint_dir / LINEAGES) or {}
    known[key] = lineage
    write_json(checkpoint_dir / LINEAGES, known)


def _file_source(env: Any, source: FileStreamSource, repo_path: Path, poll_ms: int) -> Any:
    """The directory's JSON-lines files, each read whole, in name order (one partition), new files
    as they appear."""
    from pyflink.common import WatermarkStrategy

    from transforms.engines.flink import file_source

    directory = Path(source.path) if Path(source.path).is_absolute() else repo_path / source.path
    if not directory.is_dir():
        raise MLFSError(f"source {source.name!r}: stream directory {directory} does not exist")
    return (
        env.from_source(
            file_source(str(directory), poll_ms), WatermarkStrategy.no_watermarks(), f"source-{source.name}"
        )
        .uid(f"source-{source.name}")
        .set_parallelism(1)
    )


JARS_ENV = "MLFS_FLINK_JARS"  # connector jars, separated by os.pathsep (beside mlfs.flink.jars)


def connector_jars(configured: list[str], repo_path: Path) -> list[Path]:
    """The connector jars from ``mlfs.flink.jars`` (relative to the repository) and ``$MLFS_FLINK_JARS``."""
    names = [*configured, *(p for p in os.environ.get(JARS_ENV, "").split(os.pathsep) if p)]
    jars = [Path(n) if Path(n).is_absolute() else repo_path / n for n in names]
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        raise MLFSError(f"connector jar(s) not found: {', '.join(missing)}")
    return jars


def _check_kafka(source: KafkaStreamSource, jars: list[Path]) -> str:
    """The source's bootstrap servers (``${VAR}`` expanded), once the connector jars are there."""
    if not any("kafka" in jar.name for jar in jars):
        raise MLFSError(
            f"source {source.name!r} is a Kafka topic: add the Flink Kafka connector jars "
            f"(flink-connector-kafka and kafka-clients) to mlfs.flink.jars or ${JARS_ENV}; "
            "scripts/kafka_jars.sh fetches them (docs/streaming.md)"
        )
    servers = os.path.expandvars(source.bootstrap_servers)
    if not servers or "$" in servers:
        raise MLFSError(f"source {source.name!r}: bootstrap servers {source.bootstrap_servers!r} are not set")
    return servers


def kafka_partitions(source: KafkaStreamSource, servers: str, timeout_s: float = 15.0) -> int:
    """How many partitions the source's topic has (each is read and classified on its own)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(bootstrap_servers=servers, request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as err:
        raise MLFSError(f"source {source.name!r}: cannot reach Kafka at {servers}: {err}") from None
    try:
        deadline = time.monotonic() + timeout_s
        while (partitions := consumer.partitions_for_topic(source.topic)) is None:
            if time.monotonic() > deadline:
                raise MLFSError(f"source {source.name!r}: Kafka at {servers} has no topic {source.topic!r}")
            time.sleep(0.5)
            consumer.topics()  # asks the broker again
    finally:
        consumer.close()
    if sorted(partitions) != list(range(len(partitions))):
        raise MLFSError(f"source {source.name!r}: topic {source.topic!r} has partitions {sorted(partitions)}")
    return len(partitions)


def _kafka_sources(env: Any, source: KafkaStreamSource, jars: list[Path], partitions: int) -> list[Any]:
    """The topic's messages, one stream per partition (in offset order), read from the earliest
    offset on a fresh start (a restored job resumes from the offsets in its checkpoint)."""
    from pyflink.common import WatermarkStrategy
    from pyflink.common.serialization import DeserializationSchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource
    from pyflink.java_gateway import get_gateway

    servers = _check_kafka(source, jars)
    jvm = get_gateway().jvm
    streams = []
    for partition in range(partitions):
        builder = (
            KafkaSource.builder()
            .set_bootstrap_servers(servers)
            .set_group_id(f"mlfs-{source.name}")
            .set_starting_offsets(KafkaOffsetsInitializer.earliest())
            .set_value_only_deserializer(DeserializationSchema(jvm.mlfs.flink.Utf8Strings()))
        )
        # PyFlink's set_partitions names the Kafka classes as the shaded SQL connector jar has them.
        only = jvm.java.util.HashSet()
        only.add(jvm.org.apache.kafka.common.TopicPartition(source.topic, partition))
        builder._j_builder.setPartitions(only)
        kafka = builder.build()
        name = f"source-{source.name}-{partition}"
        streams.append(
            env.from_source(kafka, WatermarkStrategy.no_watermarks(), name).uid(name).set_parallelism(1)
        )
    return streams


def source_partitions(source: StreamSource, jars: list[Path]) -> int:
    """How many partitions a stream source is read as (DESIGN §2): a Kafka topic's, or one."""
    if isinstance(source, KafkaStreamSource):
        return kafka_partitions(source, _check_kafka(source, jars))
    return 1


def _open_source(
    env: Any, source: StreamSource, repo_path: Path, options: StreamOptions, partitions: int
) -> list[Any]:
    """The source's raw events: a stream of text per partition, each at parallelism 1."""
    if isinstance(source, KafkaStreamSource):
        streams = _kafka_sources(env, source, options.jars, partitions)
    else:
        assert isinstance(source, FileStreamSource), "serve_stream checked the source kinds"
        streams = [_file_source(env, source, repo_path, options.poll_ms)]
    # Unchained, reading a partition and its stage 1's Python function run in threads of their own
    # (chained, each would wait for the other).
    return [stream.disable_chaining() for stream in streams]


def stream_views(
    repo: FeatureRepo, names: list[str], report: Callable[[str], None]
) -> list[StreamFeatureView]:
    """The views a job streams: ``names`` (every view when none) and the views they look up,
    directly or through others, each after the views it looks up (the whole graph runs in one job)."""
    selected = [view.name for view in select_views(repo, names)]
    ordered = lookup_order(repo, selected)
    added = [name for name in ordered if name not in selected]
    if added:
        report(f"also streaming {', '.join(added)}: looked up by the views named")
    return [repo.views[name] for name in ordered]


def read_sources(view: StreamFeatureView) -> list[StreamSource]:
    """The sources a view reads: its own, then each interval join's other source."""
    return [view.source, *(join.source for join in view.plan.interval_joins)]


@dataclass
class StreamJobPlan:
    """What a streaming job is, decided before Flink starts: its views (each after the views it looks
    up), each source's partitions, where its status and checkpoints go, the snapshot it restores
    (None: fresh), its Flink configuration, shape and lineage."""

    views: list[StreamFeatureView]
    partitions: dict[str, int]
    status_dir: Path
    checkpoint_dir: Path
    restore: Path | None
    config: dict[str, str]
    shape: str
    lineage: str
    by_source: list[list[StreamFeatureView]]
    joined: list[StreamFeatureView]


def plan_stream_job(
    repo: FeatureRepo,
    options: StreamOptions,
    report: Callable[[str], None],
    restore: Path | bool | None = True,
) -> StreamJobPlan:
    """Check the views and sources and plan the job. ``restore``: True restores the newest
    retained checkpoint or savepoint (unless ``options.fresh``); a path restores that one (the
    Flink Kubernetes operator names it in application mode); None starts fresh."""
    settings = repo.settings
    views = stream_views(repo, options.views, report)
    for view in views:
        for source in read_sources(view):
            if not isinstance(source, FileStreamSource | KafkaStreamSource):
                raise MLFSError(
                    f"view {view.name!r}: source {source.name!r} is {source.kind}; "
                    "serve-stream reads file and Kafka sources"
                )
    # Before a Flink environment is started: each source's partitions (and a Kafka source's jars).
    sources = {source.name: source for view in views for source in read_sources(view)}
    partitions = {name: source_partitions(source, options.jars) for name, source in sources.items()}
    stream_dir = settings.work_path / "stream"
    status_dir = stream_dir / "status"
    checkpoint_dir = (options.checkpoint_dir or stream_dir / "checkpoints").resolve()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if restore is True:
        restore = None if options.fresh else latest_checkpoint(checkpoint_dir)
    elif restore is False:
        restore = None
    config = {
        "execution.checkpointing.interval": f"{int(options.checkpoint_interval_s * 1000)} ms",
        "execution.checkpointing.dir": checkpoint_dir.as_uri(),
        "execution.checkpointing.savepoint-dir": (checkpoint_dir / "savepoints").as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        # A failure (a store that is down, a worker that died) restarts the job from its last
        # checkpoint, a bounded number of times, so a failure that lasts stops serve-stream.
        "jobmanager.execution.failover-strategy": "full",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(options.max_restarts),
        "restart-strategy.fixed-delay.delay": f"{int(options.restart_delay_s * 1000)} ms",
        **options.flink_config,
    }
    by_source: dict[str, list[StreamFeatureView]] = {}
    for view in views:
        if not view.plan.joins:
            by_source.setdefault(view.source.name, []).append(view)
    joined = [view for view in views if view.plan.joins]  # each after the views it looks up
    shape = job_shape([*by_source.values(), *([view] for view in joined)], partitions)
    if restore is not None:
        check_shape(checkpoint_dir, restore, shape)
        report(f"restoring from {restore}")
    clear_status(status_dir, keep_counts=restore is not None)
    lineage = lineage_of(checkpoint_dir, restore)
    return StreamJobPlan(
        views,
        partitions,
        status_dir,
        checkpoint_dir,
        restore,
        config,
        shape,
        lineage,
        list(by_source.values()),
        joined,
    )


def submit_stream_job(
    repo: FeatureRepo, options: StreamOptions, plan: StreamJobPlan, env: Any, t_env: Any
) -> Any:
    """Build the planned job on ``env`` and submit it; returns Flink's job client. The job's shape
    and lineage are remembered under its id, so a checkpoint of it can be restored later."""
    settings = repo.settings
    env.add_python_file(str(settings.repo_path))
    if options.jars:
        env.add_jars(*(jar.resolve().as_uri() for jar in options.jars))
    graph = JobGraph(
        repo, plan.views, env, t_env, options, str(plan.status_dir), plan.lineage, plan.partitions
    )
    for source_views in plan.by_source:
        graph.add_plain(source_views)
    for view in plan.joined:
        graph.add_joined(view)
    try:
        client = env.execute_async(f"mlfs-stream-{settings.project}")
    except Exception as err:  # py4j wraps the Java failure
        if plan.restore is not None and "Cannot map checkpoint/savepoint state" in str(err):
            raise another_shape(plan.restore) from None
        raise
    remember_lineage(plan.checkpoint_dir, str(client.get_job_id()), plan.lineage)
    remember_shape(plan.checkpoint_dir, str(client.get_job_id()), plan.shape)
    return client


def serve_stream(
    repo: FeatureRepo, options: StreamOptions, report: Callable[[str], None] = print
) -> list[ViewMetrics]:
    """Run the streaming job until ``options.duration_s`` passes or Ctrl-C; returns the last status."""
    from transforms.engines.flink import flink_environment

    settings = repo.settings
    plan = plan_stream_job(repo, options, report)
    views, status_dir, checkpoint_dir = plan.views, plan.status_dir, plan.checkpoint_dir
    config = dict(plan.config)
    if plan.restore is not None:
        config[RECOVERY_PATH] = plan.restore.as_uri()
    with _ctrl_c_stops() as stop:
        job = StreamJobRecord(settings.work_path, [v.name for v in views], options.master or "local")

        def submit() -> Any:
            env, t_env = flink_environment(options.parallelism, options.master, config)
            return submit_stream_job(repo, options, plan, env, t_env)

        keeper = None
        if options.master:
            client = submit()
            rest = f"http://{options.master}"
        else:  # the mini-cluster's REST API, where the job's failures are read
            client, port = on_a_free_port(config, submit)
            rest = f"http://127.0.0.1:{port}"
            cluster = mini_cluster(client)
            if cluster is not None:
                keeper = LocalTaskManagers(rest, cluster.startTaskManager, options.max_restarts)
        job.write(state="running", job_id=str(client.get_job_id()))
        report(
            f"streaming {len(views)} view(s) ({', '.join(v.name for v in views)}) on "
            f"{options.master or 'a local Flink mini-cluster'}; job {client.get_job_id()}; "
            f"Flink's REST API on {rest}"
        )
        supervision = Supervision(
            repo, options, views, status_dir, rest, str(client.get_job_id()), report, keeper
        )
        supervision.run(job, lambda: job_status(client), lambda: job_failure(client), stop)
        supervision.stopping(job)
        savepoint = _stop_with_savepoint(client, checkpoint_dir / "savepoints", job)
        remember_lineage(checkpoint_dir, lineage_key(savepoint), plan.lineage)
        remember_shape(checkpoint_dir, lineage_key(savepoint), plan.shape)
        job.write(state="stopped", savepoint=savepoint, stopped_at=time.time())
        report(f"stopped with savepoint {savepoint}")
        return supervision.finish()


class Supervision:
    """What watches a running job (``serve-stream``, or ``serve-stream --attach`` beside a job a
    cluster runs): Prometheus metrics and health, the offline store's compaction, online = offline
    samples, restarts reported, a local mini-cluster's stopped TaskManager replaced (``keeper``),
    and a status line per view now and then."""

    def __init__(
        self,
        repo: FeatureRepo,
        options: StreamOptions,
        views: list[StreamFeatureView],
        status_dir: Path,
        rest: str,
        job_id: str,
        report: Callable[[str], None],
        keeper: LocalTaskManagers | None = None,
    ) -> None:
        self.options, self.status_dir, self.report = options, status_dir, report
        self.keeper = keeper
        self.bounds = {v.name: source_lateness(v.source).max_out_of_orderness_ms for v in views}
        self.health = JobHealth("RUNNING")
        self.server = None
        if options.metrics_port is not None:
            self.server = serve_metrics(
                options.metrics_host,
                options.metrics_port,
                lambda: collect(status_dir, self.bounds),
                lambda: self.health,
            )
            report(f"metrics on http://{options.metrics_host}:{self.server.server_address[1]}/metrics")
        offline_views = [v for v in views if v.offline]
        self.compactor = Compactor(
            repo.settings.offline_path, offline_views, options.compact_min_files, report
        )
        self.sampler = ConsistencySampler(
            repo, [v for v in offline_views if v.online], options.consistency_sample
        )
        self.failures = JobFailures(rest, job_id)

    def run(
        self,
        job: StreamJobRecord,
        status_of: Callable[[], str],
        failure_of: Callable[[], str],
        stop: _StopRequest,
    ) -> None:
        """Watch until ``options.duration_s`` passes or ``stop``; a job that ends is an error."""
        options, health = self.options, self.health
        started = last_report = time.monotonic()
        while not stop.requested and (
            options.duration_s is None or time.monotonic() - started < options.duration_s
        ):
            time.sleep(0.2)
            job.beat()
            if options.compact_every_s is not None:
                self.compactor.run_every(options.compact_every_s)
            if options.consistency_every_s is not None:
                self.sampler.run_every(options.consistency_every_s)
                health.consistency = dict(self.sampler.ratios)
            if self.keeper is not None and self._revived(self.keeper, job):
                job.write(taskmanagers_replaced=self.keeper.started)
                self.report(
                    "Flink's local TaskManager stopped (a fatal error while a failed task was "
                    "cleaned up); started another, the job restarts from its last checkpoint"
                )
            status = status_of()
            health.state = status
            if status in ("FAILED", "CANCELED", "FINISHED"):
                job.write(state=status.lower())
                self.sampler.wait()
                raise MLFSError(f"the streaming job stopped ({status}){failure_of()}")
            for cause in self.failures.new():
                health.restarts = self.failures.seen
                job.write(restarts=self.failures.seen)
                if self.failures.seen <= options.max_restarts:
                    self.report(
                        f"the job failed and restarts from its last checkpoint "
                        f"({self.failures.seen} of at most {options.max_restarts}): {cause}"
                    )
            if time.monotonic() - last_report >= options.report_every_s:
                last_report = time.monotonic()
                for metrics in collect(self.status_dir, self.bounds):
                    self.report(metrics.line())
        if stop.requested:
            self.report("stopping (Ctrl-C)")

    def _revived(self, keeper: LocalTaskManagers, job: StreamJobRecord) -> int:
        """``keeper.revive()``; a TaskManager that keeps stopping fails the job's record too."""
        try:
            return keeper.revive()
        except MLFSError:
            job.write(state="failed")
            self.sampler.wait()
            raise

    def stopping(self, job: StreamJobRecord) -> None:
        job.write(state="stopping")
        self.health.state = "STOPPING"
        self.wind_down()

    def wind_down(self) -> None:
        """Let a compaction or a sample under way end."""
        self.compactor.wait()
        self.sampler.wait()

    def finish(self) -> list[ViewMetrics]:
        """Compact the last files, stop serving metrics; the last status of each view."""
        if self.options.compact_every_s is not None:
            self.compactor.compact()  # the files of the last batches, written as the job stopped
        if self.server is not None:
            self.server.shutdown()
        final = collect(self.status_dir, self.bounds)
        for metrics in final:
            self.report(metrics.line())
        return final


def attach_stream(repo: FeatureRepo, options: StreamOptions, report: Callable[[str], None] = print) -> None:
    """``serve-stream --attach``: supervise the job a Flink cluster runs for the repository (named
    ``mlfs-stream-<project>``; in application mode, the cluster started it from
    ``serve-stream --application``) through the cluster's REST API at ``options.master``, until
    ``options.duration_s`` or Ctrl-C; the job goes on running (the cluster stops it)."""
    if not options.master:
        raise MLFSError("--attach needs --flink-master HOST:PORT (the cluster's REST API)")
    views = stream_views(repo, options.views, lambda line: None)
    rest = f"http://{options.master}"
    name = f"mlfs-stream-{repo.settings.project}"
    job_id = _running_job(rest, name)
    report(f"supervising job {job_id} ({name}) on {options.master}")
    status_dir = repo.settings.work_path / "stream" / "status"
    with _ctrl_c_stops() as stop:
        job = StreamJobRecord(repo.settings.work_path, [v.name for v in views], options.master)
        job.write(state="running", job_id=job_id)
        supervision = Supervision(repo, options, views, status_dir, rest, job_id, report)
        supervision.run(job, lambda: _rest_status(rest, job_id), lambda: "", stop)
        supervision.wind_down()
        supervision.finish()
        report(f"job {job_id} goes on running on {options.master}")


def _running_job(rest: str, name: str, wait_s: float = 120.0) -> str:
    """The id of the cluster's job named ``name`` that has not ended (waited for: a cluster may be
    starting it); a one-line error if none comes."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"{rest}/jobs/overview", timeout=5) as answer:
                jobs = json.load(answer)["jobs"]
        except OSError as err:
            raise MLFSError(f"no Flink REST API at {rest}: {err}") from None
        live = [j for j in jobs if j["name"] == name and j["state"] not in ("FAILED", "CANCELED", "FINISHED")]
        if live:
            return str(live[0]["jid"])
        if time.monotonic() > deadline:
            raise MLFSError(f"no running job {name!r} on {rest} after {wait_s:.0f} s")
        time.sleep(1.0)


def _rest_status(rest: str, job_id: str) -> str:
    """A job's state from the cluster's REST API (``FAILED`` once the cluster no longer knows it)."""
    try:
        with urllib.request.urlopen(f"{rest}/jobs/{job_id}", timeout=5) as answer:
            return str(json.load(answer)["state"])
    except OSError:
        return "FAILED"


RECOVERY_PATH = "execution.state-recovery.path"  # where Flink restores a job from


def run_application(repo: FeatureRepo, options: StreamOptions, report: Callable[[str], None] = print) -> str:
    """``serve-stream --application``: the job as a Flink application. Flink's ``PythonDriver`` runs
    this inside the JobManager (the Flink Kubernetes operator's application mode, or
    ``standalone-job.sh``): it plans the job, builds it in the cluster it runs in and submits it,
    then returns the job's id while the cluster runs it. The cluster owns the job's life: it names
    the snapshot to restore (``execution.state-recovery.path``, checked against the job's shape
    as ``serve-stream`` checks it) and takes savepoints; ``serve-stream --attach`` supervises it."""
    from pyflink.datastream import StreamExecutionEnvironment

    from transforms.engines.flink import flink_environment

    if "PYFLINK_GATEWAY_PORT" not in os.environ:  # set by the PythonDriver that runs a Python main
        raise MLFSError(
            "--application is the job's main under Flink's PythonDriver (the Kubernetes operator's "
            "application mode, standalone-job.sh, flink run); here, run serve-stream without it"
        )
    cluster = StreamExecutionEnvironment.get_execution_environment()._j_stream_execution_environment
    named = cluster.getConfiguration().toMap().get(RECOVERY_PATH)
    restore = Path(urllib.parse.urlparse(named).path) if named else None
    plan = plan_stream_job(repo, options, report, restore)
    env, t_env = flink_environment(options.parallelism, None, plan.config)
    views = [v.name for v in plan.views]
    job = StreamJobRecord(repo.settings.work_path, views, "application")
    client = submit_stream_job(repo, options, plan, env, t_env)
    job.write(state="running", job_id=str(client.get_job_id()))
    report(f"submitted {len(views)} view(s) ({', '.join(views)}) as job {client.get_job_id()}")
    return str(client.get_job_id())


class JobGraph:
    """Adds views to a streaming job: each source read once, the plain views of a source sharing
    one stage 1, a view with joins wired to its other sources' streams and to the rows of the
    views it looks up (added before it: their row sinks give them, ``LookupFeed``)."""

    def __init__(
        self,
        repo: FeatureRepo,
        views: list[StreamFeatureView],
        env: Any,
        t_env: Any,
        options: StreamOptions,
        status_dir: str,
        lineage: str,
        partitions: dict[str, int],
    ) -> None:
        self.repo, self.env, self.t_env, self.options = repo, env, t_env, options
        self.status_dir, self.lineage, self.partitions = status_dir, lineage, partitions
        self.raws: dict[str, Any] = {}
        self.feeds: dict[str, Any] = {}  # the rows of each looked-up view, by name (``LookupFeed``)
        # The lookups of each view by the job's views: (looking view, position of the join, join).
        self.lookups: dict[str, list[tuple[str, int, Lookup]]] = {}
        for view in views:
            for position, join in enumerate(view.plan.joins):
                if isinstance(join, Lookup):
                    self.lookups.setdefault(join.view, []).append((view.name, position, join))

    def add_plain(self, views: list[StreamFeatureView]) -> None:
        """Views without joins, all of one source."""
        from transforms.engines.flink import build_job

        source = views[0].source
        jobs = [self._job(view) for view in views]
        stage1 = f"stage1_{len(self.raws)}"
        self.feeds |= build_job(
            jobs, self.env, self.t_env, self._raw(source), source_lateness(source), stage1
        )

    def add_joined(self, view: StreamFeatureView) -> None:
        """A view with joins, once the views it looks up are in."""
        from transforms.engines.flink import build_job, looked_up_rows
        from transforms.engines.flink_joins import JoinedSource, JoinSides

        plan = view.plan
        sides = JoinSides(
            sources={
                join.source_name: JoinedSource(
                    self._raw(join.source),
                    source_lateness(join.source),
                    self._outcomes(view, f"source-{join.source_name}"),
                )
                for join in plan.interval_joins
            },
            lookups={
                position: looked_up_rows(
                    self.feeds[join.view],
                    [(name, p) for name, p, _ in self.lookups[join.view]].index((view.name, position)),
                    self.env,
                    f"{view.name}_{position}",
                )
                for position, join in enumerate(plan.joins)
                if isinstance(join, Lookup)
            },
            finished=self._outcomes(view, "joins", ordered=False),
        )
        raw = self._raw(view.source)
        self.feeds |= build_job(
            [self._job(view, sides)], self.env, self.t_env, raw, source_lateness(view.source)
        )

    def _raw(self, source: StreamSource) -> list[Any]:
        if source.name not in self.raws:
            self.raws[source.name] = _open_source(
                self.env, source, self.repo.settings.repo_path, self.options, self.partitions[source.name]
            )
        return self.raws[source.name]

    def _outcomes(self, view: StreamFeatureView, part: str = "stage1", ordered: bool = True) -> Any:
        letters = str(self.repo.settings.dead_letter_path)
        return functools.partial(
            LiveOutcomes, view.name, letters, self.status_dir, self.lineage, part, ordered
        )

    def _job(self, view: StreamFeatureView, sides: Any = None) -> Any:
        from transforms.engines.flink import ViewJob

        settings = self.repo.settings
        rows = functools.partial(
            StoreRows,
            view,
            str(settings.repo_path),
            self.status_dir,
            str(settings.dead_letter_path),
            self.lineage,
        )
        looked_up_by = tuple(join for _, _, join in self.lookups.get(view.name, []))
        return ViewJob(view.plan, self._outcomes(view), rows, f"prepared_{view.name}", sides, looked_up_by)


class _Periodic:
    """Work done now and then on a thread of its own (the job's heartbeat must go on meanwhile):
    ``run_every`` starts ``work`` once ``seconds`` have passed since it last started and it ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = time.monotonic()  # the first round waits an interval
        self.thread: threading.Thread | None = None

    def work(self) -> None:
        raise NotImplementedError

    def run_every(self, seconds: float) -> None:
        if time.monotonic() - self.last < seconds or (self.thread is not None and self.thread.is_alive()):
            return
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self.work, name=self.name, daemon=True)
        self.thread.start()

    def wait(self) -> None:
        """Until a round under way has ended (a thread inside DuckDB or Arrow must not be cut off
        when the process exits: that aborts it)."""
        if self.thread is not None:
            self.thread.join()


class ConsistencySampler(_Periodic):
    """Samples online = offline (``featurestore.consistency``) for each view now and then, in a
    thread of its own; ``ratios`` holds each view's latest mismatch ratio (a view without offline
    rows yet has none)."""

    def __init__(self, repo: FeatureRepo, views: list[StreamFeatureView], sample: int) -> None:
        super().__init__("mlfs-consistency")
        self.repo, self.views, self.sample = repo, views, sample
        self.ratios: dict[str, float] = {}
        self.rounds = 0  # a new seed each time: over time every key is looked at

    def work(self) -> None:
        self.sample_views()

    def sample_views(self) -> None:
        from featurestore.config import feast_store
        from featurestore.consistency import check_consistency

        self.rounds += 1
        try:
            store = feast_store(self.repo.settings)
            for view in self.views:
                try:
                    report = check_consistency(self.repo, view.name, self.sample, self.rounds, store)
                except MLFSError:  # no offline rows yet
                    continue
                self.ratios[view.name] = report.rate
        except Exception:  # a store away: the job's own restarts report it; the next round tries again
            return


class Compactor(_Periodic):
    """Merges the views' streamed offline files now and then, in a thread of its own (a merge of a
    large partition takes a while; the job's heartbeat must go on)."""

    def __init__(
        self,
        offline_path: Path,
        views: list[StreamFeatureView],
        min_files: int,
        report: Callable[[str], None],
    ) -> None:
        super().__init__("mlfs-compact")
        self.store = ParquetOfflineStore(offline_path)
        self.views = views
        self.min_files = min_files
        self.report = report

    def work(self) -> None:
        self.compact()

    def compact(self) -> None:
        """Compact every view's partitions now, reporting what was merged or removed."""
        for view in self.views:
            try:
                stats = self.store.compact(view, self.min_files)
            except Exception as err:  # the stream goes on; the files stay for the next compaction
                self.report(f"{view.name}: offline compaction failed: {type(err).__name__}: {err}")
                continue
            if stats.busy:
                self.report(
                    f"{view.name}: offline compaction skipped: a backfill or compaction holds the view"
                )
            elif stats.merged or stats.removed:
                self.report(
                    f"{view.name}: offline compaction merged {stats.merged} files ({stats.rows:,} rows) "
                    f"into {stats.written}, removed {stats.removed} merged earlier"
                )


class _StopRequest:
    """Set by the first Ctrl-C, so a stop requested while the job is still being submitted (inside a
    call into the JVM) waits for it and ends with a savepoint; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextlib.contextmanager
def _ctrl_c_stops() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


STARTING_TASKS_WAIT_S = 120.0


def _stop_with_savepoint(client: Any, directory: Path, job: StreamJobRecord) -> str:
    """Stop the job gracefully after a savepoint (PyFlink's wrapper predates Flink 2's signature).
    A job that is still deploying its tasks, or restarting after a failure, is waited for; one that
    fails meanwhile, or is not running after ``STARTING_TASKS_WAIT_S``, is a one-line error (a job
    still restarting is cancelled: the next start restores its last checkpoint)."""
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    format_type = jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    deadline = time.monotonic() + STARTING_TASKS_WAIT_S
    while True:
        job.beat()
        try:
            future = client._j_job_client.stopWithSavepoint(False, directory.as_uri(), format_type)
            while True:  # the record's heartbeat goes on while a large savepoint is written
                with contextlib.suppress(Exception):  # py4j wraps the Java TimeoutException
                    return str(future.get(2, jvm.java.util.concurrent.TimeUnit.SECONDS))
                if future.isDone():
                    return str(future.get())  # raises the savepoint's failure
                job.beat()
        except Exception as err:  # py4j wraps the Java failure
            if "Not all required tasks are currently running" not in str(err):
                raise MLFSError(f"stopping the job with a savepoint failed: {java_cause(err)}") from None
            status = job_status(client)
            if status in ("FAILED", "CANCELED", "FINISHED"):
                job.write(state=status.lower())
                raise MLFSError(f"the streaming job stopped ({status}){job_failure(client)}") from None
            if time.monotonic() > deadline:
                client.cancel().result()
                job.write(state="cancelled")
                raise MLFSError(
                    f"the job was still {status.lower()} after {STARTING_TASKS_WAIT_S:.0f} s, so no "
                    "savepoint could be taken; it was cancelled, and the next start restores its "
                    "last checkpoint"
                ) from None
            time.sleep(1.0)


T = TypeVar("T")


def on_a_free_port(config: dict[str, str], start: Callable[[], T], attempts: int = 3) -> tuple[T, int]:
    """``start()`` of a mini-cluster whose REST API takes a free port (set in ``config``), and the
    port; a port another process took between the check and Flink's bind is replaced by another."""
    for attempt in range(attempts):
        port = _free_port()
        config["rest.port"] = config["rest.bind-port"] = str(port)
        try:
            return start(), port
        except Exception as err:  # py4j wraps Flink's BindException
            if attempt == attempts - 1 or "Could not start rest endpoint" not in str(err):
                raise
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class JobFailures:
    """The job's failures, from Flink's REST API (its exception history), polled now and then."""

    POLL_S = 1.0

    def __init__(self, rest: str, job_id: str) -> None:
        self.url = f"{rest}/jobs/{job_id}/exceptions"
        self.seen = 0
        self._last = 0.0

    def new(self) -> list[str]:
        """One line per failure since the last call (nothing while the API does not answer)."""
        if time.monotonic() - self._last < self.POLL_S:
            return []
        self._last = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=2) as answer:
                entries = json.load(answer)["exceptionHistory"]["entries"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        fresh = sorted(entries, key=lambda e: e.get("timestamp", 0))[self.seen :]
        self.seen += len(fresh)
        return [failure_summary(str(e.get("stacktrace") or e.get("exceptionName", ""))) for e in fresh]


_EXCEPTION_LINE = re.compile(r"^(?:Caused by: )?((?:[\w$]+\.)*[\w$]*(?:Error|Exception|Exit)): (.+)$")
_JVM_PACKAGES = ("java.", "javax.", "org.", "scala.", "io.", "com.", "py4j.", "jdk.", "sun.")


def failure_summary(text: str, limit: int = 400) -> str:
    """A failure's stack trace (Java's, with a Python worker's traceback inside where a Python
    function failed) as one line: the last Python exception, else the deepest Java cause."""
    found = [m.groups() for line in text.splitlines() if (m := _EXCEPTION_LINE.match(line.strip()))]
    python = [f for f in found if not f[0].startswith(_JVM_PACKAGES)]
    if python or found:
        name, message = (python or found)[-1]
        return f"{name.rsplit('.', 1)[-1]}: {message}"[:limit]
    lines = text.strip().splitlines()
    return (lines[0] if lines else "unknown failure")[:limit]


def job_status(client: Any) -> str:
    """The job's status; ``FAILED`` once the cluster no longer knows it (a local mini-cluster lets a
    failed job go)."""
    try:
        status = client.get_job_status().result()
        return str(
            getattr(status, "name", status)
        )  # PyFlink's JobStatus enum: RUNNING, not JobStatus.RUNNING
    except Exception:  # py4j wraps the Java failure
        return "FAILED"


def job_failure(client: Any) -> str:
    """``": <cause>"`` of a job that failed (its root cause, one line), or nothing."""
    try:
        client.get_job_execution_result().result()
    except Exception as err:  # py4j wraps the Java failure
        return f": {java_cause(err)}"
    return ""


def java_cause(err: BaseException) -> str:
    """A (py4j-wrapped) Java failure as one line (``failure_summary``)."""
    return failure_summary(str(err))
