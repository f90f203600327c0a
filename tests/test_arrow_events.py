"""The vectorised event stage takes the clean rows and gives exactly the row path's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conformance import WINDOWS, conformance_view, generate_events, write_events
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.arrow_events import python_values, split_clean
from transforms.events import DeadLetter, EventPreparer
from transforms.stage1 import DEAD, FILTERED, FIRST, KIND, ROW, TS, prepare_batches
from transforms.timeutil import datetime_to_ms


def row_path(view: Any, raw_rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    preparer = EventPreparer(view.plan)
    out = []
    for raw in raw_rows:
        prepared = preparer.prepare(raw)
        if prepared is None or isinstance(prepared, DeadLetter):
            continue
        for key, values in prepared.rows:
            engine_values = tuple(datetime_to_ms(v) if hasattr(v, "tzinfo") else v for v in values)
            out.append((*key, prepared.time_ms, *engine_values))
    return sorted(out, key=repr)


@pytest.mark.parametrize("transform", ["none", "declarative"])
@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_vectorised_rows_equal_row_path(tmp_path: Path, window: str, transform: str) -> None:
    view = conformance_view(window, transform)
    batch = pq.read_table(
        write_events(generate_events(5), tmp_path / "e.parquet", typed_time=True)
    ).to_batches()[0]

    split = split_clean(view.plan, batch)
    assert split is not None, "a typed batch without a Python transform is vectorised"
    assert len(split.clean[TS]) > 0.85 * batch.num_rows and split.rest.num_rows > 0  # bad rows: row path
    expected_filtered = sum(1 for e in batch.to_pylist() if e["kind"] == "drop" and e["timestamp"])
    assert split.filtered == (expected_filtered if transform == "declarative" else 0)

    produced = [b.to_pylist() for b in prepare_batches(view.plan, iter([batch]))]
    rows = [r for batch_rows in produced for r in batch_rows if r[KIND] == ROW]
    assert sum(1 for b in produced for r in b if r[KIND] == FILTERED) == split.filtered
    assert all(r[FIRST] for r in rows)
    value_names = [f"_v{i}" for i in range(len(view.plan.features))]
    got = sorted(
        ((*(r[k] for k in view.plan.key_names), r[TS], *(r[v] for v in value_names)) for r in rows),
        key=repr,
    )
    assert got == row_path(view, batch.to_pylist())
    # Dead letters too, those the columns decide (no time, a null key) among them.
    letters = sorted(
        (r["_reason"], r["_detail"], r["_raw"], r["_event_ms"])
        for b in produced
        for r in b
        if r[KIND] == DEAD
    )
    assert letters == row_path_letters(view, batch.to_pylist())
    assert {"missing_key", "missing_time"} <= {reason for reason, *_ in letters}


def row_path_letters(view: Any, raw_rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    preparer = EventPreparer(view.plan)
    letters = [p for p in (preparer.prepare(raw) for raw in raw_rows) if isinstance(p, DeadLetter)]
    return sorted(
        (d.reason, d.detail, d.raw, None if d.event_time is None else datetime_to_ms(d.event_time))
        for d in letters
    )


def test_untyped_time_or_a_transform_take_the_row_path(tmp_path: Path) -> None:
    batch = pq.read_table(write_events(generate_events(5), tmp_path / "e.parquet")).to_batches()[0]
    assert split_clean(conformance_view("lifetime", transform=False).plan, batch) is None
    typed = pq.read_table(
        write_events(generate_events(5), tmp_path / "t.parquet", typed_time=True)
    ).to_batches()[0]
    assert split_clean(conformance_view("lifetime", transform=True).plan, typed) is None


ARROW_VALUES = [
    (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    (pa.float64(), st.floats()),
    (pa.float32(), st.floats(width=32)),
    (pa.bool_(), st.booleans()),
    (pa.string(), st.text()),
    (pa.large_string(), st.text()),
    (pa.binary(), st.binary()),
    (pa.large_binary(), st.binary()),
]


@settings(deadline=None)  # a loaded CI machine is slow now and then; this is no speed test
@given(st.data())
def test_python_values_are_arrows_own(data: st.DataObject) -> None:
    """The fast conversion of an Arrow column to Python values gives exactly ``to_pylist()``: the
    same values of the same types, NaN and nulls included."""
    kind, values = data.draw(st.sampled_from(ARROW_VALUES))
    array = pa.array(data.draw(st.lists(st.none() | values, max_size=20)), kind)
    got, want = python_values(array), array.to_pylist()
    assert [(type(v), repr(v)) for v in got] == [(type(v), repr(v)) for v in want]
