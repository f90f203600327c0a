"""Records of what ran: the last backfill of each view and the streaming job's state, kept as small
JSON files in the repository's work directory so the registry can show runtime status."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HEARTBEAT_S = 2.0  # how often a running `serve-stream` refreshes its job record
STALE_AFTER_S = 30.0  # a "running" record older than this belongs to a job that died


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, default=str))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def backfill_record_path(work_path: Path, view: str) -> Path:
    return work_path / "status" / "backfill" / f"{view}.json"


@dataclass(frozen=True)
class BackfillRecord:
    """The last finished backfill of one view."""

    view: str
    engine: str
    start: str | None
    end: str
    finished_at: float
    seconds: float
    counts: dict[str, int]
    offline_rows: int
    online_written: int


def record_backfill(work_path: Path, record: BackfillRecord) -> None:
    write_json(backfill_record_path(work_path, record.view), asdict(record))


def last_backfill(work_path: Path, view: str) -> dict[str, Any] | None:
    return read_json(backfill_record_path(work_path, view))


def stream_job_path(work_path: Path) -> Path:
    return work_path / "stream" / "job.json"


class StreamJobRecord:
    """The streaming job's state as ``serve-stream`` last wrote it (refreshed every
    ``HEARTBEAT_S`` while it runs)."""

    def __init__(self, work_path: Path, views: list[str], master: str) -> None:
        self.path = stream_job_path(work_path)
        self.data: dict[str, Any] = {
            "state": "starting",
            "views": views,
            "master": master,
            "pid": os.getpid(),
            "started_at": time.time(),
            "job_id": None,
        }
        self._last = 0.0
        self.write()

    def write(self, **changes: Any) -> None:
        self.data.update(changes, heartbeat=time.time())
        self._last = time.monotonic()
        write_json(self.path, self.data)

    def beat(self) -> None:
        if time.monotonic() - self._last >= HEARTBEAT_S:
            self.write()


def stream_job_state(work_path: Path) -> dict[str, Any] | None:
    """The job record, with ``state`` "lost" where a job recorded as starting, running or stopping
    stopped refreshing it (killed, or its machine gone)."""
    data = read_json(stream_job_path(work_path))
    if data is None:
        return None
    silent_s = time.time() - float(data.get("heartbeat", 0))
    if data.get("state") in ("starting", "running", "stopping") and silent_s > STALE_AFTER_S:
        data["state"] = "lost"
    return data
