"""The per-event stage every engine shares: decode, event time, event transform, keys, types.

One raw event ends in exactly one of four outcomes, which the counts add up to:
aggregated (it produced rows), filtered (the transform returned ``None`` or ``[]``),
dead-lettered (with a reason), or late (streaming only). An event is dead-lettered whole
when any row it produced is invalid, so a split event never half-counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from transforms.dtypes import CoercionError, coerce, is_null
from transforms.plan import TransformPlan
from transforms.timeutil import check_event_time, ms_to_datetime, parse_event_time
from transforms.usercode import USER_CODE_ERRORS

# Dead-letter reasons.
UNPARSEABLE = "unparseable"
MISSING_TIME = "missing_time"
BAD_TIME = "bad_time"
TRANSFORM_ERROR = "transform_error"
MISSING_KEY = "missing_key"
WRONG_TYPE = "wrong_type"
LATE = "late"

Key = tuple[Any, ...]
Values = tuple[Any, ...]
TimedEvent = tuple[Any, dict[str, Any], int]  # raw input, decoded event, event time (ms)


@dataclass(frozen=True)
class DeadLetter:
    """A rejected event: the raw input as text, why, and (when known) its event time."""

    view: str
    reason: str
    detail: str
    raw: str
    event_time: datetime | None = None
    source: str | None = None  # another source of the view (an interval join's), else its own

    def to_json(self) -> str:
        data = asdict(self)
        data["event_time"] = None if self.event_time is None else self.event_time.isoformat()
        if self.source is None:
            del data["source"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        data = json.loads(text)
        when = data.get("event_time")
        data["event_time"] = None if when is None else datetime.fromisoformat(when)
        return cls(**data)


@dataclass
class EventCounts:
    """The four outcomes of input events (``input`` is their sum) and the rows aggregated."""

    input: int = 0
    aggregated: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    late: int = 0
    rows: int = 0
    rows_dead_lettered: int = 0  # feature rows an after-aggregation model stage could not score

    @property
    def balanced(self) -> bool:
        return self.input == self.aggregated + self.filtered + self.dead_lettered + self.late

    def add(self, other: EventCounts) -> None:
        for name in (
            "input",
            "aggregated",
            "filtered",
            "dead_lettered",
            "late",
            "rows",
            "rows_dead_lettered",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def count(self, outcome: PreparedEvent | list[PreparedEvent] | DeadLetter | None) -> None:
        """Count one accepted event by what preparing it gave: no row (filtered), a dead letter, or
        rows (aggregated once, however many rows; a joined event's are several ``PreparedEvent``s).
        Every engine counts by this rule: per event here, per stage-1 table with
        ``stage1.add_tallies``."""
        if outcome is None:
            self.filtered += 1
        elif isinstance(outcome, DeadLetter):
            self.dead_lettered += 1
        else:
            self.aggregated += 1
            prepared = outcome if isinstance(outcome, list) else [outcome]
            self.rows += sum(len(p.rows) for p in prepared)

    @staticmethod
    def of(outcome: PreparedEvent | list[PreparedEvent] | DeadLetter | None) -> EventCounts:
        """The counts of one input event whose outcome is ``outcome``."""
        counts = EventCounts(input=1)
        counts.count(outcome)
        return counts

    def source_summary(self) -> str:
        """The counts of an interval join's other source (``joining.read_other``)."""
        return (
            f"{self.input} events: {self.aggregated} joinable, {self.filtered} without a join value, "
            f"{self.dead_lettered} dead-lettered, {self.late} late"
        )

    def summary(self) -> str:
        text = (
            f"{self.input} events: {self.aggregated} aggregated ({self.rows} rows), "
            f"{self.filtered} filtered, {self.dead_lettered} dead-lettered, {self.late} late"
        )
        if self.rows_dead_lettered:
            text += f"; {self.rows_dead_lettered} feature rows dead-lettered by model stages"
        return text


@dataclass(frozen=True)
class Lateness:
    """Streaming lateness: watermark = max event time seen - ``max_out_of_orderness_ms``; an event
    older than watermark - ``allowed_lateness_ms`` when it arrives is late."""

    max_out_of_orderness_ms: int
    allowed_lateness_ms: int = 0

    @property
    def bound_ms(self) -> int:
        """How far behind the highest event time seen (in its partition) an event may be and still
        count: it is late when ``time < max_seen - bound_ms``."""
        return self.max_out_of_orderness_ms + self.allowed_lateness_ms

    def watermark(self, max_seen_ms: int) -> int:
        """The watermark after the highest event time ``max_seen_ms``."""
        return max_seen_ms - self.max_out_of_orderness_ms


@dataclass(frozen=True)
class PartitionedEvent:
    """A raw event and the source partition it arrived on (a Kafka topic's partition): lateness is
    judged per partition (DESIGN §2), so the reference takes what the stream read from each."""

    partition: int
    raw: Any


def partitioned(event: Any) -> PartitionedEvent:
    """An event with its source partition: a ``PartitionedEvent`` as it is, any other event on
    partition 0 (a source read as one partition)."""
    return event if isinstance(event, PartitionedEvent) else PartitionedEvent(0, event)


class PartitionedLateness:
    """``LateClassifier``s, one per source partition, each over its own arrival order."""

    def __init__(self, lateness: Lateness) -> None:
        self.lateness = lateness
        self.partitions: dict[int, LateClassifier] = {}

    def of(self, partition: int) -> LateClassifier:
        """The classifier of ``partition``."""
        classifier = self.partitions.get(partition)
        if classifier is None:
            classifier = self.partitions[partition] = LateClassifier(self.lateness)
        return classifier

    def late_watermark(self, partition: int, time_ms: int) -> int | None:
        """The watermark of ``partition`` an event at ``time_ms`` is late against, or None."""
        return self.of(partition).late_watermark(time_ms)


class LateClassifier:
    """Applies ``Lateness`` to events in arrival order (one per source partition)."""

    def __init__(self, lateness: Lateness) -> None:
        self.lateness = lateness
        self.max_seen: int | None = None

    def late_watermark(self, time_ms: int) -> int | None:
        """The watermark an event at ``time_ms`` is late against, or None (then it counts as seen)."""
        if self.max_seen is not None and time_ms < self.max_seen - self.lateness.bound_ms:
            return self.lateness.watermark(self.max_seen)
        self.max_seen = time_ms if self.max_seen is None else max(self.max_seen, time_ms)
        return None


@dataclass
class PreparedEvent:
    """A good event: its time and the (key, feature input values) rows it produced."""

    time_ms: int
    rows: list[tuple[Key, Values]] = field(default_factory=list)


# An event nested deeper than this is unparseable (the same fixed depth on every engine: Python's
# own limit depends on how deep the caller's stack already is).
MAX_JSON_DEPTH = 64
# What MLFS's Flink readers (``flink_java``: ``Utf8Lines``, ``Utf8Strings``) and ``event_text`` put
# before an event whose bytes are not UTF-8, followed by its bytes as Latin-1 (one character per
# byte, so nothing is lost on the way); no JSON text starts with it, so it never hides a good event.
NOT_UTF8 = "\x00not-utf-8\x00"
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def event_text(raw: bytes | bytearray) -> str:
    """An event's bytes as text: UTF-8, or ``NOT_UTF8`` and the bytes as Latin-1."""
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8 + bytes(raw).decode("latin-1")


def parse_json(text: str | bytes | bytearray) -> Any:
    """JSON text (or UTF-8 bytes) as Python values; ``ValueError`` for bytes that are not UTF-8,
    text that is not JSON, and nesting deeper than ``MAX_JSON_DEPTH``. Every engine decodes events
    with this."""
    if isinstance(text, (bytes, bytearray)):
        text = event_text(text)
    if text.startswith(NOT_UTF8):
        raise ValueError("not valid UTF-8")
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(text):
        raise ValueError(f"not JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"not JSON: {err}") from None


def _too_deep(text: str) -> bool:
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        bracket = match.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif bracket in "]}":
            depth -= 1
    return False


def raw_text(raw: Any) -> str:
    """The raw input as text, for the dead letter (bad UTF-8 bytes as U+FFFD)."""
    if isinstance(raw, (bytes, bytearray)):
        raw = event_text(raw)  # as a Flink reader hands it on
    if isinstance(raw, str):
        if not raw.startswith(NOT_UTF8):
            return raw
        try:  # the bytes of an event that is not UTF-8, with U+FFFD for the bad ones
            return raw[len(NOT_UTF8) :].encode("latin-1").decode("utf-8", errors="replace")
        except UnicodeEncodeError:  # text that merely starts like one
            return raw[len(NOT_UTF8) :]
    try:
        return json.dumps(raw, default=str, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return repr(raw)


def decode(raw: Any) -> dict[str, Any]:
    """A raw event as a dict: JSON text or bytes are parsed, mappings copied; else ``ValueError``."""
    if isinstance(raw, (str, bytes, bytearray)):
        raw = parse_json(raw)
    if isinstance(raw, dict):
        return dict(raw)
    if hasattr(raw, "keys") and hasattr(raw, "__getitem__"):
        return {k: raw[k] for k in raw.keys()}
    raise ValueError(f"an event must be a JSON object, got {type(raw).__name__}")


def _describe(err: Exception) -> str:
    """An error as a dead letter's detail: ``ValueError``s are MLFS's own words, anything else is
    named."""
    return str(err) if type(err) is ValueError else f"{type(err).__name__}: {err}"


class EventPreparer:
    """Turns raw events into ``PreparedEvent``s, ``DeadLetter``s or ``None`` (filtered)."""

    def __init__(self, plan: TransformPlan) -> None:
        self.plan = plan
        self._columns = [(f.name, f.aggregation.column, f.input_dtype) for f in plan.features]
        self._scorers: list[Any] | None = None

    def event_time(self, event: dict[str, Any]) -> int:
        """The event's time in ms; ``KeyError`` when absent, ``ValueError`` when unparseable."""
        value = event.get(self.plan.timestamp_field)
        if value is None:
            raise KeyError(self.plan.timestamp_field)
        return check_event_time(parse_event_time(value), self.plan.event_time_range_ms)

    def dead_letter(self, raw: Any, reason: str, detail: str, time_ms: int | None = None) -> DeadLetter:
        return DeadLetter(
            view=self.plan.view,
            reason=reason,
            detail=detail,
            raw=raw_text(raw),
            event_time=None if time_ms is None else ms_to_datetime(time_ms),
        )

    def missing_time(self, raw: Any) -> DeadLetter:
        return self.dead_letter(raw, MISSING_TIME, f"no value for {self.plan.timestamp_field!r}")

    def missing_key(self, raw: Any, name: str, time_ms: int) -> DeadLetter:
        return self.dead_letter(raw, MISSING_KEY, f"no value for key {name!r}", time_ms)

    def decode_and_time(self, raw: Any) -> tuple[dict[str, Any], int] | DeadLetter:
        """First half of preparation (all a streaming source needs for watermarks)."""
        try:
            event = decode(raw)
        except Exception as err:  # whatever an event does, it becomes a dead letter
            return self.dead_letter(raw, UNPARSEABLE, _describe(err))
        try:
            time_ms = self.event_time(event)
        except KeyError:
            return self.missing_time(raw)
        except Exception as err:
            return self.dead_letter(raw, BAD_TIME, _describe(err))
        return event, time_ms

    def transform(self, raw: Any, event: dict[str, Any], time_ms: int) -> PreparedEvent | DeadLetter | None:
        """Second half: event transform, model stages (this event's rows as one batch), keys and
        input types."""
        return self.transform_batch([(raw, event, time_ms)])[0]

    def transform_batch(self, items: Sequence[TimedEvent]) -> list[PreparedEvent | DeadLetter | None]:
        """``transform`` for many events at once, so model stages score their rows in batches."""
        staged: list[list[dict[str, Any]] | DeadLetter | None] = [self.event_rows(*item) for item in items]
        if self.plan.event_stages:
            staged = self._enrich(items, staged)
        return [
            rows if rows is None or isinstance(rows, DeadLetter) else self._check_rows(raw, rows, time_ms)
            for (raw, _, time_ms), rows in zip(items, staged, strict=True)
        ]

    def event_rows(
        self, raw: Any, event: dict[str, Any], time_ms: int
    ) -> list[dict[str, Any]] | DeadLetter | None:
        """The rows the event transform makes of one event (``None``: filtered)."""
        plan = self.plan
        when = ms_to_datetime(time_ms)
        event[plan.timestamp_field] = when
        if plan.event_transform is None:
            outputs: Any = [event]
        else:
            try:
                outputs = plan.event_transform(event)
            except USER_CODE_ERRORS as err:  # a user function may raise anything
                return self.dead_letter(raw, TRANSFORM_ERROR, f"{type(err).__name__}: {err}", time_ms)
            if outputs is None:
                return None
            if isinstance(outputs, dict):
                outputs = [outputs]
            elif not isinstance(outputs, (list, tuple)):
                return self.dead_letter(
                    raw,
                    TRANSFORM_ERROR,
                    f"event transform returned {type(outputs).__name__}, "
                    "expected a dict, a list of dicts or None",
                    time_ms,
                )
            if not outputs:
                return None
        rows = []
        for row in outputs:
            if not isinstance(row, dict):
                return self.dead_letter(
                    raw,
                    TRANSFORM_ERROR,
                    f"event transform produced {type(row).__name__}, expected a dict",
                    time_ms,
                )
            rows.append({**row, plan.timestamp_field: when})
        return rows

    def _enrich(
        self, items: Sequence[TimedEvent], staged: list[list[dict[str, Any]] | DeadLetter | None]
    ) -> list[list[dict[str, Any]] | DeadLetter | None]:
        """Every event's rows through the model stages in one batch; an event with a row that
        cannot be scored is dead-lettered whole."""
        from transforms.inference.scoring import Failure, StageScorer, run_stages

        if self._scorers is None:
            self._scorers = [
                StageScorer(stage, pool_name=f"{self.plan.view}/{stage.name}")
                for stage in self.plan.event_stages
            ]
        flat: list[dict[str, Any]] = []
        times: list[int] = []
        for (_, _, time_ms), rows in zip(items, staged, strict=True):
            if isinstance(rows, list):
                flat.extend(rows)
                times.extend([time_ms] * len(rows))
        scored = iter(run_stages(self._scorers, flat, times))
        out: list[list[dict[str, Any]] | DeadLetter | None] = []
        for (raw, _, time_ms), rows in zip(items, staged, strict=True):
            if not isinstance(rows, list):
                out.append(rows)
                continue
            results = [next(scored) for _ in rows]
            failed = next((r for r in results if isinstance(r, Failure)), None)
            if failed is not None:
                out.append(self.dead_letter(raw, failed.dead_letter_reason, failed.describe(), time_ms))
            else:
                out.append(results)  # type: ignore[arg-type]
        return out

    def _check_rows(self, raw: Any, rows: list[dict[str, Any]], time_ms: int) -> PreparedEvent | DeadLetter:
        prepared = PreparedEvent(time_ms)
        for row in rows:
            checked = self._check_row(raw, row, time_ms)
            if isinstance(checked, DeadLetter):
                return checked
            prepared.rows.append(checked)
        return prepared

    def late(self, raw: Any, time_ms: int, watermark: int) -> DeadLetter:
        return self.dead_letter(raw, LATE, f"event time is before watermark {watermark}", time_ms)

    def prepare(self, raw: Any) -> PreparedEvent | DeadLetter | None:
        """Decode, time and transform one raw event (batch engines, no lateness)."""
        return self.prepare_batch([raw])[0]

    def prepare_batch(
        self, raws: Sequence[Any], joined: Sequence[dict[str, Any]] | None = None
    ) -> list[PreparedEvent | DeadLetter | None]:
        """``prepare`` for many events, so model stages score their rows together; ``joined``
        holds, per event, the fields its lookups added (found by another engine)."""
        return [outcome for _, outcome in self.prepare_batch_timed(raws, joined)]

    def prepare_batch_timed(
        self, raws: Sequence[Any], joined: Sequence[dict[str, Any]] | None = None
    ) -> list[tuple[int | None, PreparedEvent | DeadLetter | None]]:
        """``prepare_batch`` with each event's time (None for an event without a usable time)."""
        firsts = [self.decode_and_time(raw) for raw in raws]
        if joined is not None:
            for first, fields in zip(firsts, joined, strict=True):
                if not isinstance(first, DeadLetter):
                    first[0].update(fields)
        timed = [
            (raw, *first)
            for raw, first in zip(raws, firsts, strict=True)
            if not isinstance(first, DeadLetter)
        ]
        transformed = iter(self.transform_batch(timed))
        return [
            (None, first) if isinstance(first, DeadLetter) else (first[1], next(transformed))
            for first in firsts
        ]

    def _check_row(self, raw: Any, row: dict[str, Any], time_ms: int) -> tuple[Key, Values] | DeadLetter:
        key = []
        for name, key_dtype in self.plan.keys:
            value = row.get(name)
            if value is None:
                return self.missing_key(raw, name, time_ms)
            try:
                key.append(coerce(value, key_dtype))
            except CoercionError as err:
                return self.dead_letter(raw, WRONG_TYPE, f"key {name!r}: {err}", time_ms)
        values: list[Any] = []
        for feature, column, dtype in self._columns:
            if column is None:
                values.append(True)
                continue
            value = row.get(column)
            if dtype is None:
                values.append(None if is_null(value) else True)
                continue
            try:
                values.append(coerce(value, dtype))
            except CoercionError as err:
                return self.dead_letter(
                    raw, WRONG_TYPE, f"column {column!r} (feature {feature!r}): {err}", time_ms
                )
        return tuple(key), tuple(values)
