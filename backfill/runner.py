"""Backfill: run views over their source's history and write the offline and online stores.

For each view: read the history, run the engine, keep the rows whose feature time lies in
``[start, end)``, rewrite those offline partitions (idempotent), write the latest row per key as
of ``end`` online (newer-wins) and the rejected events to the dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from backfill.history import check_history, count_events, history_files, history_path
from backfill.joins import JoinReader
from backfill.report import ViewReport
from backfill.spark_session import DEFAULT_MASTER
from backfill.work import CHUNK_ROWS, ViewBackfill
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.online import open_online_writer
from featurestore.repo import FeatureRepo, lookup_order
from featurestore.runstatus import BackfillRecord, record_backfill
from featurestore.view import StreamFeatureView
from registry.catalog import duration_text, read_catalog
from transforms.engines.base import BACKFILL_ENGINES, backfill_module
from transforms.errors import MLFSError
from transforms.joins import Lookup
from transforms.plan import spec_hash

DEFAULT_ENGINE = "embedded"


@dataclass
class BackfillPlan:
    """What ``mlfs backfill`` will do (printed by ``--dry-run``)."""

    views: list[StreamFeatureView]
    start: datetime | None
    end: datetime
    engine: str
    inputs: dict[str, list[Path]] = field(default_factory=dict)
    spark_master: str | None = None
    chunk_days: int | None = None  # Spark: calendar chunks of this many days, else chunks by volume
    chunk_rows: int = CHUNK_ROWS
    end_given: bool = True

    def describe(self) -> list[str]:
        engine = self.engine
        if engine == "spark":
            chunks = f"{self.chunk_days} day(s)" if self.chunk_days else f"up to {self.chunk_rows:,} rows"
            engine += f" (master {self.spark_master or DEFAULT_MASTER}, chunks of {chunks})"
        elif engine == "embedded":
            engine += " (DuckDB, in process)"
        lines = [
            f"engine: {engine}",
            f"range: [{self.start.isoformat() if self.start else 'beginning'}, {self.end.isoformat()})",
        ]
        last_day = (self.end - timedelta(microseconds=1)).date()
        if self.start is not None:
            days = (last_day - self.start.date()).days + 1
            lines.append(f"partitions: {days} date(s) from {self.start.date()} to {last_day} per view")
        else:
            lines.append(f"partitions: from the first event's date to {last_day} per view")
        for view in self.views:
            files = self.inputs[view.name]
            lines.append(
                f"view {view.name}: window {view.plan.window.kind}, source {view.source.name}, "
                f"{len(files)} input file(s): {', '.join(str(f) for f in files[:3])}"
                + (" ..." if len(files) > 3 else "")
            )
            for join in view.plan.joins:
                what = (
                    f"looks up {join.view} as of each event (computed with it)"
                    if isinstance(join, Lookup)
                    else f"joins source {join.source_name} ({join.how}, within "
                    f"{duration_text(join.before_ms)} before to {duration_text(join.after_ms)} after)"
                )
                lines.append(f"  {what}")
        return lines


def plan_backfill(
    repo: FeatureRepo,
    view_names: list[str],
    start: datetime | None,
    end: datetime | None,
    engine: str | None = None,
    spark_master: str | None = None,
    chunk_days: int | None = None,
) -> BackfillPlan:
    """Check the request (views exist, range, engine, inputs) and describe the work. Without an
    engine: ``mlfs.backfill.engine``, else Spark where a Spark master is given, else embedded."""
    spark_settings = repo.settings.mlfs.get("spark") or {}
    master = spark_master or spark_settings.get("master")
    if engine is None:
        configured = (repo.settings.mlfs.get("backfill") or {}).get("engine")
        engine = configured or ("spark" if master else DEFAULT_ENGINE)
    if engine not in BACKFILL_ENGINES:
        raise MLFSError(f"unknown engine {engine!r} (available: {', '.join(BACKFILL_ENGINES)})")
    if chunk_days is not None and chunk_days < 1:
        raise MLFSError("--chunk-days must be at least 1")
    chunk_rows = (repo.settings.mlfs.get("backfill") or {}).get("chunk_rows", CHUNK_ROWS)
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise MLFSError(f"mlfs.backfill.chunk_rows must be a positive integer, not {chunk_rows!r}")
    names = view_names or list(repo.views)
    for name in names:
        repo.view(name)
    # Looked-up views before the views that look them up (their rows are computed together).
    views = [repo.views[n] for n in lookup_order(repo, names) if n in names]
    if not views:
        raise MLFSError("the repository defines no views")

    end_given = end is not None
    end = end or datetime.now(UTC)
    if start is not None and start >= end:
        raise MLFSError(f"--start {start.isoformat()} is not before --end {end.isoformat()}")
    plan = BackfillPlan(
        views,
        start,
        end,
        engine,
        spark_master=master,
        chunk_days=chunk_days,
        chunk_rows=chunk_rows,
        end_given=end_given,
    )
    for view in views:
        path = history_path(repo, view)
        files = history_files(path)
        if not files:
            raise MLFSError(f"view {view.name!r}: no history at {path} (source {view.source.name!r})")
        check_history(view, files)
        plan.inputs[view.name] = files
    return plan


def _check_applied(repo: FeatureRepo, views: list[StreamFeatureView]) -> None:
    held = {r.name: r.spec_hash for r in read_catalog(repo.settings).list_views()}
    for view in views:
        if view.name not in held:
            raise MLFSError(f"view {view.name!r} is not registered; run `mlfs apply` first")
        if held[view.name] != spec_hash(view.spec()):
            raise MLFSError(f"view {view.name!r} changed since the last `mlfs apply`; run `mlfs apply` first")


def run_backfill(
    repo: FeatureRepo,
    plan: BackfillPlan,
    progress: Callable[[str, int | None, str], Callable[[int], None]] | None = None,
    restart: bool = False,
) -> list[ViewReport]:
    """Execute ``plan``; ``progress(view, total, unit)`` returns a tick callback (the engine's
    ``PROGRESS_UNIT``: events, or Spark's chunks). ``restart`` discards an interrupted run's progress."""
    _check_applied(repo, plan.views)
    offline = ParquetOfflineStore(repo.settings.offline_path)
    writer = open_online_writer(repo.settings)
    engine = backfill_module(plan.engine)
    joins = JoinReader(repo, plan.engine)
    reports = []
    try:
        for view in plan.views:
            started = time.monotonic()

            def dead_letter_file(end: datetime, view: StreamFeatureView = view) -> Path:
                name = f"backfill-{_stamp(plan.start)}-{_stamp(end)}.jsonl"
                return repo.settings.dead_letter_path / view.name / name

            job = ViewBackfill(
                view,
                plan.inputs[view.name],
                plan.start,
                plan.end,
                offline,
                writer,
                repo.settings.work_path / "backfill",
                dead_letter_file,
                restart=restart,
                end_given=plan.end_given,
                chunk_rows=plan.chunk_rows,
                chunk_days=plan.chunk_days,
                spark_master=plan.spark_master,
                join_inputs=partial(joins.inputs, view),
                join_files=joins.files(view),
            )
            if progress:
                events = engine.PROGRESS_UNIT == "events"
                job.tick = progress(
                    view.name, count_events(job.files) if events else None, engine.PROGRESS_UNIT
                )
            report = engine.backfill_view(job)
            letters = dead_letter_file(report.end or plan.end)
            if letters.is_file():
                report.dead_letter_file = letters
            report.seconds = time.monotonic() - started
            reports.append(report)
            end = report.end or plan.end
            record_backfill(
                repo.settings.work_path,
                BackfillRecord(
                    view=view.name,
                    engine=plan.engine,
                    start=plan.start.isoformat() if plan.start else None,
                    end=end.isoformat(),
                    finished_at=time.time(),
                    seconds=round(report.seconds, 3),
                    counts=asdict(report.counts),
                    offline_rows=report.offline_rows,
                    online_written=report.online_written,
                ),
            )
    finally:
        writer.close()
    return reports


def _stamp(value: datetime | None) -> str:
    return "beginning" if value is None else value.strftime("%Y%m%dT%H%M%S")


__all__ = ["BackfillPlan", "ViewReport", "plan_backfill", "run_backfill"]
