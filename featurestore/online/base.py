"""What every online writer shares: rows in, the latest row per key written, newer-wins."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from featurestore.view import StreamFeatureView
from transforms.plan import EVENT_TIMESTAMP


@dataclass
class WriteStats:
    """Keys written, and keys skipped because the store already held a newer row."""

    written: int = 0
    skipped_older: int = 0


class OnlineWriter(Protocol):
    """Writes feature rows to an online store: a row never replaces a newer feature timestamp;
    a row with the same timestamp (a late correction) does replace it."""

    def write(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> WriteStats: ...

    def close(self) -> None: ...


def latest_per_key(view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row of each key; among rows with equal timestamps the last one given wins."""
    keys = view.plan.key_names
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        held = latest.get(key)
        if held is None or row[EVENT_TIMESTAMP] >= held[EVENT_TIMESTAMP]:
            latest[key] = row
    return list(latest.values())


def entity_key_protos(view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Feast's ``EntityKey`` proto of each row, converted column by column."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values

    from featurestore.feast_types import value_type

    names = list(view.plan.key_names)
    columns = [
        python_values_to_proto_values([row[name] for row in rows], value_type(dtype))
        for name, dtype in view.plan.keys
    ]
    return [EntityKey(join_keys=names, entity_values=values) for values in zip(*columns, strict=True)]


def feature_value_protos(view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's features as Feast ``Value`` protos, converted column by column."""
    from feast.type_map import python_values_to_proto_values

    from featurestore.feast_types import value_type

    out: list[dict[str, Any]] = [{} for _ in rows]
    for name, dtype in view.plan.output_features:
        protos = python_values_to_proto_values([row[name] for row in rows], value_type(dtype))
        for holder, proto in zip(out, protos, strict=True):
            holder[name] = proto
    return out


def retry_while_locked(statement: Callable[[], Any], attempts: int = 20) -> None:
    """Run a SQLite statement, retrying while another writer holds the database locked."""
    import sqlite3
    import time

    for attempt in range(attempts):
        try:
            statement()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.5)
