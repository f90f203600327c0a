"""What a feature repository declares: entities, fields and stream sources with a batch twin."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from transforms.dtypes import DType
from transforms.errors import DefinitionError
from transforms.timeutil import EVENT_TIME_RANGE_MS, datetime_to_ms, duration_ms


@dataclass(frozen=True)
class Field:
    """A named, typed column of a view's schema (``Field(name="user_id", dtype=String)``)."""

    name: str
    dtype: DType
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Field name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.dtype, DType):
            raise ValueError(f"Field {self.name!r}: dtype must be an MLFS type, got {self.dtype!r}")


@dataclass(frozen=True)
class Entity:
    """What features are about (a user, a merchant), identified by its join keys."""

    name: str
    join_keys: tuple[str, ...] | list[str] = ()
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    owner: str = ""

    def __post_init__(self) -> None:
        keys = tuple(self.join_keys) if self.join_keys else (self.name,)
        if len(keys) != 1 or not isinstance(keys[0], str) or not keys[0]:
            # Feast's rule; a view keyed by two entities has a compound key.
            listed = ", ".join(repr(k) for k in keys)
            raise DefinitionError(
                None,
                f"entity {self.name!r} has join keys {listed}: an entity has exactly one join key; "
                "declare one entity per key and list them all in the view's entities=[...] "
                "for a compound key",
            )
        object.__setattr__(self, "join_keys", keys)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "join_keys": list(self.join_keys),
            "description": self.description,
            "tags": dict(self.tags),
            "owner": self.owner,
        }


@dataclass(frozen=True)
class StreamSource:
    """A stream of events with a history twin (Parquet or JSON-lines files) that backfills read."""

    name: str
    history: str
    timestamp_field: str = "timestamp"
    max_out_of_orderness: timedelta = timedelta(seconds=5)
    allowed_lateness: timedelta = timedelta(0)
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    owner: str = ""
    # The event times its views accept (first and last included); None: years 1970 to 9999.
    event_time_range: tuple[datetime, datetime] | None = None

    kind = "stream"

    def __post_init__(self) -> None:
        for name in ("max_out_of_orderness", "allowed_lateness"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value < timedelta(0):
                raise ValueError(f"source {self.name!r}: {name} must be a timedelta >= 0")
            duration_ms(value)
        if self.event_time_range is not None:
            first, last = self.event_time_range
            if not (isinstance(first, datetime) and isinstance(last, datetime) and first < last):
                raise ValueError(
                    f"source {self.name!r}: event_time_range must be (first, last) datetimes, first < last"
                )

    @property
    def event_time_range_ms(self) -> tuple[int, int]:
        if self.event_time_range is None:
            return EVENT_TIME_RANGE_MS
        first, last = self.event_time_range
        return datetime_to_ms(first), datetime_to_ms(last)

    def stream_spec(self) -> dict[str, Any]:
        return {}

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "history": self.history,
            "timestamp_field": self.timestamp_field,
            "max_out_of_orderness_ms": duration_ms(self.max_out_of_orderness),
            "allowed_lateness_ms": duration_ms(self.allowed_lateness),
            "description": self.description,
            "tags": dict(self.tags),
            "owner": self.owner,
            **self.stream_spec(),
            **(
                {}
                if self.event_time_range is None
                else {"event_time_range_ms": list(self.event_time_range_ms)}
            ),
        }


@dataclass(frozen=True)
class FileStreamSource(StreamSource):
    """Events as JSON-lines files appearing in directory ``path``."""

    path: str = ""
    kind = "file"

    def stream_spec(self) -> dict[str, Any]:
        return {"path": self.path}


@dataclass(frozen=True)
class KafkaStreamSource(StreamSource):
    """Events as JSON messages on a Kafka topic."""

    bootstrap_servers: str = ""
    topic: str = ""
    kind = "kafka"

    def stream_spec(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, "topic": self.topic}
