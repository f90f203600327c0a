"""The reference engine as a backfill: the whole history in plain Python, one pass, no chunks.

Slow and obviously correct; for small repositories and for checking the other engines' stores.
"""

from __future__ import annotations

from datetime import UTC, datetime

from backfill.history import read_history
from backfill.report import ViewReport
from backfill.work import ViewBackfill
from featurestore.deadletter import write_dead_letters
from transforms.plan import EVENT_TIMESTAMP, Runner

PROGRESS_UNIT = "events"  # what ``ViewBackfill.tick`` counts


def backfill_view(job: ViewBackfill) -> ViewReport:
    """Backfill one view on the reference engine; returns what it did."""
    view, start, end = job.view, job.start, job.end
    result = view.run(read_history(job.files), Runner.REFERENCE, progress=job.tick, joins=job.join_inputs())
    rows = [
        r for r in result.rows if (start is None or r[EVENT_TIMESTAMP] >= start) and r[EVENT_TIMESTAMP] < end
    ]
    report = ViewReport(view.name, result.counts, source_counts=result.source_counts)
    if view.offline:
        stats = job.offline.write(view, rows, datetime.now(UTC), start, end)
        report.offline_rows, report.partitions = stats.rows, stats.partitions
    if view.online:
        online = job.writer.write(view, rows)
        report.online_written, report.online_skipped = online.written, online.skipped_older
    write_dead_letters(job.dead_letter_file(end), result.dead_letters)
    return report
