"""What a backfill did for one view (printed at the end of ``mlfs backfill``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from transforms.events import EventCounts


@dataclass
class ViewReport:
    """What a backfill did for one view."""

    view: str
    counts: EventCounts
    offline_rows: int = 0
    partitions: int = 0
    online_written: int = 0
    online_skipped: int = 0
    dead_letter_file: Path | None = None
    seconds: float = 0.0
    chunks_skipped: int = 0  # done by an interrupted run this one resumed
    chunks_empty: int = 0  # with no event their values depend on: nothing computed
    end: datetime | None = None  # the range's end, when a resumed run kept an earlier one
    source_counts: dict[str, EventCounts] = field(default_factory=dict)  # an interval join's other sources
