"""The reference engine's opinion for ``mlfs consistency``: sampled keys' rows over the source's events.

The events are read as one partition in arrival order (by default the view's history files in name
order: the stream's archive, which ``mlfs backfill`` reads). Stored rows later than the newest
event at hand are not judged: the events that made them are not at hand. For each sampled key the
reference gives two sets
of rows: over *every* event (what a backfill computes, DESIGN §2: "a backfill sees every event") and
over the events the stream keeps (the source's lateness applied in that order), with the key's late
events. A stored value that equals the second but not the first was left without a late event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backfill.history import history_files, history_path, read_history
from featurestore.repo import FeatureRepo
from featurestore.view import StreamFeatureView
from transforms.engines.reference import key_rows
from transforms.events import DeadLetter, EventPreparer, Key, LateClassifier, PreparedEvent, Values
from transforms.joining import source_lateness
from transforms.plan import EVENT_TIMESTAMP
from transforms.timeutil import ms_to_datetime


@dataclass
class KeyReference:
    """One key's reference rows (time order) over every event and over the events kept on time."""

    every: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    late: list[datetime] = field(default_factory=list)  # the key's late events' times, arrival order

    def every_before(self, end: datetime) -> dict[str, Any] | None:
        return _newest_before(self.every, end)

    def kept_before(self, end: datetime) -> dict[str, Any] | None:
        return _newest_before(self.kept, end)


@dataclass
class SourceReference:
    """What the reference engine gives for the sampled keys, and over which events."""

    files: list[Path]
    events: int
    keys: dict[Key, KeyReference]
    until: datetime | None  # the newest event time at hand

    def describe(self) -> str:
        late = sum(len(k.late) for k in self.keys.values())
        return f"reference engine over {self.events:,} event(s) in {len(self.files)} file(s)" + (
            f", {late} late event(s) of sampled keys" if late else ""
        )


def why_not_reference(view: StreamFeatureView) -> str | None:
    """Why the reference cannot stand in for this view's stream here, or None when it can."""
    if view.plan.joins:
        return "the view joins other sources"
    if view.plan.row_stages:
        return "the view scores its feature rows with a model"
    return None


def events_at_hand(repo: FeatureRepo, view: StreamFeatureView) -> list[Path]:
    """The view's source events on this machine, in arrival order: its history files."""
    return history_files(history_path(repo, view))


def reference_for_keys(view: StreamFeatureView, files: list[Path], wanted: set[Key]) -> SourceReference:
    """Run the reference's per-event preparation over ``files`` (arrival order) and its window and
    aggregation over the ``wanted`` keys' rows, with and without the source's lateness."""
    plan = view.plan
    preparer = EventPreparer(plan)
    classifier = LateClassifier(source_lateness(view.source))
    every: dict[Key, list[tuple[int, Values]]] = {}
    kept: dict[Key, list[tuple[int, Values]]] = {}
    late: dict[Key, list[datetime]] = {}
    seen = 0
    for raw in read_history(files):
        seen += 1
        first = preparer.decode_and_time(raw)
        if isinstance(first, DeadLetter):
            continue
        event, time_ms = first
        on_time = classifier.late_watermark(time_ms) is None
        prepared = preparer.transform(raw, event, time_ms)
        if not isinstance(prepared, PreparedEvent):
            continue
        for key, values in prepared.rows:
            if key not in wanted:
                continue
            every.setdefault(key, []).append((time_ms, values))
            if on_time:
                kept.setdefault(key, []).append((time_ms, values))
            else:
                late.setdefault(key, []).append(ms_to_datetime(time_ms))
    keys = {
        key: KeyReference(
            key_rows(plan, key, every.get(key, [])),
            key_rows(plan, key, kept.get(key, [])),
            late.get(key, []),
        )
        for key in wanted
    }
    until = None if classifier.max_seen is None else ms_to_datetime(classifier.max_seen)
    return SourceReference(files, seen, keys, until)


def _newest_before(rows: list[dict[str, Any]], end: datetime) -> dict[str, Any] | None:
    """The newest row before ``end`` (rows in time order)."""
    found = None
    for row in rows:
        if row[EVENT_TIMESTAMP] >= end:
            break
        found = row
    return found
