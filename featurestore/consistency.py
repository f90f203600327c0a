"""``mlfs consistency VIEW``: is what the online store serves what the offline store holds?

A sample of the view's keys (seeded, from the offline store's keys) is read online through the
stock Feast SDK, as a model server would read it, and each key's online row is compared with the
offline row of the same key at the online row's feature time (the newest created one). A mismatch
gets a cause:

* ``missing online value``: the key has offline rows but no online row;
* ``stale online value``: the online row is older than the key's newest offline row (the online
  store must hold the latest);
* ``missing offline partition``: no offline partition holds the online row's day;
* ``missing offline row``: the partition is there, the row at the online row's time is not;
* ``value differs``: both rows are there and a feature differs (named, with both values);
* ``late event``: the stores differ because the stream left out late events of the key.

With ``events`` (the source's events at hand, ``consistency_reference``), each sampled key is also
checked against the reference engine: a mismatch whose online value is the reference's without the
key's late events, where the reference over every event differs, is a ``late event``; two stores
that agree with each other but not with the reference (over every event, or over the events kept
on time) are a ``value differs`` too.

Feast reads feature times in whole seconds from the SQLite store, so the offline row "at" an
online time is the key's newest offline row within that second; timestamp values compare in whole
seconds for the same reason (Feast's ``UNIX_TIMESTAMP`` holds seconds).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from featurestore.consistency_reference import KeyReference, reference_for_keys, why_not_reference
from featurestore.offline.parquet import ParquetOfflineStore, arrow_schema
from featurestore.repo import FeatureRepo
from featurestore.view import StreamFeatureView
from transforms.compare import same_value
from transforms.errors import MLFSError
from transforms.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP

CAUSES = (
    "missing online value",
    "stale online value",
    "missing offline partition",
    "missing offline row",
    "value differs",
    "late event",
)


@dataclass
class Mismatch:
    key: tuple[Any, ...]
    cause: str
    detail: str = ""

    def line(self) -> str:
        key = ", ".join(str(k) for k in self.key)
        return f"  {key}: {self.cause}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class ConsistencyReport:
    view: str
    sampled: int
    mismatches: list[Mismatch] = field(default_factory=list)
    reference: str = ""  # what the reference engine was run over, or why it was not

    @property
    def rate(self) -> float:
        return len(self.mismatches) / self.sampled if self.sampled else 0.0

    def by_cause(self) -> dict[str, int]:
        counts = dict.fromkeys(CAUSES, 0)
        for mismatch in self.mismatches:
            counts[mismatch.cause] += 1
        return {cause: n for cause, n in counts.items() if n}

    def summary(self) -> str:
        causes = ", ".join(f"{n} {cause}" for cause, n in self.by_cause().items())
        return (
            f"{self.view}: {self.sampled} key(s) sampled, {len(self.mismatches)} mismatch(es) "
            f"({100 * self.rate:.1f}%)" + (f": {causes}" if causes else "")
        )


def check_consistency(
    repo: FeatureRepo,
    view_name: str,
    sample: int = 100,
    seed: int = 0,
    store: Any = None,
    events: list[Path] | None = None,
) -> ConsistencyReport:
    """Compare ``sample`` of the view's keys online and offline (see the module docstring);
    ``store`` is the repository's Feast ``FeatureStore`` (made here when not given); with
    ``events`` (arrival order), each key is also checked against the reference engine over them."""
    if sample < 1:
        raise MLFSError("--sample must be at least 1")
    view = repo.view(view_name)
    if not view.online or not view.offline:
        raise MLFSError(f"view {view.name!r} is not written to both stores (online and offline)")
    offline = ParquetOfflineStore(repo.settings.offline_path)
    files = offline.current_files(view.name)
    if not files:
        raise MLFSError(f"view {view.name!r} has no offline rows yet: run `mlfs backfill {view.name}` first")
    keys = list(view.plan.key_names)
    dataset = ds.dataset([str(f) for f in files], format="parquet", schema=arrow_schema(view))
    every_key = dataset.to_table(columns=keys).group_by(keys).aggregate([])
    picked = sorted(random.Random(seed).sample(range(every_key.num_rows), min(sample, every_key.num_rows)))
    sampled = every_key.take(pa.array(picked, pa.int64()))
    rows = _offline_rows(dataset, view, sampled)
    online = _online_rows(store or _feast(repo), view, sampled.to_pylist())
    report = ConsistencyReport(view.name, sampled.num_rows)
    days = set(offline.partitions(view.name))
    entities = sampled.to_pylist()
    wanted = {tuple(entity[k] for k in keys) for entity in entities}
    references: dict[tuple[Any, ...], KeyReference] = {}
    if events:
        why_not = why_not_reference(view)
        if why_not is None:
            source = reference_for_keys(view, events, wanted)
            report.reference = source.describe()
            references = {
                k: r for k, r in source.keys.items() if r.every and _judged(online.get(k), source.until)
            }
        else:
            report.reference = f"reference engine not run: {why_not}"
    for entity in entities:
        key = tuple(entity[k] for k in keys)
        mismatch = _compare(view, key, online.get(key), rows.get(key, []), days)
        if key in references:
            mismatch = _against_reference(view, key, online.get(key), references[key], mismatch)
        if mismatch is not None:
            report.mismatches.append(mismatch)
    return report


def _feast(repo: FeatureRepo) -> Any:
    from featurestore.config import feast_store

    return feast_store(repo.settings)


def _offline_rows(
    dataset: ds.Dataset, view: StreamFeatureView, sampled: pa.Table
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """The sampled keys' offline rows (the newest created of each key and time), by key, in time order."""
    keys = list(view.plan.key_names)
    first = keys[0]
    table = dataset.to_table(filter=pc.field(first).isin(sampled.column(first)))
    order = [(c, "ascending") for c in (*keys, EVENT_TIMESTAMP)] + [(CREATED_TIMESTAMP, "descending")]
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    wanted = {tuple(row[k] for k in keys) for row in sampled.to_pylist()}
    last: tuple[Any, ...] | None = None
    for row in table.sort_by(order).to_pylist():
        key = tuple(row[k] for k in keys)
        if key not in wanted or (*key, row[EVENT_TIMESTAMP]) == last:
            continue
        last = (*key, row[EVENT_TIMESTAMP])
        by_key.setdefault(key, []).append(row)
    return by_key


