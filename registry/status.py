"""Runtime status of a view: its last backfill, the streaming job, the last online write and its
freshness, and dead letters, from the files the jobs leave in the repository's work directories."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from featurestore.config import RepoSettings
from featurestore.runstatus import last_backfill, stream_job_state


def _dead_letters(directory: Path) -> dict[str, Any]:
    files = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    records = 0
    by_origin = {"backfill": 0, "stream": 0}
    for path in files:
        with path.open("rb") as handle:
            lines = sum(1 for _ in handle)
        records += lines
        origin = "backfill" if path.name.startswith("backfill-") else "stream"
        by_origin[origin] += lines
    return {"files": len(files), "records": records, **by_origin}


def view_status(settings: RepoSettings, view: str) -> dict[str, Any]:
    """What ran for ``view`` and when (no engine is contacted: only the recorded files are read)."""
    from featurestore.stream.sinks import read_status

    job = stream_job_state(settings.work_path)
    streaming: dict[str, Any] | None = None
    if job is not None and view in job.get("views", []):
        status = read_status(settings.work_path / "stream" / "status", view)
        sink = status.sink
        streaming = {
            "state": job.get("state"),
            "job_id": job.get("job_id"),
            "master": job.get("master"),
            "started_at": job.get("started_at"),
            "heartbeat": job.get("heartbeat"),
            "counts": asdict(status.counts),
            "rows_out": sink.rows_out,
            "online_written": sink.online_written,
            "last_online_write": sink.last_write or None,
            "freshness_ms": sink.freshness_ms,
        }
    backfill = last_backfill(settings.work_path, view)
    writes = [streaming["last_online_write"]] if streaming and streaming["last_online_write"] else []
    if backfill and backfill.get("online_written"):
        writes.append(backfill["finished_at"])
    return {
        "view": view,
        "backfill": backfill,
        "stream": streaming,
        "last_online_write": max(writes) if writes else None,
        "dead_letters": _dead_letters(settings.dead_letter_path / view),
        "as_of": time.time(),
    }