def _online_rows(
    store: Any, view: StreamFeatureView, entities: list[dict[str, Any]]
) -> dict[tuple[Any, ...], tuple[datetime, dict[str, Any]]]:
    """Each sampled key's online row through Feast: its feature time and values (keys without one
    are left out)."""
    features = [name for name, _ in view.plan.output_features]
    response = store.get_online_features(
        features=[f"{view.name}:{f}" for f in features], entity_rows=entities
    )
    values = response.to_dict()
    stamps = [vector.event_timestamps for vector in response.proto.results]
    names = list(response.proto.metadata.feature_names.val)
    out: dict[tuple[Any, ...], tuple[datetime, dict[str, Any]]] = {}
    for i, entity in enumerate(entities):
        seconds = max((stamps[names.index(f)][i].seconds for f in features if f in names), default=0)
        if not seconds:  # Feast's "no row" (every feature NOT_FOUND, time 0)
            continue
        key = tuple(entity[k] for k in view.plan.key_names)
        out[key] = (datetime.fromtimestamp(seconds, UTC), {f: values[f][i] for f in features})
    return out


def _compare(
    view: StreamFeatureView,
    key: tuple[Any, ...],
    online: tuple[datetime, dict[str, Any]] | None,
    rows: list[dict[str, Any]],
    days: set[date],
) -> Mismatch | None:
    if online is None:
        return Mismatch(key, "missing online value", f"offline holds {len(rows)} row(s)")
    second, values = online
    newest = rows[-1][EVENT_TIMESTAMP] if rows else None
    if newest is not None and newest >= second + timedelta(seconds=1):
        return Mismatch(
            key, "stale online value", f"online {second:%Y-%m-%d %H:%M:%S}, offline newest {newest}"
        )
    if second.date() not in days:
        return Mismatch(key, "missing offline partition", f"no partition for {second.date()}")
    within = [r for r in rows if second <= r[EVENT_TIMESTAMP] < second + timedelta(seconds=1)]
    if not within:
        return Mismatch(key, "missing offline row", f"none at {second:%Y-%m-%d %H:%M:%S}")
    row = within[-1]
    differs = _differences(view, values, row, "offline")
    if differs:
        return Mismatch(key, "value differs", "; ".join(differs))
    return None


def _against_reference(
    view: StreamFeatureView,
    key: tuple[Any, ...],
    online: tuple[datetime, dict[str, Any]] | None,
    reference: KeyReference,
    mismatch: Mismatch | None,
) -> Mismatch | None:
    """``mismatch`` (the stores compared), explained or found by the reference engine's rows."""
    if online is None:
        return mismatch
    second, values = online
    end = second + timedelta(seconds=1)
    every, kept = reference.every_before(end), reference.kept_before(end)
    late = [t for t in reference.late if t < end]
    if mismatch is not None:
        if late and _agrees(view, values, kept) and not _agrees(view, values, every):
            return Mismatch(
                key,
                "late event",
                f"{len(late)} event(s) of the key late on the stream (first at {late[0]:%Y-%m-%d %H:%M:%S}): "
                "the online value leaves them out, the reference over every event counts them",
            )
        return mismatch
    if _agrees(view, values, every) or _agrees(view, values, kept):
        return None
    return Mismatch(
        key,
        "value differs",
        "online and offline agree, the reference engine over the source's events does not: "
        + "; ".join(_differences(view, values, every)),
    )


def _judged(online: tuple[datetime, dict[str, Any]] | None, until: datetime | None) -> bool:
    """Whether the events at hand made the online row (it is no later than the newest of them)."""
    return online is not None and until is not None and online[0] <= until


def _agrees(view: StreamFeatureView, values: dict[str, Any], row: dict[str, Any] | None) -> bool:
    return row is not None and not _differences(view, values, row)


def _differences(
    view: StreamFeatureView, values: dict[str, Any], row: dict[str, Any] | None, other: str = "reference"
) -> list[str]:
    """Each feature whose online value differs from ``row``'s (``other``'s), with both values."""
    if row is None:
        return [f"the {other} has no row by then"]
    return [
        f"{name}: online {values[name]!r}, {other} {row[name]!r}"
        for name, _ in view.plan.output_features
        if not _same(values[name], row[name])
    ]


def _same(online: Any, offline: Any) -> bool:
    """An online value (as Feast returns it) and the offline one under the float contract; times
    in whole seconds."""
    if isinstance(online, float) and math.isnan(online):
        online = None
    if isinstance(offline, float) and math.isnan(offline):
        offline = None
    if isinstance(offline, datetime):
        if not isinstance(online, datetime):
            return False
        utc = online if online.tzinfo else online.replace(tzinfo=UTC)
        return int(utc.timestamp()) == math.floor(offline.timestamp())
    if isinstance(online, list) and isinstance(offline, list):
        return len(online) == len(offline) and all(_same(a, b) for a, b in zip(online, offline, strict=True))
    if isinstance(online, float) and isinstance(offline, int):
        return online == offline
    return same_value(online, offline)
